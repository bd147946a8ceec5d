"""The token-store loader: batches as a pure function of the step (exact resume, any process count),
realised mixture shares, packing by document boundaries, sequential passes, and resume checks."""
import time

import numpy as np
import pytest

from seallm_jax.data.loader import (DataChangedError, SequentialLoader, TokenLoader, fill_row, empty_batch,
                                    permute)

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


def arrays(counts, seed=0):
    return {language: [MemoryArray(random_documents(count, seed + index, base=100 * (index + 1)))]
            for index, (language, count) in enumerate(counts.items())}


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


def test_resumed_batches_equal_an_uninterrupted_run():
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
def test_any_number_of_processes_builds_the_same_global_batches(processes):
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


def test_realised_mixture_shares_match_the_weights_in_every_block():
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


def test_an_epoch_visits_every_window_once_and_the_next_epoch_reorders_them():
    data = loader(arrays({"th": 80}), {"th": 1.0}, global_batch_size=4)
    count = data.windows["th"].count
    plans = [plan for step in range(2 * count // 4) for plan in data.row_plan(step)]
    first, second = [w for _, e, w in plans if e == 0], [w for _, e, w in plans if e == 1]
    assert sorted(first) == list(range(count)) and sorted(second) == list(range(count))
    assert first != second
    assert data.epochs(2 * count // 4)["th"] == pytest.approx(2.0)


def test_resume_at_step_a_million_costs_no_more_than_at_step_ten():
    data = loader(arrays({"th": 60, "vi": 30}), {"th": 0.5, "vi": 0.5})
    state = data.state()
    state["step"] = 10 ** 6
    started = time.perf_counter()
    data.restore(state)
    next(data)
    assert time.perf_counter() - started < 0.5
    assert data.epochs()["th"] > 1


def test_resume_with_changed_data_names_what_changed_unless_allowed():
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
