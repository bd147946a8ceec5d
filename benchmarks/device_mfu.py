"""Train-step tokens/s and MFU of seallm-jax alone, bf16 compute, for real model shapes on one device.

    python -m benchmarks.device_mfu                         # Qwen2-0.5B and Qwen2-1.5B shapes, 4 x 2048
    python -m benchmarks.device_mfu --shapes 0.5b --batch 8 --seq 4096
    python -m benchmarks.device_mfu --cpu-smoke             # tiny shapes: proves the script on CPU

MFU = model FLOPs per token (`Qwen2Config.flops_per_token`: 6 x matmul params + attention scores,
no remat recompute counted) x tokens/s / the device's peak bf16 dense FLOP/s (table below by
`device_kind`; `--peak-flops` overrides). A bf16 matmul's FLOP/s measured in the same run is reported
beside it (what this device really reaches). Random weights and tokens; the first step (compile) is
not timed; the median of `--steps` timed steps is. The machine probe (`benchmarks/machine.py`, float32) is
printed first and stored under "machine".
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.common import matmul_flops  # noqa: E402
from benchmarks.machine import announce, share_of_matmul, write_json  # noqa: E402
from seallm_jax.model.config import PRESETS  # noqa: E402

# Published bf16 dense peak per JAX device (substring of device_kind, lower case -> FLOP/s).
PEAK_BF16 = (
    ("h200", 989e12), ("h100", 989e12), ("gh200", 989e12), ("a100", 312e12), ("l40s", 362e12),
    ("l4", 121e12), ("a10", 125e12), ("v100", 125e12),
    ("tpu v6", 918e12), ("tpu v5p", 459e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12), ("tpu v4", 275e12),
)

# name -> Qwen2Config fields (the released models' shapes, from the presets).
SHAPES = {
    "0.5b": PRESETS["qwen2-0.5b"],
    "1.5b": PRESETS["qwen2-1.5b"],
    "smoke": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


def peak_flops(device_kind: str) -> float:
    kind = device_kind.lower()
    for key, flops in PEAK_BF16:
        if key in kind:
            return flops
    return 0.0




def bench_shape(name: str, batch: int, seq: int, steps: int, remat: str, attention_impl: str) -> dict:
    import jax

    from seallm_jax import sharding as shd
    from seallm_jax.train.config import base_config
    from seallm_jax.train.optim import build_optimizer, build_schedule
    from seallm_jax.train.step import Trainer

    config = base_config()
    config.model.update(**SHAPES[name], dtype="bfloat16", param_dtype="float32", remat=remat,
                        attention_impl=attention_impl, max_position_embeddings=max(seq, 4096))
    config.train.update(global_batch_size=batch, seq_len=seq, micro_batches=1, steps=10**6)
    config.optimizer.update(warmup_steps=0, schedule="constant")
    mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    trainer = Trainer(config, mesh, build_optimizer(config), build_schedule(config))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.model.vocab_size, (batch, seq + 1)).astype(np.int32)
    batch_arrays = trainer.put_batch({
        "input_ids": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((batch, seq), np.float32),
        "segment_ids": np.ones((batch, seq), np.int32),
        "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()})
    state = trainer.init_state(0)
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch_arrays)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch_arrays)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens_per_s = batch * seq / step_s
    flops_per_token = trainer.model_config.flops_per_token(seq)
    device = jax.devices()[0]
    return {"shape": name, "parameters": trainer.model_config.num_parameters(), "batch": batch, "seq_len": seq,
            "dtype": "bfloat16 compute, float32 master weights", "remat": remat, "attention_impl": attention_impl,
            "first_step_s": round(compile_s, 2), "step_s": [round(t, 4) for t in times],
            "tokens_per_s": tokens_per_s, "flops_per_token": flops_per_token,
            "model_flops_per_s": flops_per_token * tokens_per_s, "loss": float(metrics["loss"]),
            "device_kind": device.device_kind}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="0.5b,1.5b", help=f"comma list of {sorted(SHAPES)}")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--remat", default="full", help="model.remat (the recipes use full)")
    p.add_argument("--attention-impl", default="flash")
    p.add_argument("--peak-flops", type=float, default=0.0, help="override the per-device peak (FLOP/s)")
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shape, 2 x 64 tokens, 2 steps (CPU check)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.shapes, args.batch, args.seq, args.steps, args.matmul_size = "smoke", 2, 64, 2, 512
    import jax

    machine = announce()
    device = jax.devices()[0]
    peak = args.peak_flops or peak_flops(device.device_kind)
    measured = matmul_flops(args.matmul_size, "bfloat16")
    result = {"machine": machine, "device_kind": device.device_kind, "platform": device.platform, "jax": jax.__version__,
              "peak_bf16_flops": peak or None, "peak_source": "--peak-flops" if args.peak_flops else "table by device_kind",
              "measured_bf16_matmul_flops": measured, "matmul_size": args.matmul_size, "runs": []}
    print(f"{device.device_kind} ({device.platform}): peak {peak / 1e12:.0f} TFLOP/s bf16 (table), "
          f"measured bf16 matmul {measured / 1e12:.1f} TFLOP/s ({args.matmul_size}^3)")
    print(f"{'shape':6s} {'params':>8s} {'batch x seq':>12s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s} "
          f"{'of matmul':>9s}")
    for name in args.shapes.split(","):
        run = bench_shape(name, args.batch, args.seq, args.steps, args.remat, args.attention_impl)
        run["mfu"] = run["model_flops_per_s"] / peak if peak else None
        run["fraction_of_measured_matmul"] = run["model_flops_per_s"] / measured
        run["share_of_matmul"] = share_of_matmul(run["model_flops_per_s"], machine)  # the float32 probe's rate
        result["runs"].append(run)
        mfu = f"{100 * run['mfu']:5.1f}%" if run["mfu"] is not None else "   n/a"
        print(f"{name:6s} {run['parameters'] / 1e6:7.0f}M {args.batch:5d} x {args.seq:<5d} {run['tokens_per_s']:10.0f} "
              f"{run['model_flops_per_s'] / 1e12:8.2f} {mfu} {100 * run['fraction_of_measured_matmul']:8.1f}%",
              flush=True)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
