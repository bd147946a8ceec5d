"""Token stores: documents and token ranges read back across shards, loss masks, the size and checksum
checks at open, and the errors for incomplete stores and missing languages."""
import json
import os

import numpy as np
import pytest

from seallm_jax.data.store import (MANIFEST, TokenStore, build_manifest, tokenizer_fingerprint, write_manifest,
                                   write_shard, write_store)
from seallm_jax.errors import DataFormatError, MissingDataError, UnknownLanguageError

EOS = 7
ENTRY = {"fingerprint": "0" * 64, "name": "test", "vocab_size": 100, "eos_id": EOS}


def documents(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 100, size=int(rng.integers(1, 9))).tolist() for _ in range(count)]


@pytest.fixture()
def store(tmp_path):
    docs = {"th": {"train": documents(11), "validation": documents(3, seed=1)}, "vi": {"train": documents(4, 2)}}
    return write_store(tmp_path / "store", docs, tokenizer_entry=ENTRY, shard_documents=4), docs


def test_documents_and_token_ranges_across_shards(store):
    store, docs = store
    assert store.languages == ["vi", "th"] or store.languages == ["th", "vi"]
    assert store.eos_id == EOS and store.vocab_size == 100 and len(store.fingerprint) == 64
    th = store.documents("th")
    assert th.num_documents == 11 and len(th) == 11
    expected = np.concatenate([doc + [EOS] for doc in docs["th"]["train"]])
    assert th.num_tokens == len(expected)
    assert len(store.manifest["languages"]["th"]["splits"]["train"]["shards"]) == 3
    for index, doc in enumerate(docs["th"]["train"]):
        np.testing.assert_array_equal(th.document(index), doc + [EOS])
        np.testing.assert_array_equal(th[index], doc + [EOS])
        assert th.tokens(int(th.offsets[index]), int(th.offsets[index + 1])).tolist() == doc + [EOS]
    assert th.offsets.dtype == np.uint64 and th.offsets[0] == 0 and th.offsets[-1] == th.num_tokens
    # Every range, including ones crossing shard boundaries, reads the concatenation.
    for start in range(0, th.num_tokens, 3):
        for stop in (start, start + 1, start + 17, th.num_tokens):
            stop = min(stop, th.num_tokens)
            np.testing.assert_array_equal(th.tokens(start, stop), expected[start:stop])
    assert th.tokens(0, th.num_tokens).dtype == np.uint32
    assert th.loss_mask(0, 5) is None
    with pytest.raises(IndexError):
        th.tokens(0, th.num_tokens + 1)
    assert store.documents("th", "validation").num_documents == 3
    assert store.documents("vi", "validation").num_documents == 0
    assert store.documents("vi", "validation").tokens(0, 0).size == 0


def test_loss_mask_shards(tmp_path):
    tokens = np.arange(10, dtype=np.uint32)
    mask = (tokens % 2).astype(np.uint8)
    shard = write_shard(tmp_path, "th/train-00000", tokens, [0, 4, 10], mask=mask)
    write_manifest(tmp_path, build_manifest(ENTRY, {"th": {"splits": {"train": [shard]}}}))
    th = TokenStore.open(tmp_path, verify=True).documents("th")
    np.testing.assert_array_equal(th.loss_mask(2, 9), mask[2:9])
    np.testing.assert_array_equal(th.document(1), tokens[4:])


def test_truncated_or_corrupted_token_file_is_refused(store):
    store, _ = store
    shard = os.path.join(store.path, "th", "train-00001.bin")
    data = open(shard, "rb").read()
    with open(shard, "wb") as handle:
        handle.write(data[:-4])
    with pytest.raises(DataFormatError, match=r"train-00001\.bin: .* bytes, expected .*truncated"):
        TokenStore.open(store.path)
    with open(shard, "wb") as handle:  # same size, different bytes: only the checksum sees it
        handle.write(bytes([data[0] ^ 1]) + data[1:])
    TokenStore.open(store.path)
    with pytest.raises(DataFormatError, match=r"train-00001\.bin: sha256 does not match"):
        TokenStore.open(store.path, verify=True)
    os.remove(shard)
    with pytest.raises(DataFormatError, match=r"train-00001\.bin: missing"):
        TokenStore.open(store.path)


def test_incomplete_edited_or_missing_store_is_refused(store, tmp_path):
    store, _ = store
    manifest_path = os.path.join(store.path, MANIFEST)
    manifest = json.load(open(manifest_path))
    manifest["languages"]["th"]["splits"]["train"]["tokens"] += 1
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(DataFormatError, match="fingerprint"):
        TokenStore.open(store.path)
    os.remove(manifest_path)
    with pytest.raises(DataFormatError, match="manifest.json does not exist"):
        TokenStore.open(store.path)
    with pytest.raises(MissingDataError):
        TokenStore.open(tmp_path / "nowhere")


def test_unknown_language_names_the_store_languages(store):
    store, _ = store
    with pytest.raises(UnknownLanguageError, match="has no language 'km'; it has: .*th"):
        store.documents("km")


def test_tokenizer_fingerprint_tells_tokenizers_apart():
    from seallm_jax.tokenizer import VocabularySubset, load_tokenizer

    qwen2 = load_tokenizer()
    fingerprint = tokenizer_fingerprint(qwen2)
    assert fingerprint == tokenizer_fingerprint(load_tokenizer()) and len(fingerprint) == 64
    subset = VocabularySubset.from_texts(qwen2, ["สวัสดี", "xin chào"])
    assert tokenizer_fingerprint(subset) not in (fingerprint, tokenizer_fingerprint(
        VocabularySubset.from_texts(qwen2, ["hello"])))
