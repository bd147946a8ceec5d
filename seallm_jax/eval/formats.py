"""Readers for the benchmarks' real file formats (M3Exam, SeaExam, MGSM, Flores-200, SeaRefuse,
MultiJail, SeaBench), each returning plain records; a malformed entry names its file and line.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

from seallm_jax.errors import DataFormatError
from seallm_jax.eval.languages import FLORES_CODES, language_from_name
from seallm_jax.eval.numbers import parse_number


class FormatError(DataFormatError):
    """A benchmark file that does not have the expected format; the message names file and entry."""


@dataclasses.dataclass(frozen=True)
class MultipleChoiceQuestion:
    question: str          # background (if any) + question text
    options: list[str]     # option texts without their labels
    labels: list[str]      # the label each option is shown with ("A", "1", ...)
    answer: int            # index of the correct option
    language: str
    subject: str | None = None


@dataclasses.dataclass(frozen=True)
class MathProblem:
    question: str
    answer: float
    language: str


@dataclasses.dataclass(frozen=True)
class RefusalQuestion:
    question: str
    answerable: bool
    language: str


@dataclasses.dataclass(frozen=True)
class SafetyPrompt:
    prompt: str
    language: str
    prompt_id: str


@dataclasses.dataclass(frozen=True)
class SeaBenchQuestion:
    unit_id: str
    language: str
    category: str
    turns: list[str]        # user_1, user_2
    references: list[str]   # reference_1, reference_2 ("" when absent)
    record: dict            # the original row, written back with the responses added


# --------------------------------------------------------------------------------------------
# Generic tables: JSON list, JSON Lines, CSV/TSV with a header, Parquet.


def read_records(path: str | Path) -> list[dict]:
    """Rows of a .json (a list, or an object with a list under "data"), .jsonl, .csv, .tsv or
    .parquet file, as dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and _looks_like_json_lines(path)):
        rows = []
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise FormatError(f"{path}:{line_number}: not valid JSON ({error.msg})") from error
                if not isinstance(row, dict):
                    raise FormatError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        if len(rows) == 1 and isinstance(rows[0].get("data"), list):  # a one-line {"data": [...]}
            return rows[0]["data"]
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise FormatError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise FormatError(f"{path}: expected a JSON list of objects")
        return data
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: only Parquet releases need it

        return pq.read_table(path).to_pylist()
    raise FormatError(f"{path}: unsupported file type {suffix!r} (expected .json, .jsonl, .csv, .tsv, .parquet)")


def _looks_like_json_lines(path: Path) -> bool:
    """`datasets`' `to_json` writes JSON Lines even to a .json name: an object per line, no list."""
    with path.open(encoding="utf-8") as handle:
        first = handle.readline().strip()
        second = handle.readline().strip()
    return first.startswith("{") and first.endswith("}") and (not second or second.startswith("{"))


def _field(row: dict, names: tuple[str, ...], path: Path, index: int, required: bool = True):
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if required:
        raise FormatError(
            f"{path}: entry {index}: none of the fields {list(names)} present (fields: {sorted(row)})"
        )
    return None


# --------------------------------------------------------------------------------------------
# Multiple choice: M3Exam and SeaExam.

# M3Exam shows options with their label inside: "(1) ...", "A. ...", "(ก) ...", "B) ...".
_OPTION_LABEL = re.compile(r"^\s*[\(（]?\s*([A-Za-z0-9\u0e01-\u0e2e\u0e50-\u0e59]{1,2})\s*[\)）.．、:]\s*")


def split_option_label(option: str) -> tuple[str, str]:
    """("(1) Paris") -> ("1", "Paris"); an option without a recognisable label -> ("", option)."""
    match = _OPTION_LABEL.match(option)
    if not match:
        return "", option.strip()
    return match.group(1), option[match.end():].strip()


