"""Tokens/s of one training step, side by side in one run: full fine-tuning, LSN with dense gradients
(`config.lsn.lean=false`: the step differentiates every parameter and masks the update) and lean LSN
(`config.lsn.lean=true`: the step differentiates only the selected neurons' slices, so it forms no
weight gradient of a frozen parameter — about a third of a step's matmul FLOPs).

    python -m benchmarks.lsn_train_step                      # SmolLM2-135M's shape, 4 x 256 tokens
    python -m benchmarks.lsn_train_step --layers 4 --steps 2 # a quick look

Random weights of the chosen shape (nothing is downloaded); the neurons are a seeded random
`--neurons-per-layer` per layer (LAPE selects ~0.1% of a model's neurons: 2 of SmolLM2's 1,536 per layer).
The arms alternate round by round so that a shared machine's load affects them alike; the median
round is reported, with the ratios to full fine-tuning. The machine probe (`benchmarks/machine.py`) is
printed first and stored under "machine"; each arm's rate is also given as the full step's FLOPs (forward +
backward of every matmul, `Qwen2Config.flops_per_token`) per second, a share of the probe's matmul rate.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import random_batch  # noqa: E402
from benchmarks.machine import announce, share_of_matmul, write_json  # noqa: E402

ARMS = ("full", "lsn-dense", "lsn-lean")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # SmolLM2-135M-Instruct's shape (the real pretrained model the project uses), untied head
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--neurons-per-layer", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)


def neuron_file(args, directory: str) -> str:
    from seallm_jax.lsn.neurons import NeuronSet

    rng = np.random.default_rng(0)
    masks = np.zeros((args.layers, args.intermediate), bool)
    for layer in range(args.layers):
        masks[layer, rng.choice(args.intermediate, size=args.neurons_per_layer, replace=False)] = True
    path = os.path.join(directory, "neurons.json")
    NeuronSet.from_masks("random", {"xx": masks}, hidden_size=args.hidden, num_parameters=1).save(path)
    return path


class Arm:
    def __init__(self, name: str, args, batch, neurons: str):
        import jax

        from seallm_jax import sharding as shd
        from seallm_jax.lsn import optim as lsn_optim
        from seallm_jax.train.config import base_config
        from seallm_jax.train.optim import build_optimizer, build_schedule
        from seallm_jax.train.step import Trainer

        config = base_config()
        config.model.update(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                            num_hidden_layers=args.layers, num_attention_heads=args.heads,
                            num_key_value_heads=args.kv_heads, tie_word_embeddings=False)
        config.train.update(global_batch_size=args.batch, seq_len=args.seq, steps=10**6)
        config.optimizer.update(warmup_steps=0, schedule="constant", max_grad_norm=1.0)
        wrapper = trainable = None
        if name != "full":
            config.lsn.update(neurons=neurons, languages=["xx"], lean=name == "lsn-lean")
            wrapper = lsn_optim.WRAPPER
            trainable = wrapper.trainable(config)
        mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        self.name = name
        self.trainer = Trainer(config, mesh, build_optimizer(config, wrapper), build_schedule(config),
                               trainable=trainable)
        self.state = self.trainer.init_state(0)
        self.batch = self.trainer.put_batch(batch)
        started = time.perf_counter()
        self.run(1)  # compile
        self.compile_seconds = time.perf_counter() - started
        self.state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(self.state.opt_state))

    def run(self, steps: int) -> float:
        import jax

        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.trainer.train_step(self.state, self.batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    machine = announce()
    batch = random_batch(args.batch, args.seq, args.vocab)
    with tempfile.TemporaryDirectory() as directory:
        neurons = neuron_file(args, directory)
        arms = [Arm(name, args, batch, neurons) for name in ARMS]
    times: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for _ in range(args.rounds):
        for arm in arms:
            times[arm.name].append(arm.run(args.steps))
    tokens_per_step = args.batch * args.seq
    tps = {name: tokens_per_step * args.steps / statistics.median(t) for name, t in times.items()}
    # The full step's FLOPs for every arm: what a lean step saves shows as a higher equivalent rate.
    flops_per_token = arms[0].trainer.model_config.flops_per_token(args.seq)
    share = {name: share_of_matmul(flops_per_token * rate, machine) for name, rate in tps.items()}
    result = {
        "machine": machine, "flops_per_token_full_step": flops_per_token, "share_of_matmul": share,
        "shape": {k: getattr(args, k) for k in ("vocab", "hidden", "intermediate", "layers", "heads", "kv_heads",
                                                "batch", "seq", "neurons_per_layer")},
        "tokens_per_second": tps,
        "ratio_to_full": {name: tps[name] / tps["full"] for name in tps},
        "optimizer_state_bytes": {arm.name: arm.state_bytes for arm in arms},
        "compile_seconds": {arm.name: arm.compile_seconds for arm in arms},
        "round_seconds": times,
        "jax": jax.__version__, "device": str(jax.devices()[0]), "load_average": os.getloadavg(),
    }
    print(f"{'arm':10s} {'tokens/s':>9s} {'x full':>7s} {'opt state':>12s} {'compile s':>9s} {'of matmul':>9s}")
    for arm in arms:
        print(f"{arm.name:10s} {tps[arm.name]:9.1f} {result['ratio_to_full'][arm.name]:6.2f}x "
              f"{arm.state_bytes / 2**20:10.2f} MB {arm.compile_seconds:9.1f} {100 * share[arm.name]:8.0f}%")
    print(f"load average {result['load_average'][0]:.1f}; {args.batch} x {args.seq} tokens, "
          f"{args.neurons_per_layer} neurons per layer x {args.layers} layers")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
