"""Data benchmarks of issue 23, side by side in one run: `seallm-jax data tokenize` against Hugging Face
`datasets`, and (benchmarks/data_loader.py) the token loader.

    python -m benchmarks.data                      # tokenize section on a 1.05 GB file, then the loader section
    python -m benchmarks.data --gb 0.05 --skip-loader --workdir /tmp/bench   # a quick look
    python -m benchmarks.data --build-only --workdir /tmp/bench               # only write the input file

The machine probe (`benchmarks/machine.py`) is printed first and stored under "machine" in the JSON.

Tokenize section. A mixed-language JSON-lines file ({"text": ...} per line, no language field) is built from
real text (WORKDIR/mixed.jsonl; the same bytes on every machine for the same --gb and seed): documents of random
length (log-normal, median ~900 characters) glued from random texts of one language of the shipped corpus and
the other-domain set (11 languages, Firefox and LibreOffice strings and help pages). On that same file, each in
a fresh process, timed from start to finish:
  * `seallm-jax data tokenize en=FILE --out STORE --encoder fast` (all cores; reading, tokenizing with the
    exact tiktoken encoder, writing the store) and the same with `--encoder hf` (the Rust tokenizer's
    `encode_batch`); both stores must be byte-identical (same store fingerprint);
  * `datasets`: load_dataset("json") + map(batched=True, num_proc=2) with the same Qwen2 tokenizer, writing
    its Arrow cache (what its tutorials do; `pip install -e ".[bench]"`); its token count and id sum must
    equal the store's;
  * the encoders' own ceilings: one process, texts already in memory, on the first 128 MB (--ceiling-mb):
    the Rust tokenizer's `encode_batch` (its thread pool on all cores) and the tiktoken encoder (one thread),
    with the tiktoken path's time split into its stages (JSON, NFC and added-token scan, BPE, arrays);
and the peak resident memory of `data tokenize` (the command and its workers together, sampled every 50 ms)
on the first quarter and on the whole file. Goals: >= 1.5x datasets; RSS ratio whole / quarter <= 1.2.
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


def store_checksum(out: str) -> dict:
    """Tokens (separators left out), the sum of their ids, and the store's fingerprint (equal fingerprints:
    byte-identical shards)."""
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    eos = manifest["tokenizer"]["eos_id"]
    tokens = id_sum = 0
    for language in manifest["languages"].values():
        for split in language["splits"].values():
            documents = split["documents"]
            tokens += split["tokens"] - documents
            id_sum -= eos * documents
            for shard in split["shards"]:
                id_sum += int(np.fromfile(os.path.join(out, shard["name"] + ".bin"), dtype="<u4").sum(dtype=np.int64))
    return {"tokens": tokens, "id_sum": id_sum, "fingerprint": manifest["fingerprint"]}


def bench_tokenize(path: str, out: str, encoder: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    result = run_measured([sys.executable, "-m", "seallm_jax.cli", "data", "tokenize", f"en={path}", "--out", out,
                           "--no-progress", "--encoder", encoder])
    result.pop("stdout")
    result.update(store_checksum(out))
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
    ids = tokenized.data.column("input_ids")
    print(pc.sum(pc.list_value_length(ids)).as_py(), pc.sum(pc.list_flatten(ids).cast("int64")).as_py())
""")

