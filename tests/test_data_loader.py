"""The token-store loader: batches as a pure function of the step (exact resume, any process count),
realised mixture shares, packing by document boundaries, sequential passes, and resume checks."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from seallm_jax.data.loader import (DataChangedError, SequentialLoader, TokenLoader, fill_row, empty_batch,
                                    permute)
from seallm_jax.data.store import write_store
from seallm_jax.data.tokenize import tokenize_files
from test_lsn_cli import tiny  # noqa: F401 - the tiny model and files of the lsn command tests
from train_helpers import ROOT, TINY, cli_env, metrics

SEP = 1


class MemoryArray:
    """An in-memory stand-in for a store's DocumentArray: documents end with SEP."""

    def __init__(self, documents, mask=None):
        self.flat = np.concatenate([np.asarray(list(doc) + [SEP], np.uint32) for doc in documents])
        lengths = [len(doc) + 1 for doc in documents]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
        self.num_documents, self.num_tokens = len(documents), int(self.offsets[-1])
        self.mask = None if mask is None else np.asarray(mask, np.uint8)

    def tokens(self, start, stop):
        return self.flat[start:stop]

    def loss_mask(self, start, stop):
        return None if self.mask is None else self.mask[start:stop]


def random_documents(count, seed, low=2, high=40, base=10):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(base, base + 1000, int(rng.integers(low, high)))) for _ in range(count)]


TOKENIZER = {"fingerprint": "0" * 64, "name": "test", "vocab_size": 2000, "eos_id": SEP}
_STORES = iter(range(10 ** 6))


def make_store(root, counts, seed=0, tokenizer=TOKENIZER, **documents):
    """A real token store of random documents, cut into shards of 7 documents (rows cross shards)."""
    documents = documents or {language: {"train": random_documents(count, seed + index, base=100 * (index + 1)),
                                         "validation": random_documents(5, seed + 50 + index)}
                              for index, (language, count) in enumerate(counts.items())}
    return write_store(os.path.join(root, f"store-{next(_STORES)}"), documents, tokenizer_entry=tokenizer,
                       shard_documents=7)


@pytest.fixture
def arrays(tmp_path):
    def make(counts, seed=0):
        store = make_store(tmp_path, counts, seed)
        return {language: [store.documents(language)] for language in counts}
    return make


def loader(sources, weights, **kwargs):
    defaults = dict(seq_len=16, global_batch_size=8, seed=3, block_rows=32, pad_id=0)
    return TokenLoader(sources, weights, **{**defaults, **kwargs})


def test_permutation_is_a_bijection_for_every_size_and_differs_by_key():
    for n in (1, 2, 3, 7, 64, 100, 1000, 4097):
        image = permute(np.arange(n), n, key=11)
        assert sorted(image.tolist()) == list(range(n))
    assert not np.array_equal(permute(np.arange(1000), 1000, 1), permute(np.arange(1000), 1000, 2))
    assert not np.array_equal(permute(np.arange(1000), 1000, 1), np.arange(1000))


def test_rows_restart_segments_and_positions_at_document_boundaries():
    array = MemoryArray([[10, 11, 12], [20, 21], [30, 31, 32, 33]])  # flat: 10 11 12 1 20 21 1 30 31 32 33 1
    batch = empty_batch(1, 8, 0)
    fill_row(batch, 0, array, [(2, 11)])  # tokens 12 1 20 21 1 30 31 32 33
    assert batch["input_ids"][0].tolist() == [12, 1, 20, 21, 1, 30, 31, 32]
    assert batch["targets"][0].tolist() == [1, 20, 21, 1, 30, 31, 32, 33]
    assert batch["segment_ids"][0].tolist() == [1, 1, 2, 2, 2, 3, 3, 3]
    assert batch["positions"][0].tolist() == [0, 1, 0, 1, 2, 0, 1, 2]
    # The separator is predicted inside its document; the next document's first token is not.
    assert batch["loss_mask"][0].tolist() == [1, 0, 1, 1, 0, 1, 1, 1]


