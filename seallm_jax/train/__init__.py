"""Training: optimizer and schedule, the sharded jitted train step, and the resumable training loop.

`train(config, workdir)` is what `seallm-jax train` runs; `build_optimizer(config)` is the one place an
optimizer is made (LSN training wraps it through `config.lsn`). Names load lazily, so registering
the `train` command does not import JAX.
"""
from seallm_jax._lazy import lazy_getattr

_EXPORTS = {
    "train": "seallm_jax.train.loop", "TrainingDivergedError": "seallm_jax.train.loop",
    "Trainer": "seallm_jax.train.step", "TrainState": "seallm_jax.train.step",
    "build_optimizer": "seallm_jax.train.optim", "build_schedule": "seallm_jax.train.optim",
    "base_config": "seallm_jax.train.config", "load_config": "seallm_jax.train.config",
    "apply_overrides": "seallm_jax.train.config",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
