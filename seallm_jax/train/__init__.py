"""Training: optimizer and schedule, the sharded jitted train step, and the resumable training loop.

`train(config, workdir)` is what `seallm-jax train` runs; `build_optimizer(config)` is the one place an
optimizer is made (LSN training wraps it through `config.lsn`). Names load lazily, so registering
the `train` command does not import JAX.
"""
import importlib

_EXPORTS = {
    "train": "loop", "TrainingDivergedError": "loop",
    "Trainer": "step", "TrainState": "step",
    "build_optimizer": "optim", "build_schedule": "optim",
    "base_config": "config", "load_config": "config", "apply_overrides": "config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"seallm_jax.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'seallm_jax.train' has no attribute {name!r}")