def read_m3exam(path: str | Path, *, skip_image_questions: bool = True) -> list[MultipleChoiceQuestion]:
    """M3Exam text questions (`{language}-questions-{dev,test}.json`).

    Fields: `question_text`, `options` (["(1) ...", ...]), `answer_text` (the label of the right
    option), `background_description` (list of strings), `language`; `need_image` == "yes" questions
    are skipped because a text-only model cannot answer them.
    """
    path = Path(path)
    questions = []
    for index, row in enumerate(read_records(path)):
        if skip_image_questions and str(row.get("need_image", "no")).lower() == "yes":
            continue
        question_text = _field(row, ("question_text",), path, index)
        raw_options = _field(row, ("options",), path, index)
        answer_text = str(_field(row, ("answer_text",), path, index)).strip()
        if not isinstance(raw_options, list) or len(raw_options) < 2:
            raise FormatError(f"{path}: entry {index}: `options` must be a list of at least two strings")
        labels, options = zip(*(split_option_label(str(option)) for option in raw_options))
        labels = [label or str(number + 1) for number, label in enumerate(labels)]
        normalized = [label.strip("() ").lower() for label in labels]
        answer_key = answer_text.strip("() .").lower()
        if answer_key not in normalized:
            raise FormatError(
                f"{path}: entry {index}: answer_text {answer_text!r} is not one of the option labels {labels}"
            )
        background = row.get("background_description") or []
        if isinstance(background, str):
            background = [background]
        full_question = "\n".join([*map(str, background), str(question_text)]).strip()
        language = language_from_name(str(row.get("language") or path.name.split("-")[0]))
        questions.append(MultipleChoiceQuestion(
            question=full_question, options=list(options), labels=labels,
            answer=normalized.index(answer_key), language=language,
            subject=row.get("subject_category") or row.get("subject"),
        ))
    return questions


SEAEXAM_LABELS = "ABCDEFGHIJ"


def read_seaexam(path: str | Path, language: str | None = None) -> list[MultipleChoiceQuestion]:
    """SeaExam questions (`{m3exam,mmlu}/{language}/{dev,test}.json`): `question`, `choices` (option
    texts), integer `answer` (index into `choices`); the language comes from the row's `language` field,
    the argument, or the folder name."""
    path = Path(path)
    folder_language = language_from_name(path.parent.name)
    questions = []
    for index, row in enumerate(read_records(path)):
        question = _field(row, ("question",), path, index)
        choices = _field(row, ("choices",), path, index)
        answer = _field(row, ("answer",), path, index)
        if not isinstance(choices, list) or len(choices) < 2:
            raise FormatError(f"{path}: entry {index}: `choices` must be a list of at least two strings")
        if isinstance(answer, str) and answer.strip().upper() in SEAEXAM_LABELS[: len(choices)]:
            answer = SEAEXAM_LABELS.index(answer.strip().upper())  # some exports store the letter
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise FormatError(f"{path}: entry {index}: `answer` {answer!r} is not an index into {len(choices)} choices")
        metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        row_language = row.get("language") or metadata.get("language")
        questions.append(MultipleChoiceQuestion(
            question=str(question), options=[str(choice) for choice in choices],
            labels=list(SEAEXAM_LABELS[: len(choices)]), answer=answer,
            language=language_from_name(str(row_language)) if row_language else (language or folder_language),
            subject=metadata.get("subject") or row.get("subject"),
        ))
    return questions


# --------------------------------------------------------------------------------------------
# MGSM.


def read_mgsm(path: str | Path, language: str) -> list[MathProblem]:
    """MGSM problems: the original `mgsm_{lang}.tsv` (question TAB answer, no header) or a JSON/JSONL
    export with `question` and `answer_number`."""
    path = Path(path)
    problems = []
    if path.suffix.lower() == ".tsv":
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    raise FormatError(f"{path}:{line_number}: expected 'question<TAB>answer', got {len(parts)} fields")
                answer = parse_number(parts[1])
                if answer is None:
                    raise FormatError(f"{path}:{line_number}: answer {parts[1]!r} is not a number")
                problems.append(MathProblem(parts[0], answer, language))
        return problems
    for index, row in enumerate(read_records(path)):
        question = _field(row, ("question",), path, index)
        raw_answer = _field(row, ("answer_number", "answer"), path, index)
        answer = raw_answer if isinstance(raw_answer, (int, float)) else parse_number(str(raw_answer))
        if answer is None:
            raise FormatError(f"{path}: entry {index}: answer {raw_answer!r} is not a number")
        problems.append(MathProblem(str(question), float(answer), language))
    return problems


# --------------------------------------------------------------------------------------------
# Flores-200: one sentence per line, the files of all languages aligned line by line.


