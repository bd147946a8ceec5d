"""Documents: the shipped parallel SEA corpus, user corpora from JSON-lines or text files, splits.

Every reader names the file and line of bad input, and checks language codes against the project's list.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Mapping, Sequence, TextIO

from seallm_jax.errors import ConfigError, DataFormatError, MissingDataError, UnknownLanguageError
from seallm_jax.languages import LANGUAGES

CORPUS_DIR = Path(__file__).parent / "corpus"
SPLITS = ("train", "validation", "test")
# Share of message ids held out; the split of an id is a pure function of the id, so the same
# message is in the same split in every language and the test split is parallel text.
VALIDATION_FRACTION = 0.05
TEST_FRACTION = 0.05
OnError = Literal["raise", "skip"]


@dataclass(frozen=True)
class Document:
    """One text in one language. `id` is stable across languages for parallel text."""

    id: str
    language: str
    text: str
    meta: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass
class LoadReport:
    """What a reader skipped or changed instead of raising, so that nothing is lost silently."""

    records: int = 0
    malformed: list[str] = field(default_factory=list)          # "file:line: reason"
    without_assistant: list[str] = field(default_factory=list)  # conversations carrying no loss
    truncated: int = 0
    dropped_too_long: list[str] = field(default_factory=list)

    def merge(self, other: "LoadReport") -> None:
        self.records += other.records
        self.malformed += other.malformed
        self.without_assistant += other.without_assistant
        self.truncated += other.truncated
        self.dropped_too_long += other.dropped_too_long

    def summary(self) -> str:
        return (f"{self.records} records; {len(self.malformed)} malformed lines skipped; "
                f"{len(self.without_assistant)} conversations without an assistant turn skipped; "
                f"{self.truncated} truncated; {len(self.dropped_too_long)} dropped as too long")


def check_language(language: str, where: str = "") -> str:
    """Return `language` if it is one of the project's codes, else raise naming the known ones."""
    if language not in LANGUAGES:
        prefix = f"{where}: " if where else ""
        raise UnknownLanguageError(f"{prefix}unknown language code {language!r}; known codes: {', '.join(LANGUAGES)}")
    return language


def check_languages(languages: Sequence[str] | str | None, available: Sequence[str],
                    where: str = "the corpus") -> list[str]:
    """Validate a requested language list against what `where` has (None means all available)."""
    if languages is None:
        return list(available)
    if isinstance(languages, str):
        languages = [languages]
    for language in languages:
        check_language(language)
    missing = [language for language in languages if language not in available]
    if missing:
        raise UnknownLanguageError(f"{where} has no data for {', '.join(missing)}; "
                                   f"it has: {', '.join(available) or 'no language'}")
    return list(languages)


def split_of(document_id: str) -> str:
    """The deterministic split of a document id (same id -> same split in every language)."""
    digest = hashlib.sha256(document_id.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    if fraction < TEST_FRACTION:
        return "test"
    if fraction < TEST_FRACTION + VALIDATION_FRACTION:
        return "validation"
    return "train"


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} or None for all")


@contextlib.contextmanager
def _open_text(path: Path) -> Iterator[TextIO]:
    """The file as UTF-8 text (gzip-compressed when it ends in .gz); bytes that are not UTF-8 (a
    binary file given as data, another encoding) raise a `DataFormatError` naming the file."""
    handle = gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")
    try:
        with handle:
            yield handle
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                              f"{error.start} of a read chunk): save it as UTF-8, or is it the wrong file?") from None
    except (OSError, EOFError) as error:
        if isinstance(error, FileNotFoundError) or not path.suffix == ".gz":
            raise
        raise DataFormatError(f"{path}: not a readable gzip file ({error})") from None


