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
