"""`seallm-jax data stats` prints documents, Qwen2 tokens and shares per language."""
import pytest

from seallm_jax.cli import main
from seallm_jax.data import load_corpus


def test_data_stats_prints_documents_tokens_and_shares(capsys):
    assert main(["data", "stats", "--split", "test", "--languages", "th", "vi"]) == 0
    output = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in output.splitlines()[2:]}
    corpus = load_corpus("test", ["th", "vi"])
    for language in ("th", "vi"):
        _, documents, tokens, share = lines[language]
        assert int(documents) == len(corpus[language])
        assert int(tokens) > int(documents)
        assert 0 < float(share.rstrip("%")) < 100
    assert sum(float(lines[language][3].rstrip("%")) for language in ("th", "vi")) == pytest.approx(100.0, abs=0.2)


def test_data_sft_vocabulary_saves_the_subset_a_cpu_recipe_reads(tmp_path, capsys):
    from seallm_jax.tokenizer import VocabularySubset

    out = tmp_path / "vocabulary"
    assert main(["data", "sft-vocabulary", str(out), "--languages", "en,th", "--max-per-language", "5",
                 "--min-source-chars", "0,60"]) == 0
    fields = VocabularySubset.model_fields(out)
    assert f"vocabulary subset of {fields['vocab_size']} ids" in capsys.readouterr().out
    subset = VocabularySubset.load(out)
    assert fields == {"vocab_size": len(subset), "eos_token_id": subset.eos_token_id}
    assert subset.decode(subset.encode("assistant\n")) == "assistant\n"