def read_jsonl(path: str | os.PathLike, *, on_error: OnError = "raise",
               report: LoadReport | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line; bad JSON raises naming file and line,
    or with on_error="skip" is counted in `report.malformed`."""
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"data file not found: {path}")
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise DataFormatError(f"expected a JSON object, got {type(record).__name__}")
            except ValueError as error:
                message = f"{path}:{number}: malformed JSON line ({error})"
                if on_error == "raise":
                    raise DataFormatError(message) from None
                if report is not None:
                    report.malformed.append(message)
                continue
            if report is not None:
                report.records += 1
            yield number, record


def load_documents(path: str | os.PathLike, language: str | None = None, *, text_field: str = "text",
                   text_unit: Literal["line", "paragraph"] = "line", on_error: OnError = "raise",
                   report: LoadReport | None = None) -> list[Document]:
    """Documents from a local file: JSON-lines (`.jsonl`, `.json`, optionally `.gz`) with a text
    field and an optional `language`/`id`, or plain text (one document per line or paragraph)."""
    path = Path(path)
    if language is not None:
        check_language(language, str(path))
    documents: list[Document] = []
    if path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        for number, record in read_jsonl(path, on_error=on_error, report=report):
            text = record.get(text_field)
            record_language = record.get("language", language)
            problem = None
            if not isinstance(text, str):
                problem = f"missing string field {text_field!r}"
            elif record_language is None:
                problem = "no 'language' field and no language given for the file"
            if problem:
                if on_error == "raise":
                    raise DataFormatError(f"{path}:{number}: {problem}")
                if report is not None:
                    report.malformed.append(f"{path}:{number}: {problem}")
                continue
            check_language(record_language, f"{path}:{number}")
            if text.strip():
                documents.append(Document(str(record.get("id", f"{path.name}:{number}")), record_language,
                                          text))
    else:
        if language is None:
            raise ConfigError(f"{path}: a plain-text file needs its language (e.g. language='th')")
        if not path.exists():
            raise MissingDataError(f"data file not found: {path}")
        with _open_text(path) as handle:
            content = handle.read()
        if text_unit == "paragraph":
            units = [(index, block.strip()) for index, block in enumerate(content.split("\n\n"), start=1)]
        else:
            units = list(enumerate(content.splitlines(), start=1))
        documents = [Document(f"{path.name}:{number}", language, text.strip())
                     for number, text in units if text.strip()]
        if report is not None:
            report.records += len(documents)
    if not documents:
        raise DataFormatError(f"{path}: empty source, no documents found")
    return documents


def files_by_language(files: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]]) -> dict[str, list[str]]:
    """{language: file or [files]} as {language: [paths]}, every code known and every language given a file."""
    if not files:
        raise DataFormatError("empty source: no files given")
    by_language: dict[str, list[str]] = {}
    for language, paths in files.items():
        check_language(language)
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise DataFormatError(f"empty source: no files given for language {language!r}")
        by_language[language] = [os.fspath(path) for path in paths]
    return by_language


def load_files(files: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]], *,
               split: str | None = None, on_error: OnError = "raise",
               report: LoadReport | None = None, **kwargs) -> dict[str, list[Document]]:
    """A user corpus given as {language: file or [files]}; `split` filters by `split_of(id)`."""
    _check_split(split)
    corpus: dict[str, list[Document]] = {}
    for language, paths in files_by_language(files).items():
        documents = [doc for path in paths
                     for doc in load_documents(path, language, on_error=on_error, report=report, **kwargs)]
        if split is not None:
            documents = [doc for doc in documents if split_of(doc.id) == split]
        corpus[language] = documents
    return corpus


def shipped_languages(corpus_dir: str | os.PathLike | None = None) -> list[str]:
    """Languages of the shipped corpus, in the project's language order."""
    directory = Path(corpus_dir) if corpus_dir else CORPUS_DIR
    present = {path.name.split(".")[0] for path in directory.glob("*.jsonl.gz")}
    return [language for language in LANGUAGES if language in present]


@functools.lru_cache(maxsize=32)
def _read_shipped(directory: str, language: str) -> tuple[Document, ...]:
    path = Path(directory) / f"{language}.jsonl.gz"
    documents = []
    for _, record in read_jsonl(path):
        meta = {key: value for key, value in record.items() if key not in ("id", "text")}
        documents.append(Document(record["id"], language, record["text"], meta))
    return tuple(documents)


def load_corpus(split: str | None = "train", languages: Sequence[str] | None = None, *,
                corpus_dir: str | os.PathLike | None = None) -> dict[str, list[Document]]:
    """The shipped corpus: {language: documents of that split} (split=None: every document)."""
    _check_split(split)
    directory = str(Path(corpus_dir) if corpus_dir else CORPUS_DIR)
    selected = check_languages(languages, shipped_languages(directory))
    return {language: [doc for doc in _read_shipped(directory, language)
                       if split is None or split_of(doc.id) == split]
            for language in selected}


def load_parallel(split: str | None = "test", source: str = "en", target: str = "th", *,
                  corpus_dir: str | os.PathLike | None = None) -> list[tuple[Document, Document]]:
    """Aligned (source, target) pairs of the shipped corpus. Lao pairs with English through the
    dictionary's English glosses; other pairs share Firefox message ids."""
    if source == target:
        raise UnknownLanguageError(f"source and target are the same language {source!r}")
    corpus = load_corpus(split, [source, target], corpus_dir=corpus_dir)
    pairs: list[tuple[Document, Document]] = []
    if "lo" in (source, target):
        other = target if source == "lo" else source
        if other != "en":
            raise UnknownLanguageError(f"Lao has parallel text with English only (dictionary glosses), not {other!r}")
        for lao in corpus["lo"]:
            gloss = lao.meta.get("gloss_en", "")
            if gloss:
                english = Document(lao.id, "en", gloss)
                pairs.append((english, lao) if source == "en" else (lao, english))
    else:
        by_id = {doc.id: doc for doc in corpus[target]}
        pairs = [(doc, by_id[doc.id]) for doc in corpus[source] if doc.id in by_id]
    if not pairs:
        raise DataFormatError(f"no parallel text between {source!r} and {target!r} in split {split!r}")
    return pairs
