"""Data benchmarks of issue 23, side by side in one run: `seallm-jax data tokenize` against Hugging Face
`datasets`, and (benchmarks/data_loader.py) the token loader.

    python -m benchmarks.data                      # tokenize section on a 1.05 GB file, then the loader section
    python -m benchmarks.data --gb 0.05 --skip-loader --workdir /tmp/bench   # a quick look

Tokenize section. A mixed-language JSON-lines file ({"text": ...} per line, no language field) is built from
real text in a temporary directory: documents of random length (log-normal, median ~900 characters) glued from
random texts of one language of the shipped corpus and the other-domain set (11 languages, Firefox and
LibreOffice strings and help pages). On that same file, each in a fresh process, timed from start to finish:
  * `seallm-jax data tokenize en=FILE --out STORE` (all cores; reading, tokenizing, writing the store);
  * `datasets`: load_dataset("json") + map(batched=True, num_proc=2) with the same Qwen2 tokenizer, writing
    its Arrow cache (what its tutorials do; `pip install -e ".[bench]"`);
  * the tokenizer's own ceiling: one process, `encode_batch` of the Rust tokenizer on texts already in
    memory (its thread pool on all cores), on the first 128 MB (--ceiling-mb);
and the peak resident memory of `data tokenize` (the command and its workers together, sampled every 50 ms)
on the first 256 MB and on the whole file. Goals: >= 1.5x datasets; RSS ratio 1 GB / 256 MB <= 1.2.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `seallm_jax` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATA_DIRS = ("corpus", "other_domain")


def real_texts() -> dict[str, list[str]]:
    """Every text of the shipped corpus and the other-domain set, per language."""
    import seallm_jax.data

    root = os.path.dirname(seallm_jax.data.__file__)
    texts: dict[str, list[str]] = {}
    for directory in DATA_DIRS:
        folder = os.path.join(root, directory)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".jsonl.gz"):
                with gzip.open(os.path.join(folder, name), "rt", encoding="utf-8") as handle:
                    texts.setdefault(name.split(".")[0], []).extend(json.loads(line)["text"] for line in handle)
    return texts


def build_file(path: str, target_bytes: int, seed: int = 0) -> dict:
    """A JSON-lines file of at least `target_bytes` of mixed-language documents made of real text."""
    rng = np.random.default_rng(seed)
    texts = real_texts()
    languages = sorted(texts)
    documents = written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target_bytes:
            lines = []
            for _ in range(1000):
                pool = texts[languages[rng.integers(len(languages))]]
                length = int(rng.lognormal(np.log(900), 1.0))
                parts, size = [], 0
                while size < length:
                    part = pool[rng.integers(len(pool))]
                    parts.append(part)
                    size += len(part) + 1
                separator = "\n" if rng.random() < 0.3 else " "
                lines.append(json.dumps({"text": separator.join(parts)}, ensure_ascii=False) + "\n")
            block = "".join(lines)
            handle.write(block)
            written += len(block.encode("utf-8"))
            documents += len(lines)
    return {"bytes": os.path.getsize(path), "documents": documents}


def prefix_file(source: str, path: str, size: int) -> int:
    """The first `size` bytes of `source`, cut after a whole line."""
    with open(source, "rb") as handle:
        data = handle.read(size)
    data = data[: data.rfind(b"\n") + 1]
    with open(path, "wb") as handle:
        handle.write(data)
    return len(data)


def run_measured(command: list[str], env: dict | None = None) -> dict:
    """Wall seconds and peak RSS (MB) of `command` and all its descendants together."""
    import psutil

    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    parent = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        total = 0
        try:
            for member in [parent, *parent.children(recursive=True)]:
                try:
                    total += member.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    out, err = process.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and every process it waited for
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{err[-3000:]}")
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak / 1e6, "stdout": out}


def bench_tokenize(path: str, out: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    result = run_measured([sys.executable, "-m", "seallm_jax.cli", "data", "tokenize", f"en={path}", "--out", out,
                           "--no-progress"])
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    splits = manifest["languages"]["en"]["splits"].values()
    result["tokens"] = sum(split["tokens"] - split["documents"] for split in splits)  # separators left out
    result.pop("stdout")
    return result


DATASETS_SCRIPT = textwrap.dedent("""
    import sys
    import pyarrow.compute as pc
    from datasets import load_dataset
    from seallm_jax.tokenizer import load_tokenizer

    path, cache = sys.argv[1], sys.argv[2]
    tokenizer = load_tokenizer()

    def tokenize(batch):
        return tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)

    dataset = load_dataset("json", data_files=path, split="train", cache_dir=cache)
    tokenized = dataset.map(tokenize, batched=True, num_proc=2, remove_columns=["text"])
    print(pc.sum(pc.list_value_length(tokenized.data.column("input_ids"))).as_py())
