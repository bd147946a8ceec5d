"""Token store read throughput: local vs on gs:// (gcp-storage-emulator on 127.0.0.1), side by side.

    python benchmarks/object_storage.py [--tokens 4000000] [--runs 3]

A store of random documents (uint32 tokens) is written locally and uploaded to the emulator. Each run
measures, in tokens per second of the whole store: reading every 1,025-token window from the local
store; opening the gs:// store for the first time on this host (the copy to the local cache, then the
same reads); opening it again (the cached copy, size-checked against the bucket, then the reads). The
machine probe (`benchmarks/machine.py`) is printed first.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

WINDOW = 1025


def read_all(store) -> int:
    documents = store.documents("th")
    total = 0
    for start in range(0, documents.num_tokens - WINDOW, WINDOW):
        total += int(documents.tokens(start, start + WINDOW)[-1] > 0)
    return documents.num_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from benchmarks.machine import announce

    announce()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                               f"--port={port}", "--in-memory", "--default-bucket=bench"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = tempfile.mkdtemp(prefix="seallm-bench-os-")
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b/bench", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        os.environ["STORAGE_EMULATOR_HOST"] = url
        from seallm_jax import paths
        from seallm_jax.data.store import TokenStore, write_store

        rng = np.random.default_rng(0)
        lengths = rng.integers(100, 2000, size=args.tokens // 1000)
        docs = [rng.integers(0, 60000, size=int(n)).tolist() for n in lengths]
        entry = {"fingerprint": "0" * 64, "name": "bench", "vocab_size": 65536, "eos_id": 65535}
        local = os.path.join(root, "store")
        write_store(local, {"th": {"train": docs, "validation": docs[:2]}}, tokenizer_entry=entry,
                    shard_documents=len(docs) // 4)
        remote = "gs://bench/stores/th"
        paths.upload_directory(local, remote)
        size = sum(n for _, n in paths.walk_files(local)) / 2**20
        print(f"store: {sum(map(len, docs)) + len(docs):,} tokens, {size:.1f} MiB, 4 shards")
        for run in range(args.runs):
            cache = os.path.join(root, f"cache{run}")
            os.environ["SEALLM_JAX_CACHE"] = cache
            start = time.perf_counter()
            tokens = read_all(TokenStore.open(local))
            local_s = time.perf_counter() - start
            start = time.perf_counter()
            read_all(TokenStore.open(remote))
            first_s = time.perf_counter() - start
            start = time.perf_counter()
            read_all(TokenStore.open(remote))
            cached_s = time.perf_counter() - start
            print(f"run {run + 1}: local {tokens / local_s / 1e6:.1f} M tokens/s; gs:// first open (copy + read) "
                  f"{tokens / first_s / 1e6:.1f} M tokens/s ({first_s:.2f} s); gs:// cached "
                  f"{tokens / cached_s / 1e6:.1f} M tokens/s")
            shutil.rmtree(cache)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
