"""Forward-pass throughput: seallm-jax vs transformers, same Qwen2 config, one process, side by side.

    python benchmarks/forward.py --batch 1 --length 128            # Qwen2-0.5B shape, float32, CPU
    python benchmarks/forward.py --num-hidden-layers 4 --batch 4   # a quicker look
    python benchmarks/forward.py --num-hidden-layers 4 --batch 1 --length 4096 --compare xla   # long context

Prints the machine probe (`benchmarks/machine.py`) first, then tokens/s of each, the ratio (seallm-jax /
transformers) and each rate's FLOP/s as a share of the probe's matmul rate; `--json PATH` stores all of it. `--attention-impl` picks the
kernel (default `auto`: `flash` beyond 128 tokens); `--compare xla` also times the old dense path in the same run.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from benchmarks.common import add_model_args, model_config, time_it, torch_config
from benchmarks.machine import announce, share_of_matmul, share_text, write_json
from seallm_jax import Qwen2ForCausalLM


def time_seallm(config, ids: np.ndarray, args: argparse.Namespace) -> float:
    """Median seconds of one jitted forward (the model is freed before the next one is built)."""
    graphdef, params = nnx.split(Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)), nnx.Param)
    forward = jax.jit(lambda params, ids: nnx.merge(graphdef, params)(ids))
    jax_ids = jnp.asarray(ids)
    return time_it(lambda: forward(params, jax_ids).block_until_ready(), warmup=args.warmup, iterations=args.iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--attention-impl", default="auto",
                        help="seallm-jax attention kernel (model.attention_impl; default: the library's, auto)")
    parser.add_argument("--compare", default="", help="comma list of other attention kernels to time too, e.g. xla")
    parser.add_argument("--scan-unroll", type=int, default=1)
    parser.add_argument("--json", help="also write the results (with the machine probe) to this file")
    args = parser.parse_args()
    machine = announce()
    config = model_config(args).replace(scan_unroll=args.scan_unroll)
    tokens = args.batch * args.length
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (args.batch, args.length)).astype(np.int32)
    print(f"config: {config.num_parameters() / 1e6:.0f}M params, batch {args.batch} x length {args.length}, float32, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} ({torch.get_num_threads()} threads)")

    implementations = [args.attention_impl] + [name for name in args.compare.split(",") if name]
    jax_seconds = {name: time_seallm(config.replace(attention_impl=name), ids, args) for name in implementations}
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(torch_config(config), attn_implementation="sdpa").eval()
    torch_ids = torch.as_tensor(ids, dtype=torch.long)

    def torch_forward():
        with torch.inference_mode():
            return reference(torch_ids).logits

    torch_seconds = time_it(torch_forward, warmup=args.warmup, iterations=args.iterations)
    # Forward FLOPs: every matmul (LM head included) and the causal attention scores (a third of a training step).
    flops = tokens * config.flops_per_token(args.length) / 3
    for name, seconds in jax_seconds.items():
        print(f"seallm-jax {name:8s}: {tokens / seconds:10.1f} tokens/s ({seconds * 1e3:.0f} ms/forward), "
              f"ratio to transformers {torch_seconds / seconds:.2f}x; {share_text(flops / seconds, machine)}")
    print(f"transformers       : {tokens / torch_seconds:10.1f} tokens/s ({torch_seconds * 1e3:.0f} ms/forward); "
          f"{share_text(flops / torch_seconds, machine)}")
    write_json(args.json, {
        "machine": machine, "config": vars(args), "tokens": tokens, "flops_per_forward": flops,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seallm_jax_seconds": jax_seconds, "transformers_seconds": torch_seconds,
        "ratio": {name: torch_seconds / seconds for name, seconds in jax_seconds.items()},
        "share_of_matmul": {name: share_of_matmul(flops / seconds, machine) for name, seconds in jax_seconds.items()}
        | {"transformers": share_of_matmul(flops / torch_seconds, machine)},
    })


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
