"""Tokens/s of one full training step (forward, backward, AdamW) in seallm-jax and in transformers +
torch.optim.AdamW for the same Qwen2 config, side by side, plus seallm-jax's achieved FLOP/s as a
fraction of a matmul peak measured in the same run.

    python benchmarks/train_step.py                      # small CPU config, float32
    python benchmarks/train_step.py --hidden 896 --layers 4 --seq 512 --batch 4
    # long context, Qwen2-0.5B width and vocabulary:
    python benchmarks/train_step.py --vocab 151936 --hidden 896 --intermediate 4864 --heads 14 --kv-heads 2 \
        --layers 4 --batch 1 --seq 4096 --steps 2

Both frameworks see the same batch, the same model shape and float32; rounds alternate between
the two so that a shared machine's load affects both alike, and the median round is reported. The machine
probe (`benchmarks/machine.py`) is printed first and stored under "machine" in `--json`'s file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import matmul_flops, random_batch  # noqa: E402
from benchmarks.machine import announce, share_of_matmul, share_text, write_json  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--matmul-size", type=int, default=1024)
    p.add_argument("--attention-impl", default="auto",
                   help="model.attention_impl of the seallm-jax step (default: the library's, auto)")
    p.add_argument("--loss-chunk-tokens", type=int, default=None,
                   help="train.loss_chunk_tokens (0: full logits; default: the step's default)")
    p.add_argument("--scan-unroll", type=int, default=1)
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)




class JaxStep:
    def __init__(self, args, batch):
        import jax

        from seallm_jax import sharding as shd
        from seallm_jax.train.config import base_config
        from seallm_jax.train.optim import build_optimizer, build_schedule
        from seallm_jax.train.step import Trainer

        config = base_config()
        config.model.update(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                            num_hidden_layers=args.layers, num_attention_heads=args.heads,
                            num_key_value_heads=args.kv_heads, tie_word_embeddings=False,
                            attention_impl=args.attention_impl, scan_unroll=args.scan_unroll)
        config.train.update(global_batch_size=args.batch, seq_len=args.seq, steps=10**6)
        if args.loss_chunk_tokens is not None:
            config.train.loss_chunk_tokens = args.loss_chunk_tokens
        config.optimizer.update(warmup_steps=0, schedule="constant", weight_decay=0.0, max_grad_norm=1.0)
        mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        self.trainer = Trainer(config, mesh, build_optimizer(config), build_schedule(config))
        self.model_config = self.trainer.model_config
        self.state = self.trainer.init_state(0)
        self.batch = self.trainer.put_batch(batch)
        self.run(1)  # compile

    def run(self, steps: int) -> float:
        import jax
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.trainer.train_step(self.state, self.batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start


class TorchStep:
    def __init__(self, args, batch):
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        self.torch = torch
        config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                             num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=args.kv_heads, tie_word_embeddings=False,
                             max_position_embeddings=max(args.seq, 128), attn_implementation="sdpa")
        self.model = Qwen2ForCausalLM(config).float().train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0)
        # Plain causal batches (one document per row) for both sides: the seallm-jax step gets
        # segment ids all 1 and positions 0..T-1, which is the same computation.
        self.input_ids = torch.as_tensor(batch["input_ids"], dtype=torch.long)
        self.targets = torch.as_tensor(batch["targets"], dtype=torch.long)
        self.run(1)

    def run(self, steps: int) -> float:
        torch = self.torch
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(input_ids=self.input_ids).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), self.targets.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
        return time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import torch

    from seallm_jax.model.attention import resolve_implementation

    machine = announce()
    batch = random_batch(args.batch, args.seq, args.vocab)

    jax_step, torch_step = JaxStep(args, batch), TorchStep(args, batch)
    jax_times, torch_times = [], []
    for _ in range(args.rounds):  # alternate so both see the same machine load
        jax_times.append(jax_step.run(args.steps))
        torch_times.append(torch_step.run(args.steps))
    peak = matmul_flops(args.matmul_size, repeats=10)

    tokens_per_step = args.batch * args.seq
    jax_tps = tokens_per_step * args.steps / statistics.median(jax_times)
    torch_tps = tokens_per_step * args.steps / statistics.median(torch_times)
    flops_per_token = jax_step.model_config.flops_per_token(args.seq)
    achieved = flops_per_token * jax_tps
    result = {
        "machine": machine, "config": vars(args) | {"parameters": jax_step.model_config.num_parameters()},
        "device": str(jax.devices()[0].device_kind), "torch_threads": torch.get_num_threads(),
        "seallm_jax_tokens_per_s": jax_tps, "transformers_tokens_per_s": torch_tps,
        "ratio": jax_tps / torch_tps,
        "flops_per_token": flops_per_token, "seallm_jax_flops_per_s": achieved,
        "matmul_peak_flops_per_s": peak, "fraction_of_matmul_peak": achieved / peak,
        "share_of_matmul": share_of_matmul(achieved, machine),
        "transformers_share_of_matmul": share_of_matmul(flops_per_token * torch_tps, machine),
    }
    print(f"model: {result['config']['parameters'] / 1e6:.2f}M params, batch {args.batch} x {args.seq}, float32, "
          f"{result['device']}; seallm-jax attention {args.attention_impl} "
          f"({resolve_implementation(args.attention_impl, args.seq, jax_step.model_config.attention_block_k)}), "
          f"loss_chunk_tokens {jax_step.trainer.settings.loss_chunk_tokens}")
    print(f"{'':24s}{'tokens/s':>12s}")
    print(f"{'seallm-jax (jit)':24s}{jax_tps:12.0f}")
    print(f"{'transformers + AdamW':24s}{torch_tps:12.0f}")
    print(f"ratio seallm-jax / transformers: {result['ratio']:.2f}x")
    print(f"seallm-jax: {share_text(achieved, machine)} ({100 * result['fraction_of_matmul_peak']:.1f}% of a "
          f"{args.matmul_size}^3 matmul timed after the rounds, {peak / 1e9:.1f} GFLOP/s); "
          f"transformers: {share_text(flops_per_token * torch_tps, machine)}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
