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
