"""Multi-process start-up through JAX's own runtime (`jax.distributed.initialize`).

Call `initialize()` before anything touches a device. It picks, in order: explicit JAX_* variables,
SLURM, a TPU pod; otherwise the run is a single process and nothing happens.
"""
from __future__ import annotations

import os

import jax

# Explicit settings (what launch/local.py and launch/gpu_node.sh export). JAX itself reads
# JAX_COORDINATOR_ADDRESS; the process count and id are ours to pass.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
LOCAL_DEVICE_IDS_ENV = "JAX_LOCAL_DEVICE_IDS"

_initialized = False


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def detect_mode() -> str:
    """'explicit', 'slurm', 'tpu_pod' or 'single' for the current environment."""
    if os.environ.get(COORDINATOR_ENV) and (_env_int(NUM_PROCESSES_ENV) or 1) > 1:
        return "explicit"
    if (_env_int("SLURM_NTASKS") or 1) > 1 and os.environ.get("SLURM_JOB_ID"):
        return "slurm"
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1:
        return "tpu_pod"
    return "single"


def initialize(mode: str = "auto", initialization_timeout: int = 300) -> str:
    """Join the multi-process runtime if this is one process of many; returns the mode used.

    mode: 'auto' (detect), 'none' (force single process), or one of detect_mode()'s values.
    On CPU the cross-process collectives go through gloo.
    """
    global _initialized
    if _initialized or jax.distributed.is_initialized():
        return "initialized"
    if mode == "none":
        return "single"
    if mode == "auto":
        mode = detect_mode()
    if mode == "single":
        return mode
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms.startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if mode == "explicit":
        local_ids = os.environ.get(LOCAL_DEVICE_IDS_ENV)
        jax.distributed.initialize(
            coordinator_address=os.environ[COORDINATOR_ENV],
            num_processes=_env_int(NUM_PROCESSES_ENV),
            process_id=_env_int(PROCESS_ID_ENV),
            local_device_ids=[int(i) for i in local_ids.split(",")] if local_ids else None,
            initialization_timeout=initialization_timeout)
    elif mode in ("slurm", "tpu_pod"):
        # JAX's cluster detection reads SLURM_* / the TPU metadata server itself.
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
    else:
        raise ValueError(f"distributed mode {mode!r}: expected auto, none, explicit, slurm or tpu_pod")
    _initialized = True
    return mode


def is_primary() -> bool:
    """True on the process that writes logs, metrics and progress (process 0)."""
    return jax.process_index() == 0
