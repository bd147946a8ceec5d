"""Benchmark readers on fixture files written in each real format, and their errors on bad input."""
import json
from pathlib import Path

import pytest

from seallm_jax.eval.formats import (
    FormatError, read_flores_pair, read_m3exam, read_mgsm, read_multijail, read_seabench, read_searefuse,
    read_seaexam, split_option_label,
)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def test_m3exam_labels_answers_background_and_image_questions():
    questions = read_m3exam(FIXTURES / "m3exam" / "thai-questions-test.json")
    assert len(questions) == 3  # the need_image question is skipped
    first = questions[0]
    assert first.language == "th"
    assert first.labels == ["1", "2", "3", "4"]
    assert first.options[1] == "กรุงเทพมหานคร"
    assert first.answer == 1
    assert questions[1].question.startswith("โจทย์คณิตศาสตร์พื้นฐาน\n")  # background comes first
    assert questions[2].answer == 1  # answer_text "(2)" matches label "2"
    vietnamese = read_m3exam(FIXTURES / "m3exam" / "vietnamese-questions-test.json")
    assert vietnamese[0].labels == ["A", "B", "C", "D"] and vietnamese[0].options[0] == "Hà Nội"
    assert [q.answer for q in vietnamese] == [0, 1, 2, 0]


@pytest.mark.parametrize("option,expected", [
    ("(1) เชียงใหม่", ("1", "เชียงใหม่")), ("A. Hà Nội", ("A", "Hà Nội")), ("B) 100", ("B", "100")),
    ("（C）选项", ("C", "选项")), ("no label", ("", "no label")),
])
def test_option_labels(option, expected):
    assert split_option_label(option) == expected


def test_m3exam_answer_not_among_labels_names_file_and_entry(tmp_path):
    path = tmp_path / "thai-questions-test.json"
    path.write_text(json.dumps([{"question_text": "q", "options": ["(1) a", "(2) b"], "answer_text": "5",
                                 "background_description": [], "language": "thai"}]))
    with pytest.raises(FormatError, match=r"thai-questions-test.json: entry 0: answer_text '5'"):
        read_m3exam(path)


def test_seaexam_reads_choices_and_index_answers_with_folder_language():
    questions = read_seaexam(FIXTURES / "seaexam" / "m3exam" / "indonesian" / "test.json")
    assert [q.language for q in questions] == ["id"] * 3
    assert questions[0].labels == ["A", "B", "C", "D"] and questions[0].answer == 1
    assert questions[2].options == ["ikan", "kucing", "burung"]


def test_seaexam_out_of_range_answer_is_an_error(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([{"question": "q", "choices": ["a", "b"], "answer": 2}]))
    with pytest.raises(FormatError, match="entry 0: `answer` 2"):
        read_seaexam(path)


def test_mgsm_tsv():
    problems = read_mgsm(FIXTURES / "mgsm" / "mgsm_th.tsv", "th")
    assert [p.answer for p in problems] == [60, 375] and problems[0].language == "th"


def test_mgsm_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "mgsm_en.tsv"
    path.write_text("What is 1+1?\t2\nno tab here\n")
    with pytest.raises(FormatError, match=r"mgsm_en.tsv:2: expected 'question<TAB>answer'"):
        read_mgsm(path, "en")


def test_flores_pairs_are_aligned():
    sources, targets = read_flores_pair(FIXTURES / "flores200", "en", "th", "devtest")
    assert len(sources) == len(targets) == 3
    assert sources[0] == "The market opens early in the morning." and targets[0] == "ตลาดเปิดตั้งแต่เช้าตรู่"
    with pytest.raises(FileNotFoundError, match="Flores-200 file for km"):
        read_flores_pair(FIXTURES / "flores200", "en", "km", "devtest")


def test_searefuse_labels(tmp_path):
    questions = read_searefuse(FIXTURES / "searefuse" / "searefuse_test.jsonl")
    assert [(q.language, q.answerable) for q in questions[:2]] == [("en", True), ("en", False)]
    # Other label spellings of the same format.
    path = tmp_path / "th.csv"
    path.write_text("prompt,label\nq1,unanswerable\nq2,answerable\n", encoding="utf-8")
    assert [(q.language, q.answerable) for q in read_searefuse(path)] == [("th", False), ("th", True)]
    path.write_text("prompt,label\nq1,maybe\n", encoding="utf-8")
    with pytest.raises(FormatError, match="cannot read answerability from 'maybe'"):
        read_searefuse(path)


def test_multijail_one_prompt_per_language_cell():
    prompts = read_multijail(FIXTURES / "multijail" / "MultiJail.csv", ["th", "vi"])
    assert len(prompts) == 4 and {p.language for p in prompts} == {"th", "vi"}
    with pytest.raises(FormatError, match=r"no column for language\(s\) \['km'\]"):
        read_multijail(FIXTURES / "multijail" / "MultiJail.csv", ["km"])


def test_seabench_two_turns_and_references():
    questions = read_seabench(FIXTURES / "seabench" / "public-questions.jsonl")
    assert [q.language for q in questions] == ["th", "vi", "id"]
    assert len(questions[1].turns) == 2 and questions[1].references[1] == "20% của 200 là 40."
    assert questions[0].record["unit_id"] == "th-1"


def test_jsonl_error_names_line(tmp_path):
    path = tmp_path / "public-questions.jsonl"
    path.write_text('{"lang": "th", "user_1": "a", "user_2": "b"}\n{not json\n')
    with pytest.raises(FormatError, match=r"public-questions.jsonl:2: not valid JSON"):
        read_seabench(path)
