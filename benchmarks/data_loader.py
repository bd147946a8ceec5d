"""Loader section of `python -m benchmarks.data`: packed, sharded batches from a synthetic token store.

    python -m benchmarks.data_loader [--tokens 1e7,1e9] [--seq-len 2048] [--global-batch 64] [--processes 4]

For each size, a store of random tokens (documents of random lengths, each ending with the separator)
is written straight into the store format under a temporary directory (4 bytes a token on disk); then a
fresh Python process, as process 0 of `--processes`, opens it and measures: time to its first batch,
tokens/s of its rows over `--batches` steps, the peak anonymous memory (RssAnon, sampled every batch),
and the time to restore at step 10^6 and build that batch. Goals (issue 23): >= 5M tokens/s per process,
first batch < 1 s and peak anonymous memory < 300 MB for 10^7 and 10^9 tokens alike, resume < 1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SHARD_TOKENS = 1 << 26  # 256 MB shards: writing holds one shard (twice) in memory, not the store
MEAN_DOCUMENT_TOKENS = 600
VOCAB = 151_643
SEPARATOR = 151_643
TOKENIZER = {"fingerprint": "b" * 64, "name": "synthetic", "vocab_size": 151_665, "eos_id": SEPARATOR}


def synthetic_store(path: str, tokens: int, seed: int = 0) -> None:
    """A one-language ('th') store of `tokens` random tokens, written shard by shard."""
    from seallm_jax.data.store import build_manifest, write_manifest, write_shard

    rng = np.random.default_rng(seed)
    shards, written = [], 0
    while written < tokens:
        size = min(SHARD_TOKENS, tokens - written)
        lengths = rng.geometric(1 / MEAN_DOCUMENT_TOKENS, size // MEAN_DOCUMENT_TOKENS * 2 + 2) + 1
        ends = np.cumsum(lengths)
        ends = np.append(ends[ends < size], size)
        data = rng.integers(0, VOCAB, size, dtype=np.uint32)
        data[ends - 1] = SEPARATOR  # every document ends with the separator
        offsets = np.concatenate([[0], ends]).astype(np.uint64)
        shards.append(write_shard(path, f"th/train-{len(shards):05d}", data, offsets))
        written += size
        del data
    write_manifest(path, build_manifest(TOKENIZER, {"th": {"sources": [], "splits": {"train": shards}}}))


def _anonymous_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: str, seq_len: int, global_batch: int, processes: int, batches: int) -> dict:
    """Run in a fresh process: everything from opening the store counts."""
    baseline = _anonymous_mb()
    started = time.perf_counter()
    from seallm_jax.data.loader import token_loader
    from seallm_jax.data.store import TokenStore

    rows = global_batch // processes
    loader = token_loader([TokenStore.open(path)], languages=None, seq_len=seq_len, global_batch_size=global_batch,
                          row_start=0, row_stop=rows, seed=0)
    next(loader)
    first = time.perf_counter() - started
    peak = _anonymous_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(loader)
        peak = max(peak, _anonymous_mb())
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    state = loader.state()
    state["step"] = 10 ** 6
    started = time.perf_counter()
    loader.restore(state)
    next(loader)
    resume = time.perf_counter() - started
    # Wall-clock and CPU-time rates: on a shared machine the wall clock also counts other programs' turns.
    return {"tokens_per_s": batches * rows * seq_len / elapsed, "tokens_per_cpu_s": batches * rows * seq_len / cpu,
            "first_batch_s": first, "resume_s": resume,
            "peak_anonymous_mb": max(peak, _anonymous_mb()), "anonymous_mb_before_import": baseline}


def run(sizes: list[int], *, seq_len: int, global_batch: int, processes: int, batches: int,
        directory: str | None) -> list[dict]:
    results = []
    for tokens in sizes:
        root = tempfile.mkdtemp(prefix="seallm-loader-bench-", dir=directory)
        try:
            started = time.perf_counter()
            synthetic_store(os.path.join(root, "store"), tokens)
            write_s = time.perf_counter() - started
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.data_loader", "--measure", os.path.join(root, "store"),
                 "--seq-len", str(seq_len), "--global-batch", str(global_batch), "--processes", str(processes),
                 "--batches", str(batches)], capture_output=True, text=True, check=True)
            result = {"tokens": tokens, "store_write_s": write_s, **json.loads(child.stdout.strip().splitlines()[-1])}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"{tokens:.0e} tokens: {result['tokens_per_s'] / 1e6:.1f}M tokens/s per process "
              f"({result['tokens_per_cpu_s'] / 1e6:.1f}M per CPU-second) "
              f"({global_batch // processes} rows x {seq_len}), first batch {result['first_batch_s']:.2f} s, "
              f"peak anonymous memory {result['peak_anonymous_mb']:.0f} MB, resume at step 10^6 "
              f"{result['resume_s'] * 1e3:.1f} ms (store written in {write_s:.0f} s)", flush=True)
        results.append(result)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", default="1e7,1e9", help="store sizes, comma-separated")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--processes", type=int, default=4, help="this process is process 0 of these")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--dir", default=None, help="where the temporary stores go (default: $TMPDIR)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.seq_len, args.global_batch, args.processes, args.batches)))
        return
    from benchmarks.machine import announce

    announce()  # the machine probe beside the figures
    run([int(float(size)) for size in args.tokens.split(",")], seq_len=args.seq_len, global_batch=args.global_batch,
        processes=args.processes, batches=args.batches, directory=args.dir)


if __name__ == "__main__":
    main()