# One process, texts already in memory: the Rust tokenizer's encode_batch (its thread pool on all cores),
# and the tiktoken encoder (one thread) with its time split into stages.
CEILING_SCRIPT = textwrap.dedent("""
    import json, sys, time, unicodedata
    import numpy as np
    from seallm_jax.data.tokenizer_adapter import as_tokenizer
    from seallm_jax.data.tokenize import _token_array, split_long_text
    from seallm_jax.tokenizer.fast_bpe import fast_encoder

    path, size = sys.argv[1], int(sys.argv[2])
    clock = time.process_time
    lines, read = [], 0
    with open(path, "rb") as handle:
        for line in handle:
            lines.append(line)
            read += len(line)
            if read >= size:
                break
    stages = {}
    t = clock(); texts = [json.loads(line)["text"] for line in lines]; stages["json"] = clock() - t
    t = clock(); pieces = [piece for text in texts for piece in split_long_text(text)]; stages["split_long"] = clock() - t

    def batches(items):
        batch, chars = [], 0
        for item in items:
            batch.append(item)
            chars += len(item)
            if chars >= 1 << 20:
                yield batch
                batch, chars = [], 0
        if batch:
            yield batch

    adapter = as_tokenizer(None)
    start, cpu = time.perf_counter(), clock()
    hf_tokens = sum(len(ids) for batch in batches(pieces) for ids in adapter.encode_batch(batch))
    hf = {"seconds": time.perf_counter() - start, "cpu_seconds": clock() - cpu, "tokens": hf_tokens}

    fast = fast_encoder(adapter.tokenizer)
    fast.encode("warm up")
    start, cpu = time.perf_counter(), clock()
    encoded = fast.encode_batch(pieces)
    fast_result = {"seconds": time.perf_counter() - start, "cpu_seconds": clock() - cpu,
                   "tokens": sum(len(ids) for ids in encoded)}
    # The stages of FastBPE.encode, one at a time over all pieces.
    core, regex = fast._core(), fast._added_regex
    t = clock(); [regex.search(piece) for piece in pieces]; stages["added_token_scan"] = clock() - t
    t = clock(); normal = [unicodedata.normalize("NFC", piece) for piece in pieces]; stages["nfc"] = clock() - t
    t = clock(); ids = [core.encode_ordinary(piece) for piece in normal]; stages["tiktoken_bpe"] = clock() - t
    t = clock(); arrays = [_token_array(i) for i in ids]; flat = np.concatenate(arrays); stages["to_arrays"] = clock() - t
    print(json.dumps({"bytes": read, "hf": hf, "fast": fast_result, "fast_stages": stages}))
""")


def bench_datasets(path: str, cache: str) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    result = run_measured([sys.executable, "-c", DATASETS_SCRIPT, path, cache], env={"HF_DATASETS_OFFLINE": "1"})
    tokens, id_sum = result.pop("stdout").split()[-2:]
    result["tokens"], result["id_sum"] = int(tokens), int(id_sum)
    shutil.rmtree(cache, ignore_errors=True)
    return result


def bench_ceiling(path: str, size: int) -> dict:
    result = run_measured([sys.executable, "-c", CEILING_SCRIPT, path, str(size)])
    return json.loads(result["stdout"].strip().split("\n")[-1])


