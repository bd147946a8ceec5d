"""Packed, resumable batches of whole examples (SFT conversations) from a language mixture, with segment
ids (examples never attend to each other) in the data contract of docs/architecture.md; and the tokenizer
adapter the data code shares. Pretraining text is read by the token loader (`seallm_jax.data.loader`).
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from seallm_jax.data.corpus import LoadReport
from seallm_jax.data.mixture import (DEFAULT_TEMPERATURE, Example, ExampleSource, Mixture, WeightMethod,
                                     mixture_weights)
from seallm_jax.errors import ConfigError, DataFormatError
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
    segment; padding has segment id 0 and loss mask 0. An example that does not fit the rest of a row
    starts a fresh row; only an example longer than a whole row is cut into row-sized pieces.

    `state()` is a small JSON-serialisable position; `restore(state)` makes the stream yield exactly
    the batches it would have yielded after that point.
    """

    def __init__(self, mixture: Mixture, *, seq_len: int, batch_size: int,
                 pad_id: int = 0, report: LoadReport | None = None):
        if seq_len < 1 or batch_size < 1:
            raise ConfigError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
        self.mixture = mixture
        self.seq_len = seq_len
        self.batch_size = batch_size
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
                if remaining > space and column > 0:
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
