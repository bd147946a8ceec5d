"""Where a compiled step's time goes on XLA:CPU, by HLO instruction kind: a `jax.profiler` trace of a few calls,
summed per op family over the threads XLA runs ops on, with their share of the machine's cores over the wall time.

    python -m benchmarks.op_profile stats --model HF_DIR          # one LAPE-only statistics batch (8 x 256)
    python -m benchmarks.op_profile stats --model HF_DIR --plnd   # LAPE + PLND
    python -m benchmarks.op_profile train_step                    # benchmarks.train_step's default small step
    python -m benchmarks.op_profile train_step --scan-unroll 4    # ... with any of train_step's flags

Op families are the instruction names without their numeric suffix (`ynn_fusion` = XLA:CPU's YNNPACK dot
fusions, `copy_bitcast_fusion` = layout copies fused with elementwise work, `while` = the layer scan's loop, ...).
A plain `dot` (XLA's Eigen matmul, which XLA:CPU picks for dots that contract both operands' major axis, such as
weight gradients over tokens) is traced only while it is launched: its compute shows as idle core time.
The trace needs `--xla_cpu_enable_xprof_traceme=true`, which this module adds to XLA_FLAGS before JAX starts.
The machine probe (`benchmarks/machine.py`) is printed first. Run it on a quiet machine: idle thread time is
part of what it reports.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
if TRACE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRACE_FLAG}".strip()

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `seallm_jax` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# XLA:CPU runs a program's ops on its intra-op worker threads and, in part, on the calling client thread.
EXECUTING_THREAD_PREFIXES = ("tf_XLAEigen", "tf_XLAPjRtCpuClient")


def op_family(name: str) -> str:
    """`ynn_fusion.33` -> `ynn_fusion`; `copy_bitcast_fusion.8.clone` keeps its kind, drops the numbers."""
    return re.sub(r"(\.\d+)+$", "", name)


def profile(call: Callable[[], object], calls: int = 3) -> dict:
    """Wall seconds per call and thread-seconds per op family (summed over XLA's executing threads) over `calls`
    traced calls, after one untraced."""
    import jax
    from jax.profiler import ProfileData

    jax.block_until_ready(call())
    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory)
        started = time.perf_counter()
        for _ in range(calls):
            result = call()
        jax.block_until_ready(result)
        wall = (time.perf_counter() - started) / calls
        jax.profiler.stop_trace()
        (trace,) = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
        data = ProfileData.from_file(trace)
    busy: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith(EXECUTING_THREAD_PREFIXES):
                continue
            for event in line.events:
                if not event.name.startswith("ThunkExecutor"):  # the executor's spans enclose the ops
                    busy[op_family(event.name)] += event.duration_ns / 1e9 / calls
    return {"wall_seconds": wall, "cores": os.cpu_count() or 1, "families": dict(busy.most_common())}


def report(result: dict, top: int = 14) -> str:
    busy = sum(result["families"].values())
    cores = result["cores"]
    lines = [f"wall {result['wall_seconds'] * 1e3:.1f} ms per call; ops ran {busy * 1e3:.1f} thread-ms, "
             f"{100 * busy / (cores * result['wall_seconds']):.0f}% of the {cores} cores' time"]
    for family, seconds in list(result["families"].items())[:top]:
        lines.append(f"  {seconds * 1e3:9.1f} thread-ms {100 * seconds / busy:5.1f}%  {family}")
    if "dot" in result["families"]:
        lines.append("  note: plain `dot` instructions (XLA's Eigen matmuls, e.g. weight gradients that contract the "
                     "token axis) are traced only while launched; their compute shows up as idle core time")
    return "\n".join(lines)


def statistics_call(model_dir: str, plnd: bool, batch_size: int, seq_len: int) -> Callable[[], object]:
    import numpy as np

    from seallm_jax import hf
    from seallm_jax.lsn.stats import StatisticsPass

    model = hf.load_model(model_dir)
    statistics = StatisticsPass(model, plnd=plnd)
    rng = np.random.default_rng(0)
    documents = np.repeat(np.arange(1, 5, dtype=np.int32), -(-seq_len // 4))[:seq_len]  # four per row
    batch = {"input_ids": rng.integers(0, model.config.vocab_size, (batch_size, seq_len)).astype(np.int32),
             "segment_ids": np.tile(documents, (batch_size, 1))}
    return lambda: statistics.dispatch(batch)


def train_step_call(argv: list[str]) -> Callable[[], object]:
    from benchmarks.common import random_batch
    from benchmarks.train_step import JaxStep, parse_args

    args = parse_args(argv)
    step = JaxStep(args, random_batch(args.batch, args.seq, args.vocab))

    def call():
        step.state, metrics = step.trainer.train_step(step.state, step.batch)
        return metrics
    return call


def main(argv: list[str] | None = None) -> None:
    from benchmarks.machine import announce

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("stats", "train_step"))
    parser.add_argument("--model", help="stats: a Hugging Face model directory")
    parser.add_argument("--plnd", action="store_true", help="stats: LAPE + PLND (default: LAPE only)")
    parser.add_argument("--rows", type=int, default=8, help="stats: rows per batch")
    parser.add_argument("--seq-len", type=int, default=256, help="stats: tokens per row")
    parser.add_argument("--calls", type=int, default=3, help="traced calls")
    args, rest = parser.parse_known_args(argv)
    announce()
    if args.what == "stats":
        if not args.model or rest:
            parser.error("stats takes --model HF_DIR (and --plnd, --rows, --seq-len)")
        call = statistics_call(args.model, args.plnd, args.rows, args.seq_len)
    else:
        call = train_step_call(rest)
    print(report(profile(call, args.calls)))


if __name__ == "__main__":
    main()
