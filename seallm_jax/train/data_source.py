"""Where training batches come from: the config picks the source; each process gets only its rows.

A source yields this process's rows of each global batch (numpy dicts per docs/architecture.md) and
exposes `state()` / `restore(state)`: a JSON-serialisable position saved with every checkpoint.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import ml_collections
import numpy as np

from seallm_jax.errors import ConfigError

if TYPE_CHECKING:
    from seallm_jax.tokenizer.vocabulary import VocabularySubset


class BatchSource(Protocol):
    def __next__(self) -> dict[str, np.ndarray]: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


class SyntheticSource:
    """Packed rows of arithmetic token sequences `start, start+k, start+2k, ... (mod vocab)`.

    Learnable (the stride is visible from context), deterministic from (seed, batch index), and
    identical for any number of processes: every batch is drawn for the whole global batch and each
    process keeps its rows [row_start, row_stop). Rows hold 1-3 documents and end in padding
    (segment 0, loss_mask 0), so masking and packing are exercised.
    """

    def __init__(self, *, vocab_size: int, seq_len: int, global_batch_size: int, row_start: int, row_stop: int,
                 seed: int):
        self.vocab_size, self.seq_len, self.global_batch_size = vocab_size, seq_len, global_batch_size
        self.row_start, self.row_stop, self.seed = row_start, row_stop, seed
        self.index = 0

    def _global_batch(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        b, t = self.global_batch_size, self.seq_len
        tokens = np.zeros((b, t + 1), np.int64)
        segments = np.zeros((b, t + 1), np.int32)
        positions = np.zeros((b, t + 1), np.int32)
        for row in range(b):
            cursor, segment = 0, 1
            # leave a random tail of padding (up to an eighth of the row)
            end = t + 1 - int(rng.integers(0, max(t // 8, 1) + 1))
            while cursor < end and segment <= 3:
                length = end - cursor if segment == 3 else int(rng.integers(t // 4, t + 1))
                length = min(length, end - cursor)
                start, stride = rng.integers(0, self.vocab_size), rng.integers(1, 8)
                tokens[row, cursor:cursor + length] = (start + stride * np.arange(length)) % self.vocab_size
                segments[row, cursor:cursor + length] = segment
                positions[row, cursor:cursor + length] = np.arange(length)
                cursor += length
                segment += 1
        same_doc = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
        return {
            "input_ids": tokens[:, :-1].astype(np.int32),
            "targets": tokens[:, 1:].astype(np.int32),
            "loss_mask": same_doc.astype(np.float32),
            "segment_ids": segments[:, :-1],
            "positions": positions[:, :-1],
        }

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._global_batch(self.index)
        self.index += 1
        return {k: v[self.row_start:self.row_stop] for k, v in batch.items()}

    def state(self) -> dict[str, Any]:
        return {"index": self.index}

    def restore(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


def make_source(config: ml_collections.ConfigDict, *, split: str, row_start: int, row_stop: int,
                vocab_size: int) -> BatchSource:
    """The batch source for `split` ('train' or 'eval') of `config.data.source`.

    'corpus' is the data package's packing stream (`seallm_jax.data.stream.pretraining_stream`) over
    the shipped corpus, this process reading its own shard of documents. 'sft' is its chat stream
    (`seallm_jax.data.sft.sft_stream`): `config.data.files` (JSON-lines conversations) or, when empty,
    translation conversations from the shipped parallel corpus; 'eval' reads the validation split.
    """
    source = config.data.source
    global_batch = int(config.train.global_batch_size)
    if source == "synthetic":
        # The eval split is a different seed: same distribution, batches never seen in training.
        seed = int(config.data.seed) * 2 + (1 if split == "eval" else 0)
        return SyntheticSource(vocab_size=vocab_size, seq_len=int(config.train.seq_len), global_batch_size=global_batch,
                               row_start=row_start, row_stop=row_stop, seed=seed)
    rows = row_stop - row_start
    data = config.data
    data_split = "validation" if split == "eval" else "train"
    if source == "corpus":
        from seallm_jax.data.stream import pretraining_stream
        return pretraining_stream(
            languages=list(data.languages) or None, split=data_split,
            seq_len=int(config.train.seq_len), batch_size=rows, seed=int(data.seed),
            tokenizer=data.tokenizer or None, process_index=row_start // rows, process_count=global_batch // rows,
            weighting=data.weighting, temperature=float(data.temperature))
    if source == "sft":
        from seallm_jax.data.sft import load_conversations, sft_stream
        # User files are split by the same id hash as the shipped corpus, so held-out loss is on
        # conversations never trained on.
        conversations = load_conversations(list(data.files), split=data_split) if data.files else None
        max_per_language = int(data.max_per_language)
        return sft_stream(
            conversations=conversations, languages=list(data.languages) or None, split=data_split,
            seq_len=int(config.train.seq_len), batch_size=rows, seed=int(data.seed),
            tokenizer=data.tokenizer or None, process_index=row_start // rows, process_count=global_batch // rows,
            weighting=data.weighting, temperature=float(data.temperature), truncation=data.truncation,
            min_source_chars=int(data.min_source_chars), max_per_language=max_per_language or None)
    raise ConfigError(f"config.data.source={source!r}: expected 'synthetic', 'corpus' or 'sft'")


def sft_vocabulary(directory: str | os.PathLike, *, languages: Sequence[str] | None = None,
                   max_per_language: int | None = None, min_source_chars: Sequence[int] = (0,)) -> "VocabularySubset":
    """Save to `directory` the Qwen2 vocabulary subset of the shipped translation conversations that
    these settings select (train and validation splits, each `min_source_chars` value: one
    vocabulary for every SFT stage), unless it is already there; returns it (`len()` is the model's
    vocab_size, `eos_token_id` its end-of-text id).

    A tiny CPU model trains in seconds on a few thousand rows of embedding instead of 151,936.
    """
    from seallm_jax.data.sft import ROLES, QWEN2_DEFAULT_SYSTEM, translation_conversations
    from seallm_jax.files import atomic_directory
    from seallm_jax.tokenizer import load_tokenizer
    from seallm_jax.tokenizer.vocabulary import FILE_NAME, VocabularySubset

    directory = os.fspath(directory)
    saved = os.path.join(directory, FILE_NAME)
    if not os.path.exists(saved):
        # The renderer encodes each message content and each role header on its own: exactly these texts.
        texts = [f"{role}\n" for role in ROLES] + ["\n", QWEN2_DEFAULT_SYSTEM]
        for split in ("train", "validation"):
            for chars in min_source_chars:
                grouped = translation_conversations(split, languages, min_source_chars=chars,
                                                    max_per_language=max_per_language)
                texts += [m.content for items in grouped.values() for c in items for m in c.messages]
        subset = VocabularySubset.from_texts(load_tokenizer(), texts)
        # Written beside, then renamed: concurrent processes never read a half-written subset.
        with atomic_directory(directory, if_exists="keep") as staging:
            subset.save_pretrained(staging)
    return VocabularySubset.load(directory)
