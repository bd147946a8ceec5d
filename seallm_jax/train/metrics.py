"""Training metrics: throughput and MFU, and the writers (metrics.jsonl, TensorBoard) on process 0.

MFU = model FLOPs per token x tokens per second / (`config.train.peak_flops` x number of devices).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops_per_device: float, num_devices: int) -> float:
    """Model FLOPs utilisation; 0 when no peak is configured."""
    if peak_flops_per_device <= 0:
        return 0.0
    return flops_per_token * tokens_per_second / (peak_flops_per_device * num_devices)


class MetricsWriter:
    """Appends one JSON object per logged step to DIR/metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, *, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (a resumed run logs them again)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, int(step))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(value: Any) -> Any:
    try:
        return float(value) if not isinstance(value, (str, bool, int)) else value
    except (TypeError, ValueError):
        return str(value)
