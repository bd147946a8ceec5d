"""Where training batches come from: the config picks the source; each process gets only its rows.

A source yields this process's rows of each global batch (numpy dicts per docs/architecture.md) and
exposes `state()` / `restore(state)`: a JSON-serialisable position saved with every checkpoint.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import ml_collections
import numpy as np


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
    the shipped corpus, this process reading its own shard of documents.
    """
    source = config.data.source
    global_batch = int(config.train.global_batch_size)
    if source == "synthetic":
        # The eval split is a different seed: same distribution, batches never seen in training.
        seed = int(config.data.seed) * 2 + (1 if split == "eval" else 0)
        return SyntheticSource(vocab_size=vocab_size, seq_len=int(config.train.seq_len), global_batch_size=global_batch,
                               row_start=row_start, row_stop=row_stop, seed=seed)
    if source == "corpus":
        from seallm_jax.data.stream import pretraining_stream
        rows = row_stop - row_start
        data = config.data
        return pretraining_stream(
            languages=list(data.languages) or None, split="validation" if split == "eval" else "train",
            seq_len=int(config.train.seq_len), batch_size=rows, seed=int(data.seed),
            tokenizer=data.tokenizer or None, process_index=row_start // rows, process_count=global_batch // rows,
            weighting=data.weighting)
    raise ValueError(f"config.data.source={source!r}: expected 'synthetic' or 'corpus'")