def ensure_file(workdir: str, gb: float) -> str:
    """WORKDIR/mixed.jsonl of at least `gb` GB (built once; the seed makes its bytes reproducible)."""
    big = os.path.join(workdir, "mixed.jsonl")
    target = int(gb * 1e9)
    if not (os.path.exists(big) and os.path.getsize(big) >= target):
        start = time.perf_counter()
        info = build_file(big, target)
        print(f"built {big}: {info['bytes'] / 1e6:.0f} MB, {info['documents']} documents "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return big


def tokenize_section(args: argparse.Namespace, workdir: str) -> dict:
    big = ensure_file(workdir, args.gb)
    size = os.path.getsize(big)
    mb = size / 1e6
    small = os.path.join(workdir, "mixed-quarter.jsonl")
    small_size = prefix_file(big, small, size // 4)
    results: dict = {"file_mb": mb, "cpus": len(os.sched_getaffinity(0))}
    for run in range(args.runs):
        fast = bench_tokenize(big, os.path.join(workdir, "store-fast"), "fast")
        print(f"[run {run + 1}] data tokenize --encoder fast: {fast['seconds']:.1f} s", flush=True)
        quarter = bench_tokenize(small, os.path.join(workdir, "store-quarter"), "fast")
        shutil.rmtree(os.path.join(workdir, "store-quarter"), ignore_errors=True)
        hf = bench_tokenize(big, os.path.join(workdir, "store-hf"), "hf")
        print(f"[run {run + 1}] data tokenize --encoder hf: {hf['seconds']:.1f} s", flush=True)
        for out in ("store-fast", "store-hf"):
            shutil.rmtree(os.path.join(workdir, out), ignore_errors=True)
        reference = bench_datasets(big, os.path.join(workdir, "hf_cache"))
        print(f"[run {run + 1}] datasets: {reference['seconds']:.1f} s", flush=True)
        ceiling = bench_ceiling(big, min(size, int(args.ceiling_mb * 1e6)))
        ceiling_mb = ceiling["bytes"] / 1e6
        row = {
            "fast_mb_s": mb / fast["seconds"], "fast_tokens_s": fast["tokens"] / fast["seconds"],
            "hf_path_mb_s": mb / hf["seconds"], "hf_path_tokens_s": hf["tokens"] / hf["seconds"],
            "datasets_mb_s": mb / reference["seconds"], "datasets_tokens_s": reference["tokens"] / reference["seconds"],
            "speedup": reference["seconds"] / fast["seconds"],            # the goal: >= 1.5
            "hf_path_speedup": reference["seconds"] / hf["seconds"],
            "fast_over_hf_path": hf["seconds"] / fast["seconds"],
            # CPU-seconds: what each pipeline costs, whatever share of the cores other jobs leave it.
            "fast_mb_per_cpu_s": mb / fast["cpu_seconds"], "hf_path_mb_per_cpu_s": mb / hf["cpu_seconds"],
            "datasets_mb_per_cpu_s": mb / reference["cpu_seconds"],
            "cpu_speedup": reference["cpu_seconds"] / fast["cpu_seconds"],
            "ceiling_hf_mb_s": ceiling_mb / ceiling["hf"]["seconds"],
            "ceiling_hf_tokens_s": ceiling["hf"]["tokens"] / ceiling["hf"]["seconds"],
            "ceiling_hf_mb_per_cpu_s": ceiling_mb / ceiling["hf"]["cpu_seconds"],
            "ceiling_fast_mb_s": ceiling_mb / ceiling["fast"]["seconds"],
            "ceiling_fast_tokens_s": ceiling["fast"]["tokens"] / ceiling["fast"]["seconds"],
            "ceiling_fast_mb_per_cpu_s": ceiling_mb / ceiling["fast"]["cpu_seconds"],
            "ceiling_mb": ceiling_mb, "ceiling_tokens_equal": ceiling["hf"]["tokens"] == ceiling["fast"]["tokens"],
            "fast_stages_cpu_s": ceiling["fast_stages"],
            "rss_full_mb": fast["peak_rss_mb"], "rss_quarter_mb": quarter["peak_rss_mb"],
            "rss_ratio": fast["peak_rss_mb"] / quarter["peak_rss_mb"], "quarter_mb": small_size / 1e6,
            "hf_path_peak_rss_mb": hf["peak_rss_mb"], "datasets_peak_rss_mb": reference["peak_rss_mb"],
            "tokens": fast["tokens"], "hf_path_tokens": hf["tokens"], "datasets_tokens": reference["tokens"],
            "id_sum": fast["id_sum"], "hf_path_id_sum": hf["id_sum"], "datasets_id_sum": reference["id_sum"],
            "stores_identical": fast["fingerprint"] == hf["fingerprint"],
            "store_fingerprint": fast["fingerprint"],
        }
        results.setdefault("runs", []).append(row)
        print(f"[run {run + 1}] " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                                for k, v in row.items()}), flush=True)
    print(format_tokenize(results))
    for row in results["runs"]:
        assert row["stores_identical"], "the fast and the hf encoder wrote different stores"
        assert row["ceiling_tokens_equal"], "the encoders' ceilings counted different tokens"
        assert (row["tokens"], row["id_sum"]) == (row["datasets_tokens"], row["datasets_id_sum"]), \
            "data tokenize and datasets disagree on the tokens"
    return results