def flores_path(root: str | Path, language: str, split: str = "devtest") -> Path:
    """Where a language's Flores-200 file lives: `root/{split}/{code}.{split}` (the release layout),
    or `root/{code}.{split}`."""
    if language not in FLORES_CODES:
        raise ValueError(f"no Flores-200 code for language {language!r}; known: {', '.join(FLORES_CODES)}")
    code = FLORES_CODES[language]
    candidates = [Path(root) / split / f"{code}.{split}", Path(root) / f"{code}.{split}"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Flores-200 file for {language} not found; looked at {[str(c) for c in candidates]}")


def read_flores(root: str | Path, language: str, split: str = "devtest") -> list[str]:
    """The sentences of one language's Flores-200 split."""
    return flores_path(root, language, split).read_text(encoding="utf-8").rstrip("\n").split("\n")


def read_flores_pair(root: str | Path, source: str, target: str, split: str = "devtest") -> tuple[list[str], list[str]]:
    """Aligned (source sentences, target sentences); files of different lengths are an error."""
    sources, targets = read_flores(root, source, split), read_flores(root, target, split)
    if len(sources) != len(targets):
        raise FormatError(
            f"Flores-200 files are not aligned: {source} has {len(sources)} lines, {target} has {len(targets)}"
        )
    return sources, targets


# --------------------------------------------------------------------------------------------
# SeaRefuse: questions labelled answerable / unanswerable.

_TRUE_STRINGS = {"true", "1", "yes", "answerable"}
_FALSE_STRINGS = {"false", "0", "no", "unanswerable", "not answerable", "non-answerable"}


def _label_is_answerable(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    return True if key in _TRUE_STRINGS else False if key in _FALSE_STRINGS else None


def _answerable(row: dict, path: Path, index: int) -> bool:
    if "answerable" in row or "is_answerable" in row:
        value = row["answerable"] if "answerable" in row else row["is_answerable"]
        answerable = _label_is_answerable(value)
    elif "unanswerable" in row or "is_unanswerable" in row:
        value = row["unanswerable"] if "unanswerable" in row else row["is_unanswerable"]
        flag = _label_is_answerable(value)  # here True means "is unanswerable"
        answerable = None if flag is None else not flag
    else:
        value = _field(row, ("label", "type", "category"), path, index)
        answerable = _label_is_answerable(value)
    if answerable is None:
        raise FormatError(f"{path}: entry {index}: cannot read answerability from {value!r}")
    return answerable


def read_searefuse(path: str | Path, language: str | None = None) -> list[RefusalQuestion]:
    """SeaRefuse-style rows: a question (`question`/`prompt`/`query`), an answerability label
    (`answerable` bool, `unanswerable` bool, or `label`/`type` "answerable"/"unanswerable") and a
    language (`language`/`lang`, else the argument, else the file name stem)."""
    path = Path(path)
    items = []
    for index, row in enumerate(read_records(path)):
        question = _field(row, ("question", "prompt", "query", "input"), path, index)
        row_language = row.get("language") or row.get("lang") or language or path.stem
        items.append(RefusalQuestion(str(question), _answerable(row, path, index), language_from_name(str(row_language))))
    return items


# --------------------------------------------------------------------------------------------
# MultiJail: one CSV row per harmful prompt, one column per language.


def read_multijail(path: str | Path, languages: list[str] | None = None) -> list[SafetyPrompt]:
    """MultiJail (`MultiJail.csv`: `id`, `source`, `tags`, then one column per language code)."""
    path = Path(path)
    rows = read_records(path)
    if not rows:
        raise FormatError(f"{path}: no rows")
    metadata_columns = {"id", "source", "tags"}
    columns = [column for column in rows[0] if column not in metadata_columns]
    wanted = languages if languages is not None else columns
    missing = [language for language in wanted if language not in columns]
    if missing:
        raise FormatError(f"{path}: no column for language(s) {missing}; columns: {columns}")
    prompts = []
    for index, row in enumerate(rows):
        for language in wanted:
            text = (row.get(language) or "").strip()
            if text:
                prompts.append(SafetyPrompt(text, language, str(row.get("id", index))))
    return prompts


# --------------------------------------------------------------------------------------------
# SeaBench: two-turn open questions with references.


def read_seabench(path: str | Path) -> list[SeaBenchQuestion]:
    """SeaBench (`public-questions.jsonl`: `unit_id`, `lang`, `type`, `user_1`, `reference_1`,
    `user_2`, `reference_2`)."""
    path = Path(path)
    questions = []
    for index, row in enumerate(read_records(path)):
        turns = [str(_field(row, ("user_1",), path, index)), str(_field(row, ("user_2",), path, index))]
        references = [str(row.get("reference_1") or ""), str(row.get("reference_2") or "")]
        questions.append(SeaBenchQuestion(
            unit_id=str(row.get("unit_id", index)), language=language_from_name(str(_field(row, ("lang", "language"), path, index))),
            category=str(row.get("type") or row.get("category") or ""), turns=turns, references=references, record=dict(row),
        ))
    return questions
