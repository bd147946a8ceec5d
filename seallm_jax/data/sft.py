"""Supervised fine-tuning data: JSON-lines conversations rendered with Qwen2's ChatML template, loss on
assistant tokens only; translation conversations from the shipped parallel corpus. Conversations reach
training as a token store (`data tokenize --conversations`, or `seallm_jax.data.tokenize.conversation_store`
for the files of a config), read by the token loader packing whole conversations per row (`seallm_jax.data.loader`).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

from seallm_jax.data.corpus import (LoadReport, OnError, check_language, load_parallel, read_jsonl,
                                    shipped_languages, split_of)
from seallm_jax.data.tokenizer_adapter import as_tokenizer
from seallm_jax.errors import DataFormatError
from seallm_jax.languages import LANGUAGE_NAMES
from seallm_jax.tokenizer.special import IM_END, IM_START

ROLES = ("system", "user", "assistant")
# Qwen2's chat template inserts this system message when a conversation has none.
QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
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
