"""The train step's matmuls alone, at the step's shapes, in JAX and in torch: how fast this machine runs them in
each framework, and the step ratio they leave room for.

    python -m benchmarks.step_dots                      # benchmarks.train_step's default small shape
    python -m benchmarks.step_dots --hidden 896 --intermediate 4864 --heads 14 --kv-heads 2 --seq 512 --batch 4

Every projection of a decoder layer (q, k, v, o, gate, up, down) and the LM head runs three matmuls per step
over the batch's `T` tokens: the forward `[T, in] x [in, out]`, the input gradient `[T, out] x [in, out]^T`
and the weight gradient `[T, in]^T x [T, out]` (contracting the tokens); the head does so per chunk of the
chunked loss's tokens. Each matmul is timed alone in both frameworks, rounds alternating, and summed over the
layers and chunks. Attention's score and value products are left out
(their share of the step's FLOPs is printed). Then both whole train steps (`benchmarks.train_step`) run.

The last line answers "how fast could seallm-jax's step be here?": the transformers step's time over the time
of seallm-jax's dots alone is the ratio a step with no cost outside its matmuls would reach. Where JAX's dots
are no faster than torch's and torch's step is mostly dots, no step ratio much above 1x is possible on that
machine, whatever the rest of the program does. The machine probe (`benchmarks/machine.py`) is printed first.
"""
from __future__ import annotations

import os
import statistics
import sys

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `seallm_jax` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import random_batch, time_it  # noqa: E402
from benchmarks.machine import announce, share_of_matmul, share_text, write_json  # noqa: E402
from benchmarks.train_step import JaxStep, TorchStep, parse_args  # noqa: E402

KINDS = ("forward", "input gradient", "weight gradient")


def projections(args, tokens: int, chunk_tokens: int) -> list[tuple[str, int, int, int, int]]:
    """(name, in, out, tokens per matmul, matmuls per step and kind) of every weight of the step's model. The LM
    head runs chunk by chunk, as the step's chunked loss does (`train.loss_chunk_tokens`; 0: all tokens at once)."""
    head_dim = args.hidden // args.heads
    q, kv = args.heads * head_dim, args.kv_heads * head_dim
    per_layer = [("q", args.hidden, q), ("k", args.hidden, kv), ("v", args.hidden, kv), ("o", q, args.hidden),
                 ("gate", args.hidden, args.intermediate), ("up", args.hidden, args.intermediate),
                 ("down", args.intermediate, args.hidden)]
    chunk = min(tokens, chunk_tokens) if chunk_tokens > 0 else tokens
    return [(name, fan_in, fan_out, tokens, args.layers) for name, fan_in, fan_out in per_layer] + \
        [("lm_head", args.hidden, args.vocab, chunk, -(-tokens // chunk))]


def jax_dots(tokens: int, fan_in: int, fan_out: int) -> dict:
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (tokens, fan_in), jnp.float32)
    w = jax.random.normal(keys[1], (fan_in, fan_out), jnp.float32)
    dy = jax.random.normal(keys[2], (tokens, fan_out), jnp.float32)
    calls = {"forward": (jax.jit(lambda x, w: x @ w), (x, w)),
             "input gradient": (jax.jit(lambda dy, w: jnp.einsum("to,io->ti", dy, w)), (dy, w)),
             "weight gradient": (jax.jit(lambda x, dy: jnp.einsum("ti,to->io", x, dy)), (x, dy))}
    return {kind: (lambda f=f, a=a: f(*a).block_until_ready()) for kind, (f, a) in calls.items()}


def torch_dots(tokens: int, fan_in: int, fan_out: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(0)
    x, w, dy = (torch.randn(shape, generator=generator)
                for shape in ((tokens, fan_in), (fan_in, fan_out), (tokens, fan_out)))
    return {"forward": lambda: x @ w, "input gradient": lambda: dy @ w.T, "weight gradient": lambda: x.T @ dy}


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = announce()
    tokens = args.batch * args.seq
    batch = random_batch(args.batch, args.seq, args.vocab)
    jax_step = JaxStep(args, batch)
    weights = projections(args, tokens, jax_step.trainer.settings.loss_chunk_tokens)
    dots = {"jax": {}, "torch": {}}
    for name, fan_in, fan_out, rows, count in weights:
        calls = {"jax": jax_dots(rows, fan_in, fan_out), "torch": torch_dots(rows, fan_in, fan_out)}
        for kind in KINDS:
            seconds = {side: [] for side in calls}
            for _ in range(args.rounds):  # alternate so both see the same machine load
                for side in calls:
                    seconds[side].append(time_it(calls[side][kind], warmup=1, iterations=max(3, args.steps)))
            for side in calls:
                dots[side][(name, kind)] = count * statistics.median(seconds[side])

    torch_step = TorchStep(args, batch)
    step_times = {"jax": [], "torch": []}
    for _ in range(args.rounds):
        step_times["jax"].append(jax_step.run(args.steps) / args.steps)
        step_times["torch"].append(torch_step.run(args.steps) / args.steps)
    steps = {side: statistics.median(times) for side, times in step_times.items()}

    def total(side, kind=None):
        return sum(s for (_, k), s in dots[side].items() if kind in (None, k))

    dot_flops = sum(2 * rows * fan_in * fan_out * count * 3 for _, fan_in, fan_out, rows, count in weights)
    step_flops = jax_step.model_config.flops_per_token(args.seq) * tokens
    result = {
        "machine": machine, "config": vars(args) | {"tokens": tokens},
        "dot_seconds": {side: {kind: total(side, kind) for kind in KINDS} | {"all": total(side)} for side in dots},
        "dot_seconds_by_weight": {side: {f"{name} {kind}": s for (name, kind), s in dots[side].items()}
                                  for side in dots},
        "step_seconds": steps, "dot_share_of_step_flops": dot_flops / step_flops,
        "ratio_if_only_dots": steps["torch"] / total("jax"),
        "measured_step_ratio": steps["torch"] / steps["jax"],
        "share_of_matmul": {side: share_of_matmul(dot_flops / total(side), machine) for side in dots},
    }
    print(f"{len(weights)} weights x 3 matmuls over {tokens} tokens, float32: {100 * dot_flops / step_flops:.0f}% "
          f"of the step's FLOPs (the rest is attention's score and value products)")
    print(f"{'per step, ms':18s}{'seallm-jax':>12s}{'torch':>10s}{'jax/torch':>11s}")
    for kind in (*KINDS, "all"):
        jax_s, torch_s = (result["dot_seconds"][side][kind] for side in ("jax", "torch"))
        print(f"{kind + ' dots':18s}{jax_s * 1e3:12.1f}{torch_s * 1e3:10.1f}{jax_s / torch_s:10.2f}x")
    print(f"{'whole train step':18s}{steps['jax'] * 1e3:12.1f}{steps['torch'] * 1e3:10.1f}"
          f"{steps['jax'] / steps['torch']:10.2f}x   (dots: {100 * total('jax') / steps['jax']:.0f}% of "
          f"seallm-jax's step, {100 * total('torch') / steps['torch']:.0f}% of transformers')")
    print(f"the dots alone: seallm-jax {share_text(dot_flops / total('jax'), machine)}; torch "
          f"{100 * result['share_of_matmul']['torch']:.0f}% of the same rate")
    print(f"measured step ratio seallm-jax / transformers: {result['measured_step_ratio']:.2f}x; a seallm-jax step "
          f"that spent nothing outside its dots: {result['ratio_if_only_dots']:.2f}x")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
