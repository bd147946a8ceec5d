"""The shipped corpus (languages, parallel splits, provenance) and the readers' bad-input errors."""
import gzip
import json

import pytest

from seallm_jax.data import (DataFormatError, LoadReport, load_corpus, load_documents, load_files,
                             load_parallel, shipped_languages, split_of)
from seallm_jax.data.corpus import CORPUS_DIR, TEST_FRACTION, VALIDATION_FRACTION

REQUIRED = ("en", "zh", "th", "vi", "id", "ms", "tl", "km", "my")


def test_shipped_corpus_has_the_required_languages_with_licenses():
    languages = shipped_languages()
    assert set(REQUIRED) <= set(languages)
    assert {"lo", "ta"} <= set(languages)
    manifest = json.loads((CORPUS_DIR / "manifest.json").read_text())
    assert set(manifest["languages"]) == set(languages)
    assert all(source["license"] for source in manifest["sources"])
    assert (CORPUS_DIR / "PROVENANCE.md").exists() and (CORPUS_DIR / "LICENSE-MPL-2.0").exists()


def test_split_sizes_follow_the_configured_fractions():
    everything = load_corpus(None)
    splits = {split: load_corpus(split) for split in ("train", "validation", "test")}
    for language, documents in everything.items():
        total = len(documents)
        assert total >= 2000, language
        sizes = {split: len(corpus[language]) for split, corpus in splits.items()}
        assert sum(sizes.values()) == total  # the splits partition the corpus
        assert abs(sizes["test"] / total - TEST_FRACTION) < 0.02, (language, sizes)
        assert abs(sizes["validation"] / total - VALIDATION_FRACTION) < 0.02, (language, sizes)


def test_splits_are_parallel_across_languages():
    test_th = {doc.id for doc in load_corpus("test", ["th"])["th"]}
    train_en = {doc.id for doc in load_corpus("train", ["en"])["en"]}
    assert not test_th & train_en  # a held-out Thai message is never an English training message
    pairs = load_parallel("test", source="en", target="th")
    assert len(pairs) > 300
    assert all(en.id == th.id and split_of(en.id) == "test" for en, th in pairs)
    assert all(any("\u0e00" <= char <= "\u0e7f" for char in th.text) for _, th in pairs)


def test_lao_pairs_with_english_glosses():
    pairs = load_parallel("test", source="en", target="lo")
    assert len(pairs) > 500
    english, lao = pairs[0]
    assert english.language == "en" and lao.language == "lo" and english.text
    with pytest.raises(ValueError, match="English only"):
        load_parallel("test", source="th", target="lo")


def test_unknown_language_lists_the_known_codes():
    with pytest.raises(ValueError, match=r"unknown language code 'xx'.*known codes: en, zh, id"):
        load_corpus("train", ["xx"])
    with pytest.raises(ValueError, match="unknown language code 'fr'"):
        load_files({"fr": "whatever.txt"})


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "Xin chào"}\n{"text": "broken\n{"text": "Cảm ơn"}\n')
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:2: malformed JSON"):
        load_documents(path, "vi")


def test_malformed_lines_can_be_skipped_and_are_counted(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write('{"text": "Xin chào"}\nnot json\n{"no_text": 1}\n{"text": "Cảm ơn"}\n')
    report = LoadReport()
    documents = load_documents(path, "vi", on_error="skip", report=report)
    assert [doc.text for doc in documents] == ["Xin chào", "Cảm ơn"]
    assert len(report.malformed) == 2
    assert ":2:" in report.malformed[0] and ":3:" in report.malformed[1]


def test_empty_source_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty source"):
        load_documents(empty, "th")
    with pytest.raises(ValueError, match="empty source"):
        load_files({})


def test_user_text_and_jsonl_files(tmp_path):
    text = tmp_path / "th.txt"
    text.write_text("สวัสดีครับ\n\nขอบคุณครับ\n")
    lines = tmp_path / "mixed.jsonl"
    lines.write_text('{"text": "Selamat pagi", "language": "id"}\n{"content": "x", "text": "Apa kabar"}\n')
    corpus = load_files({"th": text, "id": [lines]})
    assert [doc.text for doc in corpus["th"]] == ["สวัสดีครับ", "ขอบคุณครับ"]
    assert [doc.text for doc in corpus["id"]] == ["Selamat pagi", "Apa kabar"]
    paragraphs = load_documents(text, "th", text_unit="paragraph")
    assert len(paragraphs) == 2
