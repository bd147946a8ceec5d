"""Shared helpers for the side-by-side benchmarks: timing and the reference model's config."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from seallm_jax.model.config import PRESETS, Qwen2Config

# Qwen2-0.5B's shape (random weights): the default for every benchmark, each field a flag.
_PRESET = Qwen2Config.preset("qwen2-0.5b")
QWEN2_0_5B = {name: getattr(_PRESET, name) for name in (*PRESETS["qwen2-0.5b"], "rope_theta", "rms_norm_eps")}


def add_model_args(parser) -> None:
    for name, default in QWEN2_0_5B.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)


def model_config(args) -> Qwen2Config:
    return Qwen2Config(**{name: getattr(args, name) for name in QWEN2_0_5B})


def torch_config(config: Qwen2Config):
    import transformers

    hf = config.to_hf()
    hf.pop("architectures"), hf.pop("model_type")
    cls = transformers.Qwen2Config if config.attention_bias else transformers.LlamaConfig
    return cls(**hf)


def time_it(step: Callable[[], object], *, warmup: int, iterations: int) -> float:
    """Median seconds per call; `step` must block until its result is ready."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops(size: int, dtype: str = "float32", repeats: int = 5) -> float:
    """Best FLOP/s of a jitted chain of 4 [size, size] matmuls in `dtype` on the default JAX device
    (several dots per dispatch hide the dispatch overhead)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)

    @jax.jit
    def chain(a, b):
        for _ in range(4):
            a = (a @ b) * jnp.asarray(1.0 / size, dtype)
        return a
    chain(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        chain(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 4 * 2 * size**3 / best


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """A training batch of random tokens, one document per row (segment ids 1, positions 0..seq-1)."""
    import numpy as np

    tokens = np.random.default_rng(seed).integers(0, vocab, (batch, seq + 1)).astype(np.int32)
    return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_mask": np.ones((batch, seq), np.float32), "segment_ids": np.ones((batch, seq), np.int32),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()}
