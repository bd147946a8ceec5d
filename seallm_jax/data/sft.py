"""Supervised fine-tuning data: JSON-lines conversations rendered with Qwen2's ChatML template, loss on
assistant tokens only, packed several per row, mixed across languages; plus translation SFT from the
shipped parallel corpus.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from seallm_jax.data.corpus import (LoadReport, OnError, check_language, load_parallel, read_jsonl,
                                    shipped_languages, split_of)
from seallm_jax.data.mixture import DEFAULT_TEMPERATURE, Example, WeightMethod
from seallm_jax.data.stream import PackedStream, TokenizerAdapter, as_tokenizer, build_mixture
from seallm_jax.errors import ConfigError, DataFormatError
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


class ChatMLRenderer:
    """Qwen2 ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message. The loss covers each
    assistant message's content and its `<|im_end|>`, nothing else."""

    def __init__(self, tokenizer: TokenizerAdapter, default_system: str | None = QWEN2_DEFAULT_SYSTEM):
        self.tokenizer = tokenizer
        self.default_system = default_system
        self.im_start = tokenizer.special_id(IM_START)
        self.im_end = tokenizer.special_id(IM_END)
        self._newline = list(tokenizer.encode("\n"))
        self._role_header = {role: [self.im_start] + list(tokenizer.encode(f"{role}\n")) for role in ROLES}
        self._default_system_tokens = list(tokenizer.encode(default_system)) if default_system else []

    def message_pieces(self, conversation: Conversation, contents: Sequence[Sequence[int]] | None = None
                       ) -> list[tuple[list[int], list[float], str]]:
        """(tokens, per-token loss mask, role) for each message, default system message included.
        `contents` are the messages' content tokens when already encoded (batch encoding)."""
        messages = list(conversation.messages)
        if contents is None:
            contents = [self.tokenizer.encode(message.content) for message in messages]
        contents = list(contents)
        if self.default_system is not None and messages[0].role != "system":
            messages.insert(0, Message("system", self.default_system))
            contents.insert(0, self._default_system_tokens)
        pieces = []
        for message, content in zip(messages, contents):
            header = self._role_header[message.role]
            tokens = header + list(content) + [self.im_end] + self._newline
            trained = 1.0 if message.role == "assistant" else 0.0
            mask = [0.0] * len(header) + [trained] * (len(content) + 1) + [0.0] * len(self._newline)
            pieces.append((tokens, mask, message.role))
        return pieces

    def render(self, conversation: Conversation, max_tokens: int | None = None,
               truncation: Truncation = "turns", report: LoadReport | None = None,
               contents: Sequence[Sequence[int]] | None = None) -> Example | None:
        """The conversation as one example of at most `max_tokens` tokens, or None when the
        truncation policy drops it (counted in `report`)."""
        if truncation not in TRUNCATION_POLICIES:
            raise ConfigError(f"unknown truncation policy {truncation!r}; expected one of {TRUNCATION_POLICIES}")
        pieces = self.message_pieces(conversation, contents)
        tokens = [token for piece in pieces for token in piece[0]]
        mask = [value for piece in pieces for value in piece[1]]
        if max_tokens is None or len(tokens) <= max_tokens:
            return Example(tokens, mask, conversation.language)
        if truncation == "turns":
            # Keep leading system messages and the longest prefix of turns that ends with an
            # assistant message and fits, so that every kept answer is whole.
            kept_tokens: list[int] = []
            kept_mask: list[float] = []
            best: tuple[list[int], list[float]] | None = None
            for piece_tokens, piece_mask, role in pieces:
                if len(kept_tokens) + len(piece_tokens) > max_tokens:
                    break
                kept_tokens, kept_mask = kept_tokens + piece_tokens, kept_mask + piece_mask
                if role == "assistant":
                    best = (kept_tokens, kept_mask)
            if best is not None:
                if report is not None:
                    report.truncated += 1
                return Example(best[0], best[1], conversation.language)
        elif truncation == "tokens":
            if any(mask[1:max_tokens]):
                if report is not None:
                    report.truncated += 1
                return Example(tokens[:max_tokens], mask[:max_tokens], conversation.language)
        if report is not None:
            report.dropped_too_long.append(conversation.id)
        return None


