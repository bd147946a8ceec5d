"""VocabularySubset: dense renumbering of the tokens a corpus uses, reversible, saved with the model."""
import pytest

from seallm_jax.tokenizer.vocabulary import UNKNOWN_ID, VocabularySubset
from seallm_jax.tokenizer import load_tokenizer

TEXTS = ["Hello, world!", "สวัสดีครับ ยินดีต้อนรับ", "Xin chào thế giới", "你好，世界"]


@pytest.fixture(scope="module")
def subset():
    return VocabularySubset.from_texts(load_tokenizer(), TEXTS)


def test_compact_ids_map_back_to_the_base_tokenizer(subset):
    base = subset.base_tokenizer
    for text in TEXTS:
        compact = subset.encode(text)
        assert max(compact) < len(subset) and UNKNOWN_ID not in compact
        assert subset.to_base(compact) == base.encode(text, add_special_tokens=False)
        assert subset.decode(compact) == text
    assert subset.encode_batch(TEXTS) == [subset.encode(t) for t in TEXTS]


def test_subset_is_small_and_keeps_special_tokens(subset):
    base = subset.base_tokenizer
    used = {i for t in TEXTS for i in base.encode(t, add_special_tokens=False)}
    assert len(subset) == 1 + len(used | set(base.all_special_ids))
    im_end = subset.convert_tokens_to_ids("<|im_end|>")
    assert subset.to_base([im_end]) == [151645]
    assert subset.eos_token_id == subset.from_base([base.eos_token_id])[0]


def test_unseen_tokens_become_unknown(subset):
    assert UNKNOWN_ID in subset.encode("ជំរាបសួរ")  # Khmer: not in the subset's texts


def test_saved_subset_loads_through_load_tokenizer(subset, tmp_path):
    subset.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, VocabularySubset)
    assert loaded.encode(TEXTS[1]) == subset.encode(TEXTS[1])
    assert not isinstance(load_tokenizer(tmp_path, subset=False), VocabularySubset)


def test_model_fields_are_read_from_the_saved_file_alone(subset, tmp_path):
    import json

    subset.save_pretrained(tmp_path / "subset")
    expected = {"vocab_size": subset.vocab_size, "eos_token_id": subset.eos_token_id}
    assert VocabularySubset.model_fields(tmp_path / "subset") == expected
    spec_path = tmp_path / "subset" / "vocabulary_subset.json"
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps({"base": spec["base"], "base_ids": spec["base_ids"]}))  # an older file
    assert VocabularySubset.model_fields(tmp_path / "subset") == expected
