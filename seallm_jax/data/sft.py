"""Supervised fine-tuning data: JSON-lines conversations rendered with Qwen2's ChatML template, loss on
assistant tokens only; translation conversations from the shipped parallel corpus. Conversations reach
training as a token store (`data tokenize --conversations`, or `conversation_store` for the files of a
config), read by the token loader packing whole conversations per row (`seallm_jax.data.loader`).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from seallm_jax.data.corpus import (LoadReport, OnError, check_language, load_parallel, read_jsonl,
                                    shipped_languages, split_of)
from seallm_jax.data.tokenizer_adapter import as_tokenizer
from seallm_jax.errors import DataFormatError
from seallm_jax.languages import LANGUAGE_NAMES
from seallm_jax.tokenizer.special import IM_END, IM_START

ROLES = ("system", "user", "assistant")
# Qwen2's chat template inserts this system message when a conversation has none.
QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
Truncation = Literal["turns", "tokens", "drop"]
TRUNCATION_POLICIES = ("turns", "tokens", "drop")
# Translation prompts, chosen per pair by a hash so that the choice is stable across runs.
TRANSLATION_PROMPTS = (
    "Translate the following text into {target}:\n{text}",
    "Translate to {target}: {text}",
    "How do you say this in {target}?\n{text}",
)


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    language: str
    id: str = ""

    @property
    def has_assistant(self) -> bool:
        return any(message.role == "assistant" for message in self.messages)


def conversation_from_record(record: Mapping, where: str, default_language: str | None = None) -> Conversation:
    """A `Conversation` from `{"messages": [{"role", "content"}, ...], "language": ...}`."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f"{where}: expected a non-empty 'messages' list")
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES \
                or not isinstance(message.get("content"), str):
            raise DataFormatError(f"{where}: message {index} must be {{'role': one of {ROLES}, "
                                  f"'content': str}}, got {message!r}"[:300])
        parsed.append(Message(message["role"], message["content"]))
    language = record.get("language", default_language)
    if language is None:
        raise DataFormatError(f"{where}: no 'language' field and no language given for the file")
    check_language(language, where)
    return Conversation(tuple(parsed), language, str(record.get("id", where)))


def load_conversations(paths: str | os.PathLike | Sequence[str | os.PathLike], *, language: str | None = None,
                       on_error: OnError = "raise", report: LoadReport | None = None,
                       split: str | None = None) -> dict[str, list[Conversation]]:
    """Conversations from JSON-lines files, grouped by language. Malformed lines raise naming file
    and line (or are counted in `report` with on_error="skip"); conversations without an assistant
    turn are skipped and listed in `report.without_assistant`."""
    report = report if report is not None else LoadReport()
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise DataFormatError("empty source: no conversation files given")
    grouped: dict[str, list[Conversation]] = {}
    for path in paths:
        for number, record in read_jsonl(path, on_error=on_error, report=report):
            where = f"{path}:{number}"
            try:
                conversation = conversation_from_record(record, where, language)
            except (DataFormatError, ValueError) as error:
                if on_error == "raise" or "unknown language" in str(error):
                    raise
                report.malformed.append(str(error))
                continue
            if not conversation.has_assistant:
                report.without_assistant.append(where)
                continue
            if split is None or split_of(conversation.id) == split:
                grouped.setdefault(conversation.language, []).append(conversation)
    if not grouped:
        raise DataFormatError(f"empty source: no usable conversations in {', '.join(map(str, paths))} "
                         f"({report.summary()})")
    if report.without_assistant or report.malformed:
        # Visible even to a caller that passed no report: nothing is dropped silently.
        warnings.warn(f"conversations: {report.summary()}; first: "
                      f"{(report.without_assistant + report.malformed)[0]}", stacklevel=2)
    return grouped


