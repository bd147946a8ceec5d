"""Training: optimizer and schedule, the sharded jitted train step, and the resumable training loop.

`train(config, workdir)` is what `seallm-jax train` runs; `build_optimizer(config)` is the one place an
optimizer is made (LSN training wraps it through `config.lsn`).
"""
from seallm_jax.train.config import apply_overrides, base_config, load_config
from seallm_jax.train.loop import TrainingDivergedError, train
from seallm_jax.train.optim import build_optimizer, build_schedule
from seallm_jax.train.step import Trainer, TrainState

__all__ = ["train", "TrainingDivergedError", "Trainer", "TrainState", "build_optimizer", "build_schedule",
           "base_config", "load_config", "apply_overrides"]
