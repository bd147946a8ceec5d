"""Helpers for tests that run `seallm-jax train` as real processes (kill, SIGTERM, multi-process)."""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TINY = os.path.join(CONFIGS, "tiny.py")
# One XLA compilation cache per test session: a rerun of the same config (resume) loads the compiled
# step instead of compiling it again.
XLA_CACHE = tempfile.mkdtemp(prefix="seallm-jax-test-xla-cache-")


def cli_env(devices: int = 8) -> dict:
    env = dict(os.environ)
    # Backend optimisation level 0 roughly halves XLA's compile time on CPU; every run a test compares
    # uses the same flags, so the comparisons are unaffected.
    env.update(JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest", PYTHONPATH=ROOT,
               JAX_COMPILATION_CACHE_DIR=XLA_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0")
    return env


def train_command(workdir: str, *overrides: str) -> list:
    return [sys.executable, "-m", "seallm_jax.cli", "train", "--config", TINY, "--workdir", str(workdir),
            "--config.train.progress_bar=False", *overrides]


def start(workdir, *overrides, devices: int = 8) -> subprocess.Popen:
    return subprocess.Popen(train_command(workdir, *overrides), env=cli_env(devices), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def metrics(workdir) -> list:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_for(condition, process: subprocess.Popen, timeout: float = 600, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"process ended before {what}: {process.communicate()[0][-3000:]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
