"""Compiled train-step memory at growing sequence length, tokens per step held fixed: the old path
(dense `xla` attention, full float32 logits) against the new one (`flash` attention, chunked loss).

    python benchmarks/memory.py                                   # Qwen2-0.5B shape, 16k tokens/step
    python benchmarks/memory.py --lengths 1024,4096 --layers 4    # a quicker look
    python benchmarks/memory.py --config configs/qwen2_0_5b.py:tpu --tokens 65536

Nothing is allocated: the step is lowered for `jax.ShapeDtypeStruct` inputs and compiled, and XLA's
`memory_analysis()` reports the bytes of its arguments, outputs and temporaries (per device). The
"loss" column is the temporaries of the loss and its gradient alone (final hidden states -> summed
cross-entropy, both heads' shapes), the share of the step's temporaries the vocabulary costs.
`step_memory(config, mesh)` is the reusable part: any config, any mesh.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from seallm_jax import sharding as shd  # noqa: E402
from seallm_jax.train.config import load_config  # noqa: E402
from seallm_jax.train.loss import DEFAULT_CHUNK_TOKENS, chunked_cross_entropy_sums, cross_entropy_sums  # noqa: E402
from seallm_jax.train.optim import build_optimizer, build_schedule  # noqa: E402
from seallm_jax.train.step import Trainer  # noqa: E402

GIB = 2**30
# (label, attention_impl, loss_chunk_tokens): the two paths the table compares.
PATHS = (("old", "xla", 0), ("new", "flash", DEFAULT_CHUNK_TOKENS))


def step_memory(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, int]:
    """Bytes per device of the compiled train step for `config` on `mesh` (arguments, outputs,
    temporaries, and the aliased bytes the donated state shares with the outputs)."""
    trainer = Trainer(config, mesh, build_optimizer(config), build_schedule(config))
    analysis = trainer.lower_train_step().compile().memory_analysis()
    return {"arguments": analysis.argument_size_in_bytes, "outputs": analysis.output_size_in_bytes,
            "temporaries": analysis.temp_size_in_bytes, "aliased": analysis.alias_size_in_bytes}


def loss_memory(config: ml_collections.ConfigDict, chunk_tokens: int) -> int:
    """Temporary bytes of the loss and its gradient alone (one device): hidden -> head -> summed CE."""
    model, train = config.model, config.train
    rows = train.global_batch_size // train.micro_batches
    dtype = jnp.dtype(model.dtype)
    hidden = jax.ShapeDtypeStruct((rows, train.seq_len, model.hidden_size), dtype)
    head = jax.ShapeDtypeStruct((model.hidden_size, model.vocab_size), jnp.dtype(model.param_dtype))
    targets = jax.ShapeDtypeStruct((rows, train.seq_len), jnp.int32)
    mask = jax.ShapeDtypeStruct((rows, train.seq_len), jnp.float32)

    def loss(hidden, head, targets, mask):
        logits_fn = lambda h: (h @ head.astype(dtype)).astype(jnp.float32)  # noqa: E731
        if chunk_tokens:
            return chunked_cross_entropy_sums(hidden, logits_fn, targets, mask, chunk_tokens=chunk_tokens)[0]
        return cross_entropy_sums(logits_fn(hidden), targets, mask)[0]

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, head, targets, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def configure(config: ml_collections.ConfigDict, seq_len: int, tokens: int, attention_impl: str,
              loss_chunk_tokens: int) -> ml_collections.ConfigDict:
    """A copy of `config` at `seq_len` with `tokens` tokens per step (one micro-batch) and one path."""
    config = ml_collections.ConfigDict(config.to_dict())
    if tokens % seq_len:
        raise SystemExit(f"--tokens {tokens} is not a multiple of length {seq_len}")
    config.train.update(seq_len=seq_len, global_batch_size=tokens // seq_len, micro_batches=1)
    config.train.loss_chunk_tokens = loss_chunk_tokens
    config.model.update(attention_impl=attention_impl, max_position_embeddings=max(seq_len, 32768))
    return config


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/qwen2_0_5b.py:cpu",
                        help="recipe whose model/optimizer to measure (default: Qwen2-0.5B, float32, no remat)")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per step, held fixed")
    parser.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (0: the config's)")
    parser.add_argument("--remat", default="", help="override model.remat")
    args = parser.parse_args(argv)
    base = load_config(args.config)
    if args.layers:
        base.model.num_hidden_layers = args.layers
    if args.remat:
        base.model.remat = args.remat
    mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    m = base.model
    print(f"{args.config}: {m.num_hidden_layers} layers, hidden {m.hidden_size}, vocab {m.vocab_size}, "
          f"dtype {m.dtype}, remat {m.remat}; {args.tokens} tokens per step; GiB per device; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"{'T':>6s} {'batch':>5s} | {'path':4s} {'arguments':>9s} {'outputs':>8s} {'temps':>8s} "
          f"{'loss':>7s} {'loss %':>6s}")
    rows = []
    for seq_len in (int(n) for n in args.lengths.split(",")):
        for label, attention_impl, chunk_tokens in PATHS:
            config = configure(base, seq_len, args.tokens, attention_impl, chunk_tokens)
            memory = step_memory(config, mesh)
            loss = loss_memory(config, chunk_tokens)
            row = {"seq_len": seq_len, "path": label, **memory, "loss_temporaries": loss}
            rows.append(row)
            print(f"{seq_len:6d} {args.tokens // seq_len:5d} | {label:4s} {memory['arguments'] / GIB:9.2f} "
                  f"{memory['outputs'] / GIB:8.2f} {memory['temporaries'] / GIB:8.2f} {loss / GIB:7.2f} "
                  f"{100 * loss / max(memory['temporaries'], 1):5.1f}%", flush=True)
    return rows


if __name__ == "__main__":
    main()