def test_the_stores_loss_mask_selects_the_counted_targets():
    array = MemoryArray([[10, 11, 12, 13]], mask=[0, 0, 1, 1, 1])
    batch = empty_batch(1, 4, 0)
    fill_row(batch, 0, array, [(0, 5)])
    assert batch["loss_mask"][0].tolist() == [0, 1, 1, 1]


def test_resumed_batches_equal_an_uninterrupted_run(arrays):
    sources = arrays({"th": 60, "vi": 30})
    whole = loader(sources, {"th": 0.6, "vi": 0.4})
    expected = [next(whole) for _ in range(12)]
    first = loader(sources, {"th": 0.6, "vi": 0.4})
    for _ in range(5):
        next(first)
    resumed = loader(sources, {"th": 0.6, "vi": 0.4})
    resumed.restore(first.state())
    for step in range(5, 12):
        got = next(resumed)
        for key in got:
            np.testing.assert_array_equal(got[key], expected[step][key], err_msg=f"{key} at step {step}")


@pytest.mark.parametrize("processes", [2, 4])
def test_any_number_of_processes_builds_the_same_global_batches(processes, arrays):
    sources = arrays({"th": 50, "vi": 40, "id": 20})
    weights = {"th": 0.5, "vi": 0.3, "id": 0.2}
    single = loader(sources, weights)
    rows = 8 // processes
    parts = [loader(sources, weights, row_start=p * rows, row_stop=(p + 1) * rows) for p in range(processes)]
    for _ in range(6):
        whole = next(single)
        pieces = [next(part) for part in parts]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([piece[key] for piece in pieces]), whole[key])


def test_realised_mixture_shares_match_the_weights_in_every_block(arrays):
    sources = arrays({"th": 40, "vi": 40, "id": 40})
    weights = {"th": 0.5, "vi": 0.3, "id": 0.2}
    data = loader(sources, weights, global_batch_size=8, block_rows=40)
    assert data.block_rows == 40
    steps_per_block = data.block_rows // data.global_batch_size
    for block in range(4):
        languages = [language for step in range(block * steps_per_block, (block + 1) * steps_per_block)
                     for language, _, _ in data.row_plan(step)]
        for language, weight in weights.items():
            assert abs(languages.count(language) / len(languages) - weight) <= 1 / data.block_rows