def sft_examples(conversations: Mapping[str, Sequence[Conversation]], renderer: ChatMLRenderer, *,
                 max_tokens: int, truncation: Truncation = "turns",
                 report: LoadReport | None = None) -> dict[str, list[Example]]:
    examples: dict[str, list[Example]] = {}
    for language, items in conversations.items():
        check_language(language)
        # One batch call to the tokenizer for all message contents: much faster than one per message.
        flat = renderer.tokenizer.encode_batch([m.content for item in items for m in item.messages])
        rendered, start = [], 0
        for item in items:
            contents = flat[start:start + len(item.messages)]
            start += len(item.messages)
            rendered.append(renderer.render(item, max_tokens, truncation, report, contents))
        kept = [example for example in rendered if example is not None]
        if len(kept) < len(rendered):
            warnings.warn(f"{language}: {len(rendered) - len(kept)} of {len(rendered)} conversations do not "
                          f"fit {max_tokens} tokens and were dropped (truncation={truncation!r})", stacklevel=2)
        if not kept:
            raise DataFormatError(f"empty source: no conversation for language {language!r} fits "
                             f"{max_tokens} tokens under truncation={truncation!r}")
        examples[language] = kept
    return examples


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


def sft_stream(*, conversations: Mapping[str, Sequence[Conversation]] | Sequence[Conversation] | str
               | Sequence[str] | None = None,
               languages: Sequence[str] | None = None, split: str = "train", seq_len: int = 1024,
               batch_size: int = 8, seed: int = 0, tokenizer: object | None = None, process_index: int = 0,
               process_count: int = 1, weighting: WeightMethod = "temperature",
               weights: Mapping[str, float] | None = None, temperature: float = DEFAULT_TEMPERATURE,
               token_caps: Mapping[str, int] | None = None, max_epochs: int | None = None,
               truncation: Truncation = "turns", default_system: str | None = QWEN2_DEFAULT_SYSTEM,
               on_error: OnError = "raise", min_source_chars: int = 0, max_per_language: int | None = None,
               shuffle: bool = True,
               report: LoadReport | None = None) -> PackedStream:
    """Packed SFT batches. `conversations`: {language: [Conversation]}, [Conversation], JSON-lines
    path(s), or None for translation conversations from the shipped corpus. A conversation never spans two rows;
    one longer than seq_len+1 tokens is truncated by `truncation` (see docs/data.md)."""
    report = report if report is not None else LoadReport()
    adapter = as_tokenizer(tokenizer)
    if conversations is None:
        grouped = translation_conversations(split, languages, min_source_chars=min_source_chars,
                                            max_per_language=max_per_language)
    elif isinstance(conversations, Sequence) and conversations and isinstance(conversations[0], Conversation):
        grouped = {}
        for item in conversations:
            grouped.setdefault(check_language(item.language), []).append(item)
    elif isinstance(conversations, (str, os.PathLike)) or (
            isinstance(conversations, Sequence) and not isinstance(conversations, Mapping)):
        grouped = load_conversations(conversations, on_error=on_error, report=report)
    else:
        grouped = dict(conversations)
    if languages is not None:
        for language in languages:
            check_language(language)
            if language not in grouped:
                raise DataFormatError(f"no conversations for {language!r}; have {', '.join(grouped)}")
        grouped = {language: grouped[language] for language in languages}
    renderer = ChatMLRenderer(adapter, default_system)
    examples = sft_examples(grouped, renderer, max_tokens=seq_len + 1, truncation=truncation, report=report)
    mixture = build_mixture(examples, weighting=weighting, weights=weights, temperature=temperature,
                            token_caps=token_caps, max_epochs=max_epochs, seed=seed,
                            process_index=process_index, process_count=process_count, shuffle=shuffle)
    pad_id = adapter.eos_id if adapter.eos_id is not None else renderer.im_end
    return PackedStream(mixture, seq_len=seq_len, batch_size=batch_size,
                        pad_id=pad_id, report=report)
