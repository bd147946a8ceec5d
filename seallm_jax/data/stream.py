"""Packed, sharded, resumable batches: examples from a language mixture packed into fixed-length rows
with segment ids (documents never attend to each other) in the data contract of docs/architecture.md.
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Iterator, Mapping, Sequence, Union

import numpy as np

from seallm_jax.data.corpus import Document, LoadReport, load_corpus, load_files
from seallm_jax.data.mixture import (DEFAULT_TEMPERATURE, Example, ExampleSource, Mixture, WeightMethod,
                                     mixture_weights)
from seallm_jax.errors import ConfigError, DataFormatError, UnknownLanguageError
from seallm_jax.tokenizer.special import document_separator_id, special_token_id

Encode = Callable[[str], list]
STATE_VERSION = 1
Batch = dict[str, np.ndarray]


class TokenizerAdapter:
    """Turns a `transformers` tokenizer, an object with `encode`, or a plain callable into
    `encode(text) -> list[int]`, plus the special-token ids the data code needs."""

    def __init__(self, tokenizer: object, *, eos_id: int | None = None):
        self.tokenizer = tokenizer
        self._is_hf = hasattr(tokenizer, "convert_tokens_to_ids") and hasattr(tokenizer, "encode")
        if self._is_hf:
            self.encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
        elif hasattr(tokenizer, "encode"):
            self.encode = tokenizer.encode
        elif callable(tokenizer):
            self.encode = tokenizer
        else:
            raise TypeError(f"tokenizer must be a transformers tokenizer, have .encode, or be callable; "
                            f"got {type(tokenizer).__name__}")
        self.eos_id = eos_id if eos_id is not None else self._document_separator()

    def _document_separator(self) -> int | None:
        if not self._is_hf:
            return None
        return document_separator_id(self.tokenizer)

    def special_id(self, token: str, *, required: bool = True) -> int | None:
        """The id of a special token such as `<|im_start|>` (see `seallm_jax.tokenizer.special_token_id`)."""
        token_id = special_token_id(self.tokenizer, token) if self._is_hf else None
        if token_id is None and required:
            raise DataFormatError(f"the tokenizer has no {token!r} token; this data needs a tokenizer with it "
                                  "(Qwen2's has it), or pass its id explicitly")
        return token_id

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts at once; each distinct text is encoded once."""
        unique = list(dict.fromkeys(texts))
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if self._is_hf else None
        if backend is not None:
            # The Rust tokenizer directly: the Python wrapper's per-item conversion costs more than
            # the tokenization itself for short texts.
            encoded = [encoding.ids for encoding in backend.encode_batch(unique, add_special_tokens=False)]
        elif callable(getattr(self.tokenizer, "encode_batch", None)):
            encoded = [list(ids) for ids in self.tokenizer.encode_batch(unique)]
        else:
            encoded = [list(self.encode(text)) for text in unique]
        by_text = dict(zip(unique, encoded))
        return [by_text[text] for text in texts]


def as_tokenizer(tokenizer: object | None, eos_id: int | None = None) -> TokenizerAdapter:
    """None loads the project's Qwen2 tokenizer (`seallm_jax.tokenizer.load_tokenizer()`)."""
    if isinstance(tokenizer, TokenizerAdapter):
        return tokenizer
    if tokenizer is None:
        from seallm_jax.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    elif isinstance(tokenizer, (str, os.PathLike)):
        from seallm_jax.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    return TokenizerAdapter(tokenizer, eos_id=eos_id)


