"""Shared test setup: 8 fake CPU devices for sharding tests, quick XLA compiles, float32 matmuls, offline hubs."""
import os

# Backend optimisation level 0 about halves XLA's CPU compile time (13.9 -> 6.5 CPU-s for the tiny
# train step), and the tests' tiny programs spend nearly all their time compiling; the subprocess tests
# use the same flag (train_helpers.cli_env).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

from train_helpers import XLA_CACHE  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# The session's persistent compilation cache, which the commands tests start use too (train_helpers.cli_env),
# on in this process as well: a program compiled again (every Trainer.init_state call, the same tiny model
# in another test) loads in about a seventh of its compile time.
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
