"""Lazily imported package exports: `seallm_jax.lsn.NeuronSet` imports `seallm_jax.lsn.neurons` on
first use, so that light code paths (the command line's argument checks, `--help`, the corpus
reader) do not pay for importing JAX, Flax and transformers."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` that resolves each name in `exports` (name -> the
    module defining it) on first access."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
