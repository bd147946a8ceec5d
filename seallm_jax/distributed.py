"""Multi-process start-up through JAX's own runtime (`jax.distributed.initialize`), and what the
processes of a run need to agree or to notice that one of them is gone.

Call `initialize()` before anything touches a device. It picks, in order: explicit JAX_* variables,
SLURM, a TPU pod; otherwise the run is a single process and nothing happens.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

import jax
import numpy as np

from seallm_jax.errors import close_progress_bars

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


def gather_text(text: str, max_bytes: int = 1024) -> list[str]:
    """`text` from every process, in process order (one process: `[text]`); each is cut to `max_bytes`.

    A collective: every process must call it, in the same order as the others.
    """
    if jax.process_count() == 1:
        return [text]
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(text.encode("utf-8")[:max_bytes], np.uint8)
    row = np.zeros(max_bytes + 4, np.uint8)
    row[:4] = np.frombuffer(np.int32(encoded.size).tobytes(), np.uint8)
    row[4:4 + encoded.size] = encoded
    rows = np.asarray(multihost_utils.process_allgather(row))
    return [bytes(r[4:4 + int(np.frombuffer(r[:4].tobytes(), np.int32)[0])]).decode("utf-8", "ignore")
            for r in rows]


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# The exit code of a process that stopped because the run lost another process (EX_TEMPFAIL of
# sysexits.h: a temporary failure; rerunning every process resumes from the last checkpoint).
LOST_PROCESS_EXIT_CODE = 75


def exit_lost_run(line: str) -> NoReturn:
    """Print `line` to stderr and end this process now, with LOST_PROCESS_EXIT_CODE.

    A normal exit would first wait in JAX's shutdown barrier for the process that is gone (until the
    heartbeat timeout, then abort with a C++ stack trace); checkpoints already written are complete,
    and a half-written one is never resumed from, so nothing is lost by skipping Python's clean-up.
    """
    close_progress_bars()  # the line starts a line of its own, not the end of the training bar's
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    os._exit(LOST_PROCESS_EXIT_CODE)


class StallWatchdog:
    """Ends this process (`exit_lost_run(message(idle_seconds))`) when `progress()` has not been
    called for `timeout` seconds; `timeout <= 0` disables it.

    In a multi-process run, a process that died or hangs leaves the others waiting in a collective
    that may never return (NCCL, TPU ICI); no Python exception interrupts such a wait, so a thread
    watches the time since the last sign of progress.
    """

    def __init__(self, timeout: float, message: Callable[[float], str]):
        self.timeout = float(timeout)
        self._message = message
        self._last_progress = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)

    def start(self) -> None:
        if self.timeout > 0:
            self.progress()
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def progress(self) -> None:
        self._last_progress = time.monotonic()

    def _watch(self) -> None:
        while not self._stopped.wait(min(1.0, self.timeout / 10)):
            idle = time.monotonic() - self._last_progress
            if idle > self.timeout:
                exit_lost_run(self._message(idle))