def test_an_epoch_visits_every_window_once_and_the_next_epoch_reorders_them(arrays):
    data = loader(arrays({"th": 80}), {"th": 1.0}, global_batch_size=4)
    count = data.units["th"].count
    plans = [plan for step in range(2 * count // 4) for plan in data.row_plan(step)]
    first, second = [w for _, e, w in plans if e == 0], [w for _, e, w in plans if e == 1]
    assert sorted(first) == list(range(count)) and sorted(second) == list(range(count))
    assert first != second
    assert data.epochs(2 * count // 4)["th"] == pytest.approx(2.0)


def test_resume_at_step_a_million_costs_no_more_than_at_step_ten(arrays):
    data = loader(arrays({"th": 60, "vi": 30}), {"th": 0.5, "vi": 0.5})
    state = data.state()
    state["step"] = 10 ** 6
    started = time.perf_counter()
    data.restore(state)
    next(data)
    assert time.perf_counter() - started < 0.5
    assert data.epochs()["th"] > 1


def test_resume_with_changed_data_names_what_changed_unless_allowed(arrays):
    sources = arrays({"th": 60, "vi": 30})
    saved = loader(sources, {"th": 0.5, "vi": 0.5}, description={"stores": {"th": ["a"], "vi": ["b"]}})
    next(saved)
    changed = loader(sources, {"th": 0.7, "vi": 0.3}, description={"stores": {"th": ["a"], "vi": ["c"]}})
    with pytest.raises(DataChangedError, match=r"token store\(s\) of vi.*mixture weights"):
        changed.restore(saved.state())
    found = changed.restore(saved.state(), allow_changes=True)
    assert changed.step == 1 and len(found) == 2


def test_sequential_windows_cover_every_target_once_in_order():
    array = MemoryArray(random_documents(37, 5))
    tokens = array.flat
    for processes in (1, 2):
        rows = 4 // processes
        parts = [SequentialLoader([array], seq_len=16, global_batch_size=4, row_start=p * rows,
                                  row_stop=(p + 1) * rows) for p in range(processes)]
        batches = [np.concatenate([part[key] for part in pieces])
                   for pieces in zip(*parts) for key in ("input_ids", "targets", "segment_ids")]
        inputs = np.concatenate([b.reshape(-1) for b in batches[0::3]])
        segments = np.concatenate([b.reshape(-1) for b in batches[2::3]])
        assert inputs[segments > 0].tolist() == tokens[:-1].tolist()


def test_sequential_documents_keep_each_document_whole_in_one_row():
    documents = random_documents(25, 7, low=2, high=12)
    array = MemoryArray(documents)
    seen = []
    for batch in SequentialLoader([array], seq_len=16, global_batch_size=3, pack="documents"):
        for row in range(batch["input_ids"].shape[0]):
            for segment in range(1, int(batch["segment_ids"][row].max()) + 1):
                columns = batch["segment_ids"][row] == segment
                seen.append(batch["input_ids"][row][columns].tolist() + [int(batch["targets"][row][columns][-1])])
    assert seen == [doc + [SEP] for doc in documents]


# ---- training from a store: the run learns the store's text, and bad data is a one-line error -----------

@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """A user's Thai and Vietnamese JSON-lines files (text the shipped corpus holds), a vocabulary subset
    of that text as the model's tokenizer (a tiny embedding), and the store of the files."""
    import json

    from seallm_jax.data import load_corpus
    from seallm_jax.tokenizer import load_tokenizer
    from seallm_jax.tokenizer.vocabulary import VocabularySubset

    root = tmp_path_factory.mktemp("user")
    files = {}
    for language, count in (("th", 600), ("vi", 300)):
        documents = load_corpus(None, [language])[language][:count]
        path = root / f"my_{language}.jsonl"
        path.write_text("".join(json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n"
                                for doc in documents), encoding="utf-8")
        files[language] = [str(path)]
    texts = [json.loads(line)["text"] for paths in files.values() for line in open(paths[0], encoding="utf-8")]
    VocabularySubset.from_texts(load_tokenizer(), texts).save_pretrained(root / "tokenizer")
    tokenizer = load_tokenizer(root / "tokenizer")
    store = tokenize_files(files, root / "store", tokenizer=tokenizer, workers=1)
    return {"root": root, "files": files, "tokenizer": str(root / "tokenizer"), "store": store,
            "tokenizer_object": tokenizer}


def run_cli(capsys, *argv):
    from seallm_jax.cli import main

    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr().err.strip()


def tokens_run(workdir, user_data, *overrides):
    return ["train", "--config", TINY, "--workdir", workdir, "--config.train.progress_bar=False",
            "--config.data.source=tokens", f"--config.data.path={user_data['store'].path}",
            f"--config.data.tokenizer={user_data['tokenizer']}", *overrides]


@pytest.fixture(scope="module")
def trained(user_data, tmp_path_factory):
    """`seallm-jax train --config.data.source=corpus --config.data.files=my_th.jsonl --config.data.languages=th`
    for 40 steps, held-out loss (the file's validation documents) every 10."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    argv = ["train", "--config", TINY, "--workdir", workdir, "--config.train.progress_bar=False",
            "--config.data.source=corpus", f"--config.data.files={user_data['files']['th'][0]}",
            "--config.data.languages=th", f"--config.data.tokenizer={user_data['tokenizer']}",
            "--config.train.steps=40", "--config.train.eval_every=10", "--config.checkpoint.every=20"]
    process = subprocess.run([sys.executable, "-m", "seallm_jax.cli", *map(str, argv)], env=cli_env(1), cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    return workdir, process.stdout + process.stderr


def test_training_on_a_users_jsonl_file_lowers_the_heldout_loss_of_its_text(trained):
    workdir, out = trained
    records = metrics(workdir)
    held_out = [record["eval_loss"] for record in records if "eval_loss" in record]
    assert len(held_out) == 4 and held_out[-1] < held_out[0] - 0.3, held_out
    assert "model.vocab_size 256 -> " in out  # the model got an embedding row for every id of the tokenizer
    assert any("data_epochs_th" in record for record in records)  # the file repeats within 40 steps


@pytest.mark.parametrize("override, culprit", [
    ("--config.data.languages=th,lo", "no data for lo in the token store"),
    ("--config.data.weights=th=0.5,lo=0.5", "weight for lo"),
    ("--config.data.path=", "needs --config.data.path=STORE"),
    ("--config.data.path={root}/nowhere", "nowhere' does not exist"),
    ("--config.data.files=my_th.jsonl", "with source='tokens' give token stores in config.data.path"),
    ("--config.data.source=corpus", "config.data.path is read by source 'tokens' only"),
])
def test_bad_token_data_is_a_one_line_error(user_data, tmp_path, capsys, override, culprit):
    argv = tokens_run(tmp_path / "run", user_data, override.format(root=tmp_path))
    code, err = run_cli(capsys, *argv)
    assert code == 2 and len(err.splitlines()) == 1 and culprit in err, err
    assert not (tmp_path / "run").exists()


def test_a_store_of_another_tokenizer_is_refused(user_data, tmp_path, capsys):
    other = make_store(tmp_path, {"th": 20})
    code, err = run_cli(capsys, *tokens_run(tmp_path / "run", user_data, f"--config.data.path={other.path}"))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"token store {other.path} was built with another tokenizer (test)" in err


def test_resume_with_a_changed_store_names_it(trained, user_data, tmp_path, capsys):
    import shutil

    from seallm_jax.data.tokenize import ensure_store

    workdir, _ = trained
    # The run read the file's cached store: the same store given as --config.data.path resumes
    # (fingerprints, not paths, identify data) ...
    cached = ensure_store({"th": user_data["files"]["th"]}, tokenizer=user_data["tokenizer_object"])
    copy = str(tmp_path / "store")
    shutil.copytree(cached.path, copy)
    resumed = tmp_path / "run"
    shutil.copytree(workdir, resumed)
    argv = tokens_run(resumed, user_data, "--config.train.eval_every=0", "--config.data.languages=th")
    code, err = run_cli(capsys, *argv, f"--config.data.path={copy}", "--config.train.steps=41")
    assert code == 0, err
    # ... one with other text does not.
    documents = {"th": {split: [doc[:-1].tolist() for doc in cached.documents("th", split)]
                        for split in ("train", "validation")}}
    documents["th"]["train"] = documents["th"]["train"][:-1]
    shutil.rmtree(copy)
    write_store(copy, documents, tokenizer_entry=cached.manifest["tokenizer"])
    code, err = run_cli(capsys, *argv, f"--config.data.path={copy}", "--config.train.steps=42")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "the token store(s) of th changed" in err and "allow_data_changes" in err


# ---- lsn stats reads a store like the file it was made from ----------------------------------------------

def test_lsn_stats_from_a_store_equal_those_from_its_file(tiny, tmp_path):
    from seallm_jax.cli import main
    from seallm_jax.data.corpus import load_documents
    from seallm_jax.lsn.stats import NeuronStats
    from seallm_jax.tokenizer import load_tokenizer

    root, _, model_dir, files = tiny
    tokenizer = load_tokenizer(model_dir)
    documents = [doc.text for doc in load_documents(files["th"], "th")]
    store = write_store(tmp_path / "store2", {"th": {"train": [encoding.ids for encoding in tokenizer.backend_tokenizer.encode_batch(
        documents, add_special_tokens=False)]}}, tokenizer=tokenizer)
    common = ["--model", str(model_dir), "--languages", "th", "--seq-len", "40", "--batch-size", "2", "--no-progress"]
    assert main(["lsn", "stats", *common, f"--data=th={files['th']}", "--out", str(tmp_path / "file.npz")]) == 0
    assert main(["lsn", "stats", *common, f"--data=th={store.path}", "--out", str(tmp_path / "store.npz")]) == 0
    from_file, from_store = NeuronStats.load(tmp_path / "file.npz"), NeuronStats.load(tmp_path / "store.npz")
    assert int(from_store.token_count.sum()) == int(from_file.token_count.sum()) > 0
    for name in ("token_count", "document_count", "active_count", "topk_count"):
        np.testing.assert_array_equal(getattr(from_store, name), getattr(from_file, name), err_msg=name)
    np.testing.assert_allclose(from_store.importance_sum, from_file.importance_sum, rtol=1e-6)


def test_whole_batches_of_windows_are_packed_like_single_rows(tmp_path):
    from seallm_jax.data.loader import fill_windows

    documents = random_documents(40, 9, low=1, high=30)
    flat_length = sum(len(doc) + 1 for doc in documents)
    mask = np.random.default_rng(2).integers(0, 2, flat_length)
    for array in (MemoryArray(documents), MemoryArray(documents, mask=mask)):
        starts = np.asarray([0, 5, 17, 100, flat_length - 10, flat_length - 3])
        stops = np.minimum(starts + 17, flat_length)
        expected, got = empty_batch(len(starts), 16, 7), empty_batch(len(starts), 16, 7)
        for row, (start, stop) in enumerate(zip(starts, stops)):
            fill_row(expected, row, array, [(int(start), int(stop))])
        fill_windows(got, np.arange(len(starts)), array, starts, stops)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.slow
def test_two_processes_train_on_a_store_like_one_and_resume_exactly(user_data, tmp_path):
    """2 processes x 4 devices read their own rows of the store's batches: the losses of 1 process x 8
    devices, also across a resume of the two-process run."""
    import os

    def launch(workdir, processes, devices, steps):
        command = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num-processes", str(processes),
                   "--devices-per-process", str(devices), "--", sys.executable, "-m", "seallm_jax.cli",
                   *map(str, tokens_run(workdir, user_data, f"--config.train.steps={steps}",
                                        "--config.train.log_every=1", "--config.train.eval_every=2",
                                        "--config.checkpoint.every=2", "--config.optimizer.decay_steps=6"))]
        return subprocess.Popen(command, env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def finish_all(*processes):
        for process in processes:
            out = process.communicate(timeout=900)[0]
            assert process.returncode == 0, out[-3000:]

    two, one = tmp_path / "two", tmp_path / "one"
    finish_all(launch(two, 2, 4, steps=4), launch(one, 1, 8, steps=6))
    finish_all(launch(two, 2, 4, steps=6))
    two_records, one_records = metrics(two), metrics(one)
    assert [r["step"] for r in two_records] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in two_records], [r["loss"] for r in one_records], rtol=1e-5)
    np.testing.assert_allclose([r["eval_loss"] for r in two_records if "eval_loss" in r],
                               [r["eval_loss"] for r in one_records if "eval_loss" in r], rtol=1e-5)


def test_a_saved_qwen2_tokenizer_reads_stores_of_the_built_in_one(tmp_path):
    """transformers loads a saved Qwen2 directory without BPE's ignore_merges flag; the ids are the same,
    so its stores are the model's (a store of another tokenizer still is not)."""
    from seallm_jax.data.loader import tokenizer_matches
    from seallm_jax.data.store import tokenizer_fingerprint
    from seallm_jax.tokenizer import load_tokenizer, save_tokenizer

    built_in = load_tokenizer()
    save_tokenizer(built_in, tmp_path / "qwen2")
    saved = load_tokenizer(tmp_path / "qwen2")
    assert tokenizer_matches(tokenizer_fingerprint(built_in), saved)
    assert tokenizer_matches(tokenizer_fingerprint(saved), built_in)
    assert not tokenizer_matches(TOKENIZER["fingerprint"], saved)
