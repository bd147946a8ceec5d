"""Training metrics: throughput and MFU, and the writers (metrics.jsonl, TensorBoard) on process 0.

MFU = model FLOPs per token x tokens per second / (`config.train.peak_flops` x number of devices).
A workdir in object storage gets the same files: written locally, uploaded whole (objects cannot be
appended to) at most every few seconds (Cloud Storage takes about one update per second of one
object), at every checkpoint (sync) and at close.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any

from seallm_jax import paths

# Seconds between uploads of a remote workdir's metrics.jsonl and TensorBoard events (each upload is
# the whole file); sync() and close() upload at once.
METRICS_UPLOAD_EVERY = 5.0
TENSORBOARD_UPLOAD_EVERY = 60.0


def _summary_writer(logdir: str) -> Any:
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch wherever it is
    installed (about 2 CPU-seconds at every start of `seallm-jax train`) only to accept torch tensors
    too, and only Python numbers are logged here."""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir)


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops_per_device: float, num_devices: int) -> float:
    """Model FLOPs utilisation; 0 when no peak is configured."""
    if peak_flops_per_device <= 0:
        return 0.0
    return flops_per_token * tokens_per_second / (peak_flops_per_device * num_devices)


class MetricsWriter:
    """Appends one JSON object per logged step to DIR/metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, *, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.remote_path = paths.join(workdir, "metrics.jsonl") if paths.is_remote(workdir) else None
        self.remote_tensorboard = paths.join(workdir, "tensorboard") if paths.is_remote(workdir) else None
        # A remote workdir's files are written in a local mirror first, then uploaded whole.
        self._mirror = paths.local_staging("metrics") if enabled and self.remote_path else None
        local_workdir = self._mirror or workdir
        self.path = os.path.join(local_workdir, "metrics.jsonl")
        if self._mirror is not None and paths.exists(self.remote_path):
            paths.copy_file(self.remote_path, self.path)  # a resumed run continues the same file
        self.tb = None
        self._tb_uploaded = self._metrics_uploaded = time.monotonic()
        if enabled and tensorboard:
            self.tb = _summary_writer(os.path.join(local_workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (a resumed run logs them again)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(kept)
        self._upload_metrics()

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if time.monotonic() - self._metrics_uploaded > METRICS_UPLOAD_EVERY:
            self._upload_metrics()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, int(step))
            if self.remote_tensorboard and time.monotonic() - self._tb_uploaded > TENSORBOARD_UPLOAD_EVERY:
                self._upload_tensorboard()

    def sync(self) -> None:
        """A remote workdir: upload metrics.jsonl now (at a checkpoint: a resumed run keeps every record
        up to its step). Local: nothing to do."""
        if self.enabled:
            self._upload_metrics()

    def close(self) -> None:
        self.sync()
        if self.tb is not None:
            self.tb.close()
            if self.remote_tensorboard:
                self._upload_tensorboard()
        if self._mirror is not None:
            shutil.rmtree(self._mirror, ignore_errors=True)
            self._mirror = None

    def _upload_metrics(self) -> None:
        if self._mirror is not None and os.path.exists(self.path):
            paths.copy_file(self.path, self.remote_path)
        self._metrics_uploaded = time.monotonic()

    def _upload_tensorboard(self) -> None:
        self.tb.flush()
        local = os.path.join(self._mirror, "tensorboard")
        for name, _ in paths.walk_files(local):
            paths.copy_file(os.path.join(local, *name.split("/")), paths.join(self.remote_tensorboard, name))
        self._tb_uploaded = time.monotonic()


def _plain(value: Any) -> Any:
    try:
        return float(value) if not isinstance(value, (str, bool, int)) else value
    except (TypeError, ValueError):
        return str(value)
