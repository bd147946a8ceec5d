"""PackedStream (whole examples per row, as SFT packs conversations): segment ids, per-process shards,
exact resume and language-mix token shares. Pretraining text is read by the token loader (test_data_loader)."""
import json

import numpy as np
import pytest

from seallm_jax.data import Document, Example, ExampleSource, Mixture, mixture_weights
from seallm_jax.data.stream import PackedStream, build_mixture

EOS = 1


def char_encode(text):
    """A stand-in tokenizer: one token per character, so tests know every token."""
    return [ord(char) for char in text]


def make_corpus(counts, seed=0):
    rng = np.random.default_rng(seed)
    corpus = {}
    for language, count in counts.items():
        corpus[language] = [
            Document(f"{language}-{index}", language,
                     f"{language}{index}:" + "abcdefghij"[: int(rng.integers(1, 10))] * int(rng.integers(1, 4)))
            for index in range(count)]
    return corpus


def stream(corpus, *, seq_len=32, batch_size=4, **mixture_settings):
    """Every document as an example: its characters then EOS, every target counted."""
    examples = {language: [Example(char_encode(doc.text) + [EOS], [1.0] * (len(doc.text) + 1), language)
                           for doc in documents] for language, documents in corpus.items()}
    return PackedStream(build_mixture(examples, **mixture_settings), seq_len=seq_len, batch_size=batch_size, pad_id=0)


def segments(batch):
    """Each (row, segment) as its input tokens, in row order."""
    out = []
    for row in range(batch["segment_ids"].shape[0]):
        for segment in np.unique(batch["segment_ids"][row]):
            if segment:
                out.append(batch["input_ids"][row][batch["segment_ids"][row] == segment].tolist())
    return out


