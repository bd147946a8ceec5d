"""python benchmarks/data_runthrough_inputs.py OUT [MB_PER_LANGUAGE]: Per-language inputs of >= 1 GB in total for the issue-23 run-through, made of real text (the shipped corpus and
the other-domain set of each language, documents glued from random texts of that language, log-normal length with
median ~900 characters), one file per language in a different input format: th .jsonl, vi .jsonl.zst,
id .parquet, en .txt (one document per paragraph)."""
import json, os, sys
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.data import real_texts

OUT = sys.argv[1]
PER_LANGUAGE = int(float(sys.argv[2]) * 2**20) if len(sys.argv) > 2 else 270 * 2**20
texts = real_texts()
os.makedirs(OUT, exist_ok=True)

def documents(language, seed):
    rng = np.random.default_rng(seed)
    pool = texts[language]
    while True:
        length = int(rng.lognormal(np.log(900), 1.0))
        parts, size = [], 0
        while size < length:
            part = pool[rng.integers(len(pool))].replace("\n\n", "\n")
            parts.append(part); size += len(part) + 1
        yield " ".join(parts)

for seed, (language, name) in enumerate([("th", "th.jsonl"), ("vi", "vi.jsonl.zst"), ("id", "id.parquet"), ("en", "en.txt")]):
    path = os.path.join(OUT, name)
    written, docs, batch = 0, [], []
    for doc in documents(language, seed):
        docs.append(doc); written += len(doc.encode()) + 12
        if written >= PER_LANGUAGE: break
    if name.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    elif name.endswith(".zst"):
        import zstandard
        with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as f:
            for d in docs: f.write((json.dumps({"text": d}, ensure_ascii=False) + "\n").encode())
    elif name.endswith(".parquet"):
        import pyarrow as pa, pyarrow.parquet as pq
        pq.write_table(pa.table({"text": docs}), path, row_group_size=20000)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(d.replace("\n", " ") + "\n\n" for d in docs)
    print(f"{name}: {len(docs)} documents, {written / 2**20:.0f} MB of text, file {os.path.getsize(path) / 2**20:.0f} MB", flush=True)