class PackedStream:
    """Batches `[batch_size, seq_len]` from a `Mixture`, packed with segment ids.

    Each row holds consecutive examples as segments 1, 2, ...; positions restart at 0 in every
    segment; padding has segment id 0 and loss mask 0. With `split_examples=True` (pretraining) an
    example that does not fit continues in the next row as a new segment; with False (SFT) it starts
    a fresh row, and only an example longer than a whole row is cut into row-sized pieces.

    `state()` is a small JSON-serialisable position; `restore(state)` makes the stream yield exactly
    the batches it would have yielded after that point.
    """

    def __init__(self, mixture: Mixture, *, seq_len: int, batch_size: int, split_examples: bool = True,
                 pad_id: int = 0, report: LoadReport | None = None):
        if seq_len < 1 or batch_size < 1:
            raise ConfigError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
        self.mixture = mixture
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.split_examples = split_examples
        self.pad_id = pad_id
        self.report = report or LoadReport()
        # The example being placed, how many of its pairs are already placed, and the mixture state
        # from before it was drawn (so that a restored stream can draw it again).
        self._pending: tuple[Example, int, dict] | None = None
        self._finished = False
        self.emitted_tokens = {language: 0 for language in mixture.sources}

    # -- position ---------------------------------------------------------------------------------
    def state(self) -> dict:
        if self._pending is None:
            mixture_state, offset, pending = self.mixture.state(), 0, False
        else:
            _, offset, mixture_state = self._pending
            pending = True
        return {"version": STATE_VERSION, "mixture": copy.deepcopy(mixture_state), "pending": pending,
                "offset": offset, "emitted_tokens": dict(self.emitted_tokens), "finished": self._finished}

    def restore(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataFormatError(f"data state version {state.get('version')!r}, expected {STATE_VERSION}")
        self.mixture.restore(state["mixture"])
        self._pending = None
        if state["pending"]:
            before = self.mixture.state()
            self._pending = (self.mixture.next(), int(state["offset"]), before)
        self.emitted_tokens = {language: int(count) for language, count in state["emitted_tokens"].items()}
        self._finished = bool(state["finished"])

    # -- batches ----------------------------------------------------------------------------------
    def token_shares(self) -> dict[str, float]:
        """Realized share of packed (non-padding) tokens per language so far."""
        total = sum(self.emitted_tokens.values())
        return {language: (count / total if total else 0.0) for language, count in self.emitted_tokens.items()}

    def __iter__(self) -> Iterator[Batch]:
        return self

    def _draw(self) -> bool:
        before = self.mixture.state()
        try:
            example = self.mixture.next()
        except StopIteration:
            return False
        self._pending = (example, 0, before)
        return True

    def __next__(self) -> Batch:
        if self._finished:
            raise StopIteration
        shape = (self.batch_size, self.seq_len)
        input_ids = np.full(shape, self.pad_id, np.int32)
        targets = np.full(shape, self.pad_id, np.int32)
        loss_mask = np.zeros(shape, np.float32)
        segment_ids = np.zeros(shape, np.int32)
        positions = np.zeros(shape, np.int32)
        placed_any = False
        for row in range(self.batch_size):
            column, segment = 0, 0
            while column < self.seq_len:
                if self._pending is None and not self._draw():
                    self._finished = True
                    break
                example, offset, before = self._pending
                remaining = example.num_pairs - offset
                space = self.seq_len - column
                if remaining <= 0:
                    self._pending = None
                    continue
                if remaining > space and not self.split_examples and column > 0:
                    break  # start this example on a fresh row
                count = min(remaining, space)
                segment += 1
                span = slice(column, column + count)
                tokens = example.tokens
                input_ids[row, span] = tokens[offset:offset + count]
                targets[row, span] = tokens[offset + 1:offset + count + 1]
                loss_mask[row, span] = example.loss_mask[offset + 1:offset + count + 1]
                segment_ids[row, span] = segment
                positions[row, span] = np.arange(count)
                self.emitted_tokens[example.language] += count
                placed_any = True
                column += count
                self._pending = None if count == remaining else (example, offset + count, before)
            if self._finished:
                break
        if not placed_any:
            raise StopIteration
        return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask,
                "segment_ids": segment_ids, "positions": positions}