def format_tokenize(results: dict) -> str:
    runs = results["runs"]

    def span(key: str, scale: float = 1.0, digits: int = 1) -> str:
        values = [row[key] / scale for row in runs]
        low, high = min(values), max(values)
        return f"{low:.{digits}f}" if len(values) == 1 else f"{low:.{digits}f}-{high:.{digits}f}"

    stages = runs[-1]["fast_stages_cpu_s"]
    total = sum(stages.values())
    return "\n".join([
        f"tokenize benchmark: {results['file_mb']:.0f} MB mixed-language JSON-lines, {results['cpus']} CPUs, "
        f"{len(runs)} run(s) (range)",
        f"  data tokenize (tiktoken)   : {span('fast_mb_s')} MB/s, {span('fast_tokens_s', 1e6, 2)}M tokens/s; "
        f"{span('fast_mb_per_cpu_s', 1, 2)} MB per CPU-second",
        f"  data tokenize (HF encode)  : {span('hf_path_mb_s')} MB/s, {span('hf_path_tokens_s', 1e6, 2)}M tokens/s; "
        f"{span('hf_path_mb_per_cpu_s', 1, 2)} MB per CPU-second",
        f"  datasets map num_proc=2    : {span('datasets_mb_s')} MB/s, {span('datasets_tokens_s', 1e6, 2)}M tokens/s; "
        f"{span('datasets_mb_per_cpu_s', 1, 2)} MB per CPU-second",
        f"  speed-up over datasets     : {span('speedup', 1, 2)}x wall (goal >= 1.5x), {span('cpu_speedup', 1, 2)}x "
        f"per CPU-second; HF-encode path {span('hf_path_speedup', 1, 2)}x; tiktoken path / HF path "
        f"{span('fast_over_hf_path', 1, 2)}x",
        f"  same tokens                : stores byte-identical {all(r['stores_identical'] for r in runs)}; "
        f"{runs[-1]['tokens']} tokens, id sum {runs[-1]['id_sum']} (datasets: {runs[-1]['datasets_tokens']}, "
        f"{runs[-1]['datasets_id_sum']})",
        f"  ceilings, one process      : HF encode_batch {span('ceiling_hf_mb_s')} MB/s, "
        f"{span('ceiling_hf_tokens_s', 1e6, 2)}M tokens/s ({span('ceiling_hf_mb_per_cpu_s', 1, 2)} MB per CPU-s, "
        f"its threads); tiktoken {span('ceiling_fast_mb_s')} MB/s, {span('ceiling_fast_tokens_s', 1e6, 2)}M tokens/s "
        f"({span('ceiling_fast_mb_per_cpu_s', 1, 2)} MB per CPU-s, one thread); {runs[-1]['ceiling_mb']:.0f} MB in memory",
        "  tiktoken path, CPU shares  : " + ", ".join(f"{name} {100 * value / total:.0f}%"
                                                     for name, value in stages.items()),
        f"  peak RSS tokenize          : {span('rss_quarter_mb', 1, 0)} MB on {runs[0]['quarter_mb']:.0f} MB, "
        f"{span('rss_full_mb', 1, 0)} MB on {results['file_mb']:.0f} MB: ratio {span('rss_ratio', 1, 2)} (goal <= 1.2)",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.05, help="size of the JSON-lines file (GB, default 1.05)")
    parser.add_argument("--runs", type=int, default=1, help="repetitions of the tokenize section")
    parser.add_argument("--ceiling-mb", type=float, default=128, help="text for the encoders' ceilings (MB)")
    parser.add_argument("--workdir", help="keep the file and outputs here (default: a temporary directory)")
    parser.add_argument("--build-only", action="store_true", help="only write WORKDIR/mixed.jsonl and stop")
    parser.add_argument("--skip-loader", action="store_true", help="only the tokenize section")
    parser.add_argument("--json", help="also write the results (with the machine probe) here")
    args, loader_args = parser.parse_known_args(argv)
    if args.build_only:
        if not args.workdir:
            parser.error("--build-only needs --workdir")
        os.makedirs(args.workdir, exist_ok=True)
        print(ensure_file(args.workdir, args.gb))
        return
    try:
        from benchmarks.machine import announce
    except ImportError:
        announce = None
        print("machine: not probed (benchmarks/machine.py is absent)", flush=True)
    results: dict = {"machine": announce() if announce else None}
    workdir = args.workdir or tempfile.mkdtemp(prefix="seallm-bench-data-")
    os.makedirs(workdir, exist_ok=True)
    try:
        results["tokenize"] = tokenize_section(args, workdir)
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