def test_batches_follow_the_data_contract():
    batch = next(stream(make_corpus({"th": 20})))
    assert set(batch) == {"input_ids", "targets", "loss_mask", "segment_ids", "positions"}
    assert all(array.shape == (4, 32) for array in batch.values())
    assert batch["input_ids"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
    assert batch["segment_ids"].dtype == np.int32 and batch["positions"].dtype == np.int32


def test_packing_segment_ids_positions_and_targets():
    corpus = {"vi": [Document("a", "vi", "abc"), Document("b", "vi", "defgh"), Document("c", "vi", "ij")]}
    packed = stream(corpus, seq_len=16, batch_size=1, max_epochs=1, shuffle=False)
    batch = next(packed)
    # "abc"+EOS gives 3 (input, target) pairs, "defgh"+EOS 5, "ij"+EOS 2; then padding.
    np.testing.assert_array_equal(batch["segment_ids"][0], [1] * 3 + [2] * 5 + [3] * 2 + [0] * 6)
    np.testing.assert_array_equal(batch["positions"][0][:10], [0, 1, 2, 0, 1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(batch["input_ids"][0][:3], char_encode("abc"))
    np.testing.assert_array_equal(batch["targets"][0][:3], char_encode("bc") + [EOS])
    np.testing.assert_array_equal(batch["targets"][0][3:8], char_encode("efgh") + [EOS])
    np.testing.assert_array_equal(batch["loss_mask"][0], [1] * 10 + [0] * 6)
    with pytest.raises(StopIteration):
        next(packed)


def test_an_example_longer_than_a_row_is_cut_into_row_sized_pieces():
    corpus = {"en": [Document("a", "en", "abcdefghijkl")]}  # 12 chars + EOS = 12 pairs
    packed = stream(corpus, seq_len=5, batch_size=3, max_epochs=1)
    batch = next(packed)
    np.testing.assert_array_equal(batch["segment_ids"], [[1] * 5, [1] * 5, [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(batch["positions"][1], np.arange(5))  # positions restart
    np.testing.assert_array_equal(batch["input_ids"][1], char_encode("fghij"))
    np.testing.assert_array_equal(batch["targets"][2][:2], char_encode("l") + [EOS])


def test_process_shares_are_disjoint_and_cover_the_data():
    corpus = make_corpus({"th": 37, "km": 23})
    seen = []
    for process_index in range(3):
        packed = stream(corpus, seq_len=64, process_index=process_index, process_count=3, max_epochs=1)
        seen.append([tuple(segment) for batch in packed for segment in segments(batch)])
    everything = sorted(tuple(char_encode(doc.text)) for docs in corpus.values() for doc in docs)
    for first in range(3):
        for second in range(first + 1, 3):
            assert not set(seen[first]) & set(seen[second])
    assert sorted(segment for share in seen for segment in share) == everything


def test_order_depends_on_seed_and_epoch_only():
    corpus = make_corpus({"th": 30, "vi": 30})
    first = [next(stream(corpus, seed=3))["input_ids"] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    other = next(stream(corpus, seed=4))["input_ids"]
    assert not np.array_equal(first[0], other)
    source = stream(corpus).mixture.sources["th"]
    assert not np.array_equal(source.epoch_order(0), source.epoch_order(1))


def test_resume_from_a_saved_position_gives_the_same_batches():
    corpus = make_corpus({"th": 25, "vi": 11, "lo": 7})
    reference = stream(corpus, seq_len=24, batch_size=2)
    for _ in range(7):  # several epochs of the small languages pass by
        next(reference)
    saved = json.loads(json.dumps(reference.state()))  # it must survive a JSON checkpoint
    expected = [next(reference) for _ in range(6)]

    resumed = stream(corpus, seq_len=24, batch_size=2)
    resumed.restore(saved)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert resumed.state() == reference.state()


def test_temperature_weights_follow_n_to_the_one_over_t():
    sizes = {"en": 8000, "th": 1000, "lo": 125}
    weights = mixture_weights(sizes, "temperature", temperature=3.0)
    raw = {language: size ** (1 / 3) for language, size in sizes.items()}
    for language in sizes:
        assert weights[language] == pytest.approx(raw[language] / sum(raw.values()))
    assert mixture_weights(sizes, "proportional")["en"] == pytest.approx(8000 / 9125)
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        mixture_weights({"xx": 3})
    with pytest.raises(ValueError, match="empty source"):
        mixture_weights({"th": 0})


def test_realized_token_shares_match_the_weights_within_two_points():
    rng = np.random.default_rng(0)
    # Languages with very different example lengths and sizes: token shares, not example counts, count.
    lengths = {"en": (5, 60), "th": (20, 200), "lo": (2, 8)}
    counts = {"en": 400, "th": 50, "lo": 900}
    examples = {}
    for language, count in counts.items():
        sizes = rng.integers(*lengths[language], size=count)
        examples[language] = [Example(list(range(size)), [1.0] * size, language) for size in sizes]
    weights = {"en": 0.5, "th": 0.3, "lo": 0.2}
    sources = {language: ExampleSource(language, items, seed=1) for language, items in examples.items()}
    packed = PackedStream(Mixture(sources, weights), seq_len=128, batch_size=8)
    for _ in range(60):
        next(packed)
    shares = packed.token_shares()
    for language, weight in weights.items():
        assert abs(shares[language] - weight) < 0.02, shares


def test_token_caps_stop_a_language():
    corpus = make_corpus({"th": 40, "vi": 40})
    packed = stream(corpus, weighting="uniform", token_caps={"th": 50}, seq_len=16)
    for _ in range(20):
        next(packed)
    assert packed.emitted_tokens["th"] < 50 + 40  # at most one example past the cap
    assert packed.emitted_tokens["vi"] > 200


def test_stream_rejects_unknown_languages_and_empty_sources():
    with pytest.raises(ValueError, match="known codes"):
        stream(make_corpus({"xx": 3}))
    with pytest.raises(ValueError, match="empty source"):
        stream({"th": []})