@dataclass(frozen=True)
class ChatTemplate:
    """Qwen2's ChatML as token ids: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, and Qwen2's
    default system message first when a conversation has none. Made once from a tokenizer; rendering then
    needs only each message's content tokens, so `data tokenize` workers render without the tokenizer.
    The loss covers each assistant message's content and its `<|im_end|>`, nothing else."""

    headers: Mapping[str, tuple[int, ...]]       # role -> `<|im_start|>{role}\\n`
    im_end: int
    newline: tuple[int, ...]
    default_system: tuple[int, ...] | None       # the inserted system message's content tokens, or none

    @classmethod
    def from_tokenizer(cls, tokenizer: object, default_system: str | None = QWEN2_DEFAULT_SYSTEM) -> "ChatTemplate":
        adapter = as_tokenizer(tokenizer)
        im_start = adapter.special_id(IM_START)
        return cls(headers={role: (im_start, *adapter.encode(f"{role}\n")) for role in ROLES},
                   im_end=adapter.special_id(IM_END), newline=tuple(adapter.encode("\n")),
                   default_system=tuple(adapter.encode(default_system)) if default_system else None)

    def render(self, roles: Sequence[str], contents: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
        """(tokens, loss mask) of a conversation from its roles and content tokens: mask 1 where predicting
        the token counts (assistant content and its `<|im_end|>`)."""
        roles, contents = list(roles), list(contents)
        if self.default_system is not None and roles and roles[0] != "system":
            roles.insert(0, "system")
            contents.insert(0, self.default_system)
        tokens: list[int] = []
        mask: list[int] = []
        for role, content in zip(roles, contents):
            header = self.headers[role]
            trained = 1 if role == "assistant" else 0
            tokens += [*header, *content, self.im_end, *self.newline]
            mask += [0] * len(header) + [trained] * (len(content) + 1) + [0] * len(self.newline)
        return tokens, mask


def render_conversation(conversation: Conversation, tokenizer: object | None = None,
                        default_system: str | None = QWEN2_DEFAULT_SYSTEM) -> tuple[list[int], list[int]]:
    """(tokens, loss mask) of one conversation with `tokenizer` (None: Qwen2's), as `data tokenize
    --conversations` stores it (without the store's document separator)."""
    adapter = as_tokenizer(tokenizer)
    template = ChatTemplate.from_tokenizer(adapter, default_system)
    contents = adapter.encode_batch([message.content for message in conversation.messages])
    return template.render([message.role for message in conversation.messages], contents)


def translation_conversations(split: str = "train", languages: Sequence[str] | None = None, *,
                              pivot: str = "en", both_directions: bool = True,
                              min_source_chars: int = 0, max_per_language: int | None = None,
                              corpus_dir: str | None = None) -> dict[str, list[Conversation]]:
    """Real translation-instruction conversations from the shipped parallel corpus, grouped by the
    language the assistant writes in. `min_source_chars` keeps longer, sentence-like pairs (a
    higher-quality subset for a second SFT stage). `max_per_language` keeps a fixed pseudo-random
    subset of that many conversations per language (fast demos)."""
    available = shipped_languages(corpus_dir)
    languages = [language for language in (languages or available) if language != pivot]
    grouped: dict[str, list[Conversation]] = {}
    for language in languages:
        check_language(language)
        directions = [(pivot, language)] + ([(language, pivot)] if both_directions else [])
        for source, target in directions:
            for source_doc, target_doc in load_parallel(split, source, target, corpus_dir=corpus_dir):
                if len(source_doc.text) < min_source_chars:
                    continue
                key = f"{source_doc.id}|{source}>{target}"
                choice = int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(TRANSLATION_PROMPTS)
                prompt = TRANSLATION_PROMPTS[choice].format(target=LANGUAGE_NAMES[target], text=source_doc.text)
                grouped.setdefault(target, []).append(Conversation(
                    (Message("user", prompt), Message("assistant", target_doc.text)), target, key))
    if not grouped:
        raise DataFormatError(f"empty source: no translation pairs for {languages} in split {split!r}")
    if max_per_language is not None:
        # Ordering by a hash of the id picks the same subset on every run and every process.
        grouped = {language: sorted(items, key=lambda c: hashlib.sha256(c.id.encode()).digest())[:max_per_language]
                   for language, items in grouped.items()}
    return grouped


# ---- conversations as a token store ---------------------------------------------------------------------
_CONVERSATION_LAYOUT = 1  # bump when the JSON-lines files written below change


def conversation_store(files: Sequence[str] = (), *, tokenizer: object | None = None,
                       languages: Sequence[str] | None = None, min_source_chars: int = 0,
                       max_per_language: int | None = None, default_system: str | None = QWEN2_DEFAULT_SYSTEM,
                       cache_dir: str | os.PathLike | None = None):
    """The conversations of an SFT run as a token store (tokens and assistant-only loss mask), tokenized
    once into the cache of `seallm_jax.data.tokenize.ensure_store` and reused.

    `files`: JSON-lines conversation files, as LANG=PATH items (streamed as they are) or plain paths whose
    records name their `language` (first sorted by language into per-language files in the cache). None
    or empty: translation conversations built from the shipped parallel corpus (`languages`,
    `min_source_chars`, `max_per_language` as in `translation_conversations`; the corpus's train and
    validation splits, its test split never).
    """
    from seallm_jax.data.store import parse_data_args
    from seallm_jax.data.tokenize import ensure_store

    items = [os.fspath(item) for item in files or ()]
    if not items:
        by_language = _translation_files(languages, min_source_chars, max_per_language, cache_dir)
    else:
        named = parse_data_args([item for item in items if "=" in item], flag="config.data.files") \
            if any("=" in item for item in items) else {}
        plain = [item for item in items if "=" not in item]
        by_language = {language: list(paths) for language, paths in named.items()}
        for language, path in _files_by_record_language(plain, cache_dir).items():
            by_language.setdefault(language, []).append(path)
    return ensure_store(by_language, tokenizer=tokenizer, cache_dir=_store_cache(cache_dir), kind="conversations",
                        default_system=default_system)


def _cache(cache_dir: str | os.PathLike | None, kind: str) -> str:
    from seallm_jax.data.tokenize import STORE_ENV_VAR

    if cache_dir is not None:
        return os.path.join(os.fspath(cache_dir), kind)
    root = os.environ.get(STORE_ENV_VAR) or os.path.expanduser(os.path.join("~", ".cache", "seallm_jax"))
    return os.path.join(root, kind)


def _store_cache(cache_dir: str | os.PathLike | None) -> str | None:
    return None if cache_dir is None else os.path.join(os.fspath(cache_dir), "token_stores")


def _write_language_files(directory: str, records: Mapping[str, Sequence[Mapping]]) -> dict[str, str]:
    """{language: [record]} as DIRECTORY/{language}.jsonl, written whole or not at all."""
    import json

    from seallm_jax.files import atomic_directory

    if not os.path.isdir(directory):
        with atomic_directory(directory, if_exists="keep") as staging:
            for language, items in records.items():
                with open(os.path.join(staging, f"{language}.jsonl"), "w", encoding="utf-8") as handle:
                    for record in items:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {name[:-len(".jsonl")]: os.path.join(directory, name)
            for name in sorted(os.listdir(directory)) if name.endswith(".jsonl")}


def _translation_files(languages: Sequence[str] | None, min_source_chars: int, max_per_language: int | None,
                       cache_dir: str | os.PathLike | None) -> dict[str, list[str]]:
    """The shipped translation conversations as per-language JSON-lines files (each record with its corpus
    split), in a cache directory keyed by the settings."""
    import json

    key = json.dumps({"languages": sorted(languages) if languages else None, "min_source_chars": min_source_chars,
                      "max_per_language": max_per_language, "layout": _CONVERSATION_LAYOUT}, sort_keys=True)
    directory = os.path.join(_cache(cache_dir, "conversations"), hashlib.sha256(key.encode()).hexdigest()[:24])
    records: dict[str, list[dict]] = {}
    if not os.path.isdir(directory):
        for split in ("train", "validation"):
            grouped = translation_conversations(split, languages, min_source_chars=min_source_chars,
                                                max_per_language=max_per_language)
            for language, items in grouped.items():
                records.setdefault(language, []).extend(
                    {"id": item.id, "language": language, "split": split,
                     "messages": [{"role": m.role, "content": m.content} for m in item.messages]} for item in items)
    return {language: [path] for language, path in _write_language_files(directory, records).items()}


def _files_by_record_language(paths: Sequence[str], cache_dir: str | os.PathLike | None) -> dict[str, str]:
    """Conversation files whose records name their `language`, sorted into one file per language (each
    record keeping its id: its `id`, else FILE:LINE), in a cache directory keyed by the files' paths,
    sizes and modification times. Malformed lines raise naming file and line."""
    import json

    if not paths:
        return {}
    identity = []
    for path in paths:
        if not os.path.isfile(path):
            from seallm_jax.errors import MissingDataError

            raise MissingDataError(f"data file not found: {path}")
        stat = os.stat(path)
        identity.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    key = json.dumps({"files": identity, "layout": _CONVERSATION_LAYOUT})
    directory = os.path.join(_cache(cache_dir, "conversations"), hashlib.sha256(key.encode()).hexdigest()[:24])
    records: dict[str, list[dict]] = {}
    if not os.path.isdir(directory):
        without_assistant = []
        for path in paths:
            for number, record in read_jsonl(path):
                where = f"{path}:{number}"
                if record.get("language") is None:
                    raise DataFormatError(f"{where}: no 'language' field; give the file as LANG=PATH "
                                          f"(th={path}) or name each record's language")
                # Checked here, so that an error names the user's file and line, not the sorted copy.
                conversation = conversation_from_record(record, where)
                if not conversation.has_assistant:
                    without_assistant.append(where)
                    continue
                record.setdefault("id", f"{os.path.basename(path)}:{number}")
                records.setdefault(conversation.language, []).append(record)
        if without_assistant:
            warnings.warn(f"{len(without_assistant)} conversations without an assistant turn skipped (first: "
                          f"{without_assistant[0]})", stacklevel=3)
        if not records:
            raise DataFormatError(f"empty source: no conversation with an assistant turn in {', '.join(paths)}")
    return _write_language_files(directory, records)
