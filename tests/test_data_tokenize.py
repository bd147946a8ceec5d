"""`seallm-jax data tokenize`: documents in = documents out (token-exact against the tokenizer), every input
format, the hash split, byte-identical stores after a SIGKILL and rerun and for any number of workers, and a
one-line error without a half-written store for each kind of bad input."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seallm_jax.cli import main
from seallm_jax.data.corpus import load_corpus, load_files, split_of
from seallm_jax.data.store import TokenStore
from seallm_jax.data.tokenize import ensure_store, split_long_text, tokenize_files

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def tokenizer():
    from seallm_jax.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def records():
    """Real Thai text from the shipped corpus, and two long documents the tokenizer gets in pieces."""
    docs = [{"id": doc.id, "text": doc.text} for doc in load_corpus(None, ["th"])["th"][:400]]
    long_text = " ".join(doc["text"] for doc in docs[:200])
    docs.append({"id": "long-spaces", "text": long_text})
    docs.append({"id": "long-lines", "text": "\n".join(doc["text"] for doc in docs[200:400])})
    return docs


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return str(path)


def store_files(path):
    """{relative path: bytes} of every file of a store directory."""
    root = Path(path)
    return {str(file.relative_to(root)): file.read_bytes() for file in sorted(root.rglob("*")) if file.is_file()}


def expected_documents(tokenizer, documents, split):
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return [tokenizer.encode(text, add_special_tokens=False) + [eos] for doc_id, text in documents
            if split_of(doc_id) == split]


def store_documents(store, language, split):
    array = store.documents(language, split)
    return [array.document(index).tolist() for index in range(len(array))]


def test_round_trip_is_token_exact_and_split_by_hash(tmp_path, tokenizer, records):
    path = write_jsonl(tmp_path / "th.jsonl", records)
    store = tokenize_files({"th": path}, tmp_path / "store", workers=1, chunk_bytes=20_000, piece_chars=500,
                           tokenizer=tokenizer)
    assert store.languages == ["th"]
    documents = [(record["id"], record["text"]) for record in records]
    for split in SPLITS:
        assert store_documents(store, "th", split) == expected_documents(tokenizer, documents, split)
    # The held-out share is load_files' validation split, document for document.
    validation = load_files({"th": path}, split="validation")["th"]
    assert len(validation) == store.documents("th", "validation").num_documents > 0
    manifest = store.manifest
    assert manifest["languages"]["th"]["sources"][0]["bytes"] == os.path.getsize(path)
    assert manifest["languages"]["th"]["sources"][0]["documents"] == len(records)
    assert len(manifest["languages"]["th"]["splits"]["train"]["shards"]) > 3
    assert manifest["tokenizer"]["name"] == "qwen2" and manifest["tokenizer"]["eos_id"] == 151643
    TokenStore.open(store.path, verify=True)


def test_long_documents_are_cut_where_tokens_do_not_change(tokenizer, records):
    text = records[-2]["text"] + "\n" + records[-1]["text"]
    pieces = split_long_text(text, 300)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 300 and len(pieces) > 10
    whole = tokenizer.encode(text, add_special_tokens=False)
    assert sum((tokenizer.encode(piece, add_special_tokens=False) for piece in pieces), []) == whole
    # Without spaces (Chinese): cut before punctuation, still exact.
    chinese = "这是一个测试。" * 200
    pieces = split_long_text(chinese, 100)
    assert "".join(pieces) == chinese and len(pieces) > 10
    assert sum((tokenizer.encode(piece, add_special_tokens=False) for piece in pieces), []) == \
        tokenizer.encode(chinese, add_special_tokens=False)


def test_every_input_format(tmp_path, tokenizer, records):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    records = records[:120]
    plain = write_jsonl(tmp_path / "th.jsonl", records)
    content = Path(plain).read_bytes()
    with gzip.open(tmp_path / "th.jsonl.gz", "wb") as handle:
        handle.write(content)
    (tmp_path / "th.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(content))
    pq.write_table(pa.table({"id": [r["id"] for r in records], "body": [r["text"] for r in records]}),
                   tmp_path / "th.parquet", row_group_size=50)
    lines = [" ".join(r["text"].split()) for r in records]
    (tmp_path / "th.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "para.txt").write_text("\n\n  \n".join(f"{line}\n{line}" for line in lines[:30]), encoding="utf-8")

    reference = None
    for name in ("th.jsonl", "th.jsonl.gz", "th.jsonl.zst"):
        store = tokenize_files({"th": str(tmp_path / name)}, tmp_path / f"out-{name}", workers=1, chunk_bytes=5000,
                               tokenizer=tokenizer)
        shards = {key: value for key, value in store_files(store.path).items() if key != "manifest.json"}
        assert reference is None or shards == reference, name  # same records, same shards
        reference = shards
    store = tokenize_files({"th": str(tmp_path / "th.parquet")}, tmp_path / "out-parquet", workers=1,
                           chunk_bytes=5000, text_field="body", tokenizer=tokenizer)
    documents = [(record["id"], record["text"]) for record in records]
    for split in SPLITS:  # Parquet chunks count text, not file bytes: same documents, other shard cuts
        assert store_documents(store, "th", split) == expected_documents(tokenizer, documents, split)

    documents = [(f"th.txt:{number}", line) for number, line in enumerate(lines, start=1)]
    store = tokenize_files({"th": str(tmp_path / "th.txt")}, tmp_path / "out-txt", workers=1, chunk_bytes=5000,
                           tokenizer=tokenizer)
    for split in SPLITS:
        assert store_documents(store, "th", split) == expected_documents(tokenizer, documents, split)
    documents = [(f"para.txt:{1 + 4 * index}", f"{line}\n{line}") for index, line in enumerate(lines[:30])]
    store = tokenize_files({"th": str(tmp_path / "para.txt")}, tmp_path / "out-para", workers=1, chunk_bytes=3000,
                           text_unit="paragraph", tokenizer=tokenizer)
    for split in SPLITS:
        assert store_documents(store, "th", split) == expected_documents(tokenizer, documents, split)


def test_several_files_per_language_and_languages(tmp_path, tokenizer, records):
    first = write_jsonl(tmp_path / "a.jsonl", records[:50])
    second = write_jsonl(tmp_path / "b.jsonl", records[50:90])
    vietnamese = write_jsonl(tmp_path / "vi.jsonl", [{"text": doc.text} for doc in load_corpus(None, ["vi"])["vi"][:60]])
    assert main(["data", "tokenize", f"th={first}", f"vi={vietnamese}", f"th={second}", "--out",
                 str(tmp_path / "store"), "--workers", "1", "--no-progress"]) == 0
    store = TokenStore.open(tmp_path / "store")
    assert store.languages == ["vi", "th"]  # the project's language order
    documents = [(r["id"], r["text"]) for r in records[:90]]
    assert store_documents(store, "th", "train") == expected_documents(tokenizer, documents, "train")
    assert [s["path"] for s in store.manifest["languages"]["th"]["sources"]] == [first, second]


def test_workers_do_not_change_the_store(tmp_path, tokenizer, records):
    path = write_jsonl(tmp_path / "th.jsonl", records)
    one = tokenize_files({"th": path}, tmp_path / "one", workers=1, chunk_bytes=30_000, tokenizer=tokenizer)
    two = tokenize_files({"th": path}, tmp_path / "two", workers=2, chunk_bytes=30_000, tokenizer=tokenizer)
    assert store_files(one.path) == store_files(two.path)
    # Asked again, a finished store is kept as it is.
    again = tokenize_files({"th": path}, tmp_path / "two", workers=2, chunk_bytes=30_000, tokenizer=tokenizer)
    assert again.fingerprint == two.fingerprint


def test_killed_and_rerun_gives_a_byte_identical_store(tmp_path, tokenizer, records):
    path = write_jsonl(tmp_path / "th.jsonl", records * 15)  # ~180 chunks: seconds of work to interrupt
    reference = tokenize_files({"th": path}, tmp_path / "reference", workers=1, chunk_bytes=20_000,
                               tokenizer=tokenizer)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "seallm_jax.cli", "data", "tokenize", f"th={path}", "--out", str(out),
               "--workers", "2", "--chunk-mb", "0.02", "--no-progress"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    progress = out / ".progress"
    while time.time() < deadline and len(list(progress.glob("th-*.json"))) < 3 and process.poll() is None:
        time.sleep(0.01)
    import psutil

    workers = psutil.Process(process.pid).children(recursive=True)
    os.kill(process.pid, signal.SIGKILL)  # the command alone, as the OOM killer does: its workers must follow
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    gone, alive = psutil.wait_procs(workers, timeout=20)
    for worker in alive:
        worker.kill()
    assert workers and not alive, f"{len(alive)} of {len(workers)} workers outlived the killed command"
    done = sorted(progress.glob("th-*.json"))
    assert 3 <= len(done) < len(reference.manifest["languages"]["th"]["splits"]["train"]["shards"])
    assert not (out / "manifest.json").exists()
    with pytest.raises(Exception, match="did not finish"):
        TokenStore.open(out)
    numbers = [json.loads(record.read_text())["number"] for record in done]
    kept = {file: file.stat().st_mtime_ns for number in numbers for file in (out / "th").glob(f"*-{number:05d}.*")}
    resumed = tokenize_files({"th": path}, out, workers=1, chunk_bytes=20_000, tokenizer=tokenizer)
    assert store_files(resumed.path) == store_files(reference.path)
    assert kept and all(file.stat().st_mtime_ns == mtime for file, mtime in kept.items())  # not redone


def test_unfinished_store_of_other_inputs_is_replaced(tmp_path, tokenizer, records):
    path = write_jsonl(tmp_path / "th.jsonl", records[:60])
    reference = tokenize_files({"th": path}, tmp_path / "reference", workers=1, tokenizer=tokenizer)
    out = tmp_path / "store"
    (out / ".progress").mkdir(parents=True)
    (out / ".progress" / "run.json").write_text(json.dumps({"key": "an older command"}))
    (out / "th").mkdir()
    (out / "th" / "train-00099.bin").write_bytes(b"stale")
    tokenize_files({"th": path}, out, workers=1, tokenizer=tokenizer)
    assert store_files(out) == store_files(reference.path)


def run_cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", ["empty", "blank", "malformed", "surrogate", "language", "missing", "field", "mixed"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, records, case):
    path = tmp_path / "th.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in records[:30]]
    spec = f"th={path}"
    if case == "empty":
        path.write_text("")
        expected = "th.jsonl' is empty"
    elif case == "blank":
        path.write_text("\n".join([json.dumps({"text": "  "})] * 3) + "\n")
        expected = "th.jsonl: empty source, no documents found"
    elif case == "malformed":
        lines[16] = lines[16][:-5]
        path.write_text("\n".join(lines) + "\n")
        expected = "th.jsonl:17: malformed JSON line"
    elif case == "surrogate":
        lines[20] = '{"text": "ok \\ud83d\\ude00 then \\ud800 alone"}'  # a pair is fine, a lone half is not
        path.write_text("\n".join(lines) + "\n")
        expected = "th.jsonl:21: the text holds a lone surrogate escape (\\ud800)"
    elif case == "language":
        write_jsonl(path, records[:3])
        spec = f"xx={path}"
        expected = "unknown language code 'xx'; known codes: en, zh"
    elif case == "missing":
        spec = f"th={tmp_path / 'nowhere.jsonl'}"
        expected = "nowhere.jsonl' does not exist"
    elif case == "field":
        lines[9] = json.dumps({"content": "x"})
        path.write_text("\n".join(lines) + "\n")
        expected = "th.jsonl:10: missing string field 'text'"
    else:
        lines[4] = json.dumps({"text": "xin chào", "language": "vi"}, ensure_ascii=False)
        path.write_text("\n".join(lines) + "\n")
        expected = "th.jsonl:5: a 'vi' record in a file given as th="
    out = tmp_path / "store"
    code, err = run_cli(["data", "tokenize", spec, "--out", str(out), "--workers", "1", "--chunk-mb", "0.001",
                         "--no-progress"], capsys)
    assert code == 2
    assert err.startswith("seallm-jax data tokenize: error: ") and expected in err and "\n" not in err
    assert not out.exists()


def test_damaged_or_foreign_output_is_refused(tmp_path, capsys, tokenizer, records):
    path = write_jsonl(tmp_path / "th.jsonl", records[:50])
    store = tokenize_files({"th": path}, tmp_path / "store", workers=1, tokenizer=tokenizer)
    shard = Path(store.path) / "th" / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    code, err = run_cli(["data", "tokenize", f"th={path}", "--out", store.path, "--no-progress"], capsys)
    assert code == 2 and "train-00000.bin" in err and "truncated" in err
    assert shard.exists()  # a store the user has is never deleted
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, err = run_cli(["data", "tokenize", f"th={path}", "--out", str(other), "--no-progress"], capsys)
    assert code == 2 and "not a token store" in err and (other / "notes.txt").exists()


def test_ensure_store_tokenizes_once_and_follows_file_changes(tmp_path, tokenizer, records):
    path = write_jsonl(tmp_path / "th.jsonl", records[:40])
    first = ensure_store({"th": [path]}, cache_dir=tmp_path / "cache", workers=1, tokenizer=tokenizer)
    again = ensure_store({"th": [path]}, cache_dir=tmp_path / "cache", workers=1, tokenizer=tokenizer)
    assert again.path == first.path and again.fingerprint == first.fingerprint
    shard = Path(first.path) / "th" / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-4])  # a damaged cache entry is rebuilt
    assert ensure_store({"th": [path]}, cache_dir=tmp_path / "cache", workers=1, tokenizer=tokenizer).path == first.path
    TokenStore.open(first.path, verify=True)
    write_jsonl(path, records[:41])
    changed = ensure_store({"th": [path]}, cache_dir=tmp_path / "cache", workers=1, tokenizer=tokenizer)
    assert changed.path != first.path and changed.documents("th").num_documents + \
        changed.documents("th", "validation").num_documents + changed.documents("th", "test").num_documents == 41


def test_shipped_corpus_store_has_the_corpus_splits(tokenizer):
    from seallm_jax.data.tokenize import shipped_corpus_store

    store = shipped_corpus_store(tokenizer)  # the user cache: tokenized once per machine
    corpus = load_corpus("validation", ["vi"])["vi"]
    assert store_documents(store, "vi", "validation") == [
        tokenizer.encode(doc.text, add_special_tokens=False) + [151643] for doc in corpus]
    assert shipped_corpus_store(tokenizer).path == store.path