def document_examples(documents: Sequence[Document], tokenizer: TokenizerAdapter) -> list[Example]:
    """Pretraining examples: the document's tokens then <|endoftext|>, every target counted."""
    if tokenizer.eos_id is None:
        raise DataFormatError("the tokenizer has no <|endoftext|>, BOS or EOS token to separate documents; "
                              "pass eos_id= explicitly")
    examples = []
    for document, tokens in zip(documents, tokenizer.encode_batch([doc.text for doc in documents])):
        tokens = list(tokens) + [tokenizer.eos_id]
        examples.append(Example(tokens, [1.0] * len(tokens), document.language))
    return examples


def build_mixture(examples: Mapping[str, Sequence[Example]], *, weighting: WeightMethod = "proportional",
                  weights: Mapping[str, float] | None = None, temperature: float = DEFAULT_TEMPERATURE,
                  token_caps: Mapping[str, int] | None = None, max_epochs: int | None = None,
                  seed: int = 0, process_index: int = 0, process_count: int = 1,
                  shuffle: bool = True) -> Mixture:
    """A `Mixture` over per-language examples with weights from their token counts."""
    sizes = {language: sum(example.num_pairs for example in items) for language, items in examples.items()}
    resolved = mixture_weights(sizes, weighting, weights=weights, temperature=temperature)
    sources = {language: ExampleSource(language, items, seed=seed, process_index=process_index,
                                       process_count=process_count, shuffle=shuffle, max_epochs=max_epochs)
               for language, items in examples.items() if language in resolved}
    return Mixture(sources, resolved, token_caps)


CorpusArg = Union[None, Mapping[str, Sequence[Document]], Mapping[str, Union[str, Sequence[str]]]]


def _documents(corpus: CorpusArg, split: str | None, languages: Sequence[str] | None) -> dict[str, list[Document]]:
    if corpus is None:
        return load_corpus(split, languages)
    if not corpus:
        raise DataFormatError("empty source: the corpus has no languages")
    first = next(iter(corpus.values()))
    if isinstance(first, (str, os.PathLike)) or (first and isinstance(first[0], (str, os.PathLike))):
        corpus = load_files(corpus, split=split)
    if languages is not None:
        missing = [language for language in languages if language not in corpus]
        if missing:
            raise UnknownLanguageError(f"no data for {missing}; the corpus has {', '.join(corpus)}")
        corpus = {language: corpus[language] for language in languages}
    for language, documents in corpus.items():
        if not documents:
            raise DataFormatError(f"empty source: no documents for language {language!r} in split {split!r}")
    return dict(corpus)


def pretraining_stream(*, languages: Sequence[str] | None = None, split: str | None = "train", seq_len: int = 512,
                       batch_size: int = 8, seed: int = 0, tokenizer: object | None = None,
                       process_index: int = 0, process_count: int = 1, corpus: CorpusArg = None,
                       weighting: WeightMethod = "proportional", weights: Mapping[str, float] | None = None,
                       temperature: float = DEFAULT_TEMPERATURE, token_caps: Mapping[str, int] | None = None,
                       max_epochs: int | None = None, split_documents: bool = True, shuffle: bool = True,
                       eos_id: int | None = None, pad_id: int | None = None) -> PackedStream:
    """The pretraining / LSN stream over the shipped corpus (or `corpus`: {language: files}, split by
    `split`, or {language: [Document]}, used as given); plain arguments so that an ml_collections
    config can call it directly.

    `batch_size` is per process; `max_epochs=None` repeats forever (reshuffled every epoch). For
    held-out evaluation use split="validation", max_epochs=1, shuffle=False.
    """
    adapter = as_tokenizer(tokenizer, eos_id)
    documents = _documents(corpus, split, languages)
    examples = {language: document_examples(docs, adapter) for language, docs in documents.items()}
    mixture = build_mixture(examples, weighting=weighting, weights=weights, temperature=temperature,
                            token_caps=token_caps, max_epochs=max_epochs, seed=seed,
                            process_index=process_index, process_count=process_count, shuffle=shuffle)
    return PackedStream(mixture, seq_len=seq_len, batch_size=batch_size, split_examples=split_documents,
                        pad_id=adapter.eos_id if pad_id is None else pad_id)