""")

CEILING_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from seallm_jax.data.stream import as_tokenizer

    path, size = sys.argv[1], int(sys.argv[2])
    texts, read = [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            read += len(line.encode("utf-8"))
            if read >= size:
                break
    adapter = as_tokenizer(None)
    start, cpu = time.perf_counter(), time.process_time()
    tokens, batch, chars = 0, [], 0
    for text in texts + [None]:
        if text is not None:
            batch.append(text)
            chars += len(text)
        if batch and (text is None or chars >= 1 << 20):
            tokens += sum(len(ids) for ids in adapter.encode_batch(batch))
            batch, chars = [], 0
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                      "tokens": tokens, "bytes": read}))
""")


def bench_datasets(path: str, cache: str) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    result = run_measured([sys.executable, "-c", DATASETS_SCRIPT, path, cache], env={"HF_DATASETS_OFFLINE": "1"})
    result["tokens"] = int(result.pop("stdout").split()[-1])
    return result


def bench_ceiling(path: str, size: int) -> dict:
    result = run_measured([sys.executable, "-c", CEILING_SCRIPT, path, str(size)])
    return json.loads(result["stdout"].split("\n")[-2])


def tokenize_section(args: argparse.Namespace, workdir: str) -> dict:
    big = os.path.join(workdir, "mixed.jsonl")
    target = int(args.gb * 1e9)
    if not (os.path.exists(big) and os.path.getsize(big) >= target):
        start = time.perf_counter()
        info = build_file(big, target)
        print(f"built {big}: {info['bytes'] / 1e6:.0f} MB, {info['documents']} documents "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    size = os.path.getsize(big)
    small = os.path.join(workdir, "mixed-quarter.jsonl")
    small_size = prefix_file(big, small, size // 4)
    results: dict = {"file_mb": size / 1e6, "cpus": len(os.sched_getaffinity(0))}
    for run in range(args.runs):
        ours = bench_tokenize(big, os.path.join(workdir, "store"))
        print(f"[run {run + 1}] data tokenize: {ours['seconds']:.1f} s", flush=True)
        reference = bench_datasets(big, os.path.join(workdir, "hf_cache"))
        print(f"[run {run + 1}] datasets: {reference['seconds']:.1f} s", flush=True)
        ceiling = bench_ceiling(big, min(size, int(args.ceiling_mb * 1e6)))
        quarter = bench_tokenize(small, os.path.join(workdir, "store-quarter"))
        row = {
            "tokenize_mb_s": size / 1e6 / ours["seconds"], "tokenize_tokens_s": ours["tokens"] / ours["seconds"],
            "datasets_mb_s": size / 1e6 / reference["seconds"],
            "datasets_tokens_s": reference["tokens"] / reference["seconds"],
            "speedup": reference["seconds"] / ours["seconds"],
            # CPU-seconds: what each pipeline costs, whatever share of the cores other jobs leave it.
            "tokenize_mb_per_cpu_s": size / 1e6 / ours["cpu_seconds"],
            "datasets_mb_per_cpu_s": size / 1e6 / reference["cpu_seconds"],
            "cpu_speedup": reference["cpu_seconds"] / ours["cpu_seconds"],
            "ceiling_mb_s": ceiling["bytes"] / 1e6 / ceiling["seconds"],
            "ceiling_tokens_s": ceiling["tokens"] / ceiling["seconds"],
            "ceiling_mb_per_cpu_s": ceiling["bytes"] / 1e6 / ceiling["cpu_seconds"],
            "rss_full_mb": ours["peak_rss_mb"], "rss_quarter_mb": quarter["peak_rss_mb"],
            "rss_ratio": ours["peak_rss_mb"] / quarter["peak_rss_mb"], "quarter_mb": small_size / 1e6,
            "tokens": ours["tokens"], "datasets_tokens": reference["tokens"],
            "datasets_peak_rss_mb": reference["peak_rss_mb"],
        }
        results.setdefault("runs", []).append(row)
        print(f"[run {run + 1}] " + json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    for row in results["runs"]:
        assert row["tokens"] == row["datasets_tokens"], "the two pipelines disagree on the token count"
    print(format_tokenize(results))
    return results


def format_tokenize(results: dict) -> str:
    runs = results["runs"]

    def span(key: str, scale: float = 1.0, digits: int = 1) -> str:
        values = [row[key] / scale for row in runs]
        low, high = min(values), max(values)
        return f"{low:.{digits}f}" if len(values) == 1 else f"{low:.{digits}f}-{high:.{digits}f}"

    return "\n".join([
        f"tokenize benchmark: {results['file_mb']:.0f} MB mixed-language JSON-lines, {results['cpus']} CPUs, "
        f"{len(runs)} run(s) (range)",
        f"  seallm-jax data tokenize : {span('tokenize_mb_s')} MB/s, {span('tokenize_tokens_s', 1e6, 2)}M tokens/s",
        f"  datasets map num_proc=2  : {span('datasets_mb_s')} MB/s, {span('datasets_tokens_s', 1e6, 2)}M tokens/s",
        f"  speed-up                 : {span('speedup', 1, 2)}x wall (goal >= 1.5x); per CPU-second "
        f"{span('tokenize_mb_per_cpu_s', 1, 2)} vs {span('datasets_mb_per_cpu_s', 1, 2)} MB: {span('cpu_speedup', 1, 2)}x",
        f"  encode_batch ceiling     : {span('ceiling_mb_s')} MB/s, {span('ceiling_tokens_s', 1e6, 2)}M tokens/s "
        f"(one process, texts in memory); per CPU-second {span('ceiling_mb_per_cpu_s', 1, 2)} MB",
        f"  peak RSS tokenize        : {span('rss_quarter_mb', 1, 0)} MB on {runs[0]['quarter_mb']:.0f} MB, "
        f"{span('rss_full_mb', 1, 0)} MB on {results['file_mb']:.0f} MB: ratio {span('rss_ratio', 1, 2)} (goal <= 1.2)",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.05, help="size of the JSON-lines file (GB, default 1.05)")
    parser.add_argument("--runs", type=int, default=1, help="repetitions of the tokenize section")
    parser.add_argument("--ceiling-mb", type=float, default=128, help="text for the encode_batch ceiling (MB)")
    parser.add_argument("--workdir", help="keep the file and outputs here (default: a temporary directory)")
    parser.add_argument("--skip-loader", action="store_true", help="only the tokenize section")
    parser.add_argument("--json", help="also write the results here")
    args, loader_args = parser.parse_known_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="seallm-bench-data-")
    os.makedirs(workdir, exist_ok=True)
    try:
        results = {"tokenize": tokenize_section(args, workdir)}
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    if not args.skip_loader:
        from benchmarks import data_loader

        data_loader.main(loader_args)


if __name__ == "__main__":
    main()
