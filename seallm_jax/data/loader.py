"""The one deterministic loader of token stores: the batch at step s is a pure function of (seed, data
config, store fingerprints, s), each process builds only its own rows, and resume is O(1).

`TokenLoader` mixes languages for training (rows are windows of `seq_len + 1` tokens, or for conversation
stores packs of whole conversations; permuted per epoch by a keyed Feistel permutation, languages realised
per block of rows by largest remainder); `SequentialLoader` reads every window (or every document) of a
split once, in order, for statistics and held-out eval.
Batches follow the data contract of docs/architecture.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from seallm_jax.data.mixture import DEFAULT_TEMPERATURE, WeightMethod, mixture_weights
from seallm_jax.errors import ConfigError, DataFormatError, UnknownLanguageError, UserError

Batch = dict[str, np.ndarray]
Pack = Literal["windows", "documents"]
Truncation = Literal["turns", "tokens", "drop"]
TRUNCATIONS = ("turns", "tokens", "drop")
STATE_FORMAT = "seallm-jax-token-loader"
# Rows per mixture block: each block holds every language's share to within one row, so the realised
# share of a language deviates from its weight by at most 1/DEFAULT_BLOCK_ROWS over any block.
DEFAULT_BLOCK_ROWS = 1024
_MASK64 = (1 << 64) - 1
_FEISTEL_ROUNDS = 6


class DocumentArray(Protocol):
    """What the loader reads of one (language, split) of a store (seallm_jax.data.store.DocumentArray)."""

    num_documents: int
    num_tokens: int
    offsets: np.ndarray

    def tokens(self, start: int, stop: int) -> np.ndarray: ...
    def loss_mask(self, start: int, stop: int) -> np.ndarray | None: ...


class DataChangedError(UserError, ValueError):
    """A checkpoint's data position was made with other stores, another tokenizer or another mixture."""


# ---- keyed permutation of [0, n) without materialising it --------------------------------------------

def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a well-spread hash of each value."""
    z = values ^ (values >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)  # uint64 array arithmetic wraps silently
    z ^= z >> np.uint64(27)
    z = z * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def _mix64_int(value: int) -> int:
    z = value & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _key(*parts: int) -> int:
    """A 64-bit key from integers (seed, language, epoch, ...), by chaining splitmix64."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (_mix64_int(state ^ (int(part) & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
    return state


def permute(indices: np.ndarray, n: int, key: int) -> np.ndarray:
    """The images of `indices` under a pseudo-random permutation of [0, n) chosen by `key`.

    A balanced Feistel network over the smallest even power of two >= n, cycle-walked back into
    [0, n): a bijection computed per index in O(1), so an epoch of 10^9 windows needs no array of 10^9.
    """
    indices = np.asarray(indices, np.uint64)
    if n <= 1:
        return np.zeros(indices.shape, np.int64)
    half_bits = max(1, math.ceil(math.ceil(math.log2(n)) / 2))
    half_mask = np.uint64((1 << half_bits) - 1)
    shift = np.uint64(half_bits)
    round_keys = [np.uint64(_key(key, r)) for r in range(_FEISTEL_ROUNDS)]
    out = indices.copy()
    todo = np.ones(out.shape, bool)
    limit = np.uint64(n)
    while todo.any():
        x = out[todo]
        left, right = x >> shift, x & half_mask
        for round_key in round_keys:
            left, right = right, left ^ (_mix64(right ^ round_key) & half_mask)
        x = (left << shift) | right
        out[todo] = x
        todo[todo] = x >= limit  # cycle-walk: apply again until inside [0, n)
    return out.astype(np.int64)


# ---- rows ---------------------------------------------------------------------------------------------

def empty_batch(rows: int, seq_len: int, pad_id: int) -> Batch:
    return {"input_ids": np.full((rows, seq_len), pad_id, np.int32),
            "targets": np.full((rows, seq_len), pad_id, np.int32),
            "loss_mask": np.zeros((rows, seq_len), np.float32),
            "segment_ids": np.zeros((rows, seq_len), np.int32),
            "positions": np.zeros((rows, seq_len), np.int32)}


def fill_row(batch: Batch, row: int, array: DocumentArray, ranges: Sequence[tuple[int, int]]) -> int:
    """Write token ranges [start, stop) of `array` into `row`: each range of k + 1 tokens gives k
    input/target columns. Segment ids restart at each document boundary (from the offsets), positions
    restart at 0 in each segment, and a target counts only inside its input's document (and where the
    store's loss mask, if any, says so). Returns the columns written."""
    column, segment = 0, 0
    offsets = array.offsets
    for start, stop in ranges:
        count = stop - start - 1
        if count <= 0:
            continue
        tokens = np.asarray(array.tokens(start, stop)).astype(np.int32)
        # Documents that start inside the range (its first document may have started before it).
        first = int(np.searchsorted(offsets, start, side="right"))
        last = int(np.searchsorted(offsets, stop - 1, side="right"))
        starts = np.asarray(offsets[first:last], np.int64) - start
        boundary = np.zeros(count + 1, np.int32)
        boundary[starts] = 1
        local = np.cumsum(boundary)  # 0 for the first document, 1 for the next, ...
        segments = local + segment + 1
        positions = np.arange(count + 1, dtype=np.int32) - np.concatenate([[0], starts]).astype(np.int32)[local]
        span = slice(column, column + count)
        batch["input_ids"][row, span] = tokens[:-1]
        batch["targets"][row, span] = tokens[1:]
        counts = (local[1:] == local[:-1]).astype(np.float32)
        mask = array.loss_mask(start, stop)
        if mask is not None:
            counts *= np.asarray(mask[1:], np.float32)
        batch["loss_mask"][row, span] = counts
        batch["segment_ids"][row, span] = segments[:-1]
        batch["positions"][row, span] = positions[:-1]
        # The range's last token is only a target (it may open a new document): the next range's
        # first segment follows the last one written.
        segment = int(segments[-2])
        column += count
    return column


def fill_windows(batch: Batch, rows: np.ndarray, array: DocumentArray, starts: np.ndarray, stops: np.ndarray) -> None:
    """`fill_row` for many rows at once, each one range [start, stop) of `array` (a window): the same
    segments, positions and loss mask, computed for the whole group with array operations."""
    rows, starts, stops = np.asarray(rows), np.asarray(starts, np.int64), np.asarray(stops, np.int64)
    width = batch["input_ids"].shape[1] + 1
    tokens = np.zeros((len(rows), width), np.int32)
    for index, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist())):
        tokens[index, :stop - start] = array.tokens(start, stop)
    offsets = array.offsets
    # Every document start strictly inside a window marks a new segment from that column on.
    first = np.searchsorted(offsets, starts.astype(np.uint64), side="right").astype(np.int64)
    last = np.searchsorted(offsets, (stops - 1).astype(np.uint64), side="right").astype(np.int64)
    counts = last - first
    boundary = np.zeros((len(rows), width), np.int32)
    if counts.sum():
        owner = np.repeat(np.arange(len(rows)), counts)
        document = first[owner] + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        boundary[owner, np.asarray(offsets[document], np.int64) - starts[owner]] = 1
    local = np.cumsum(boundary, axis=1)
    columns = np.arange(width, dtype=np.int32)
    segment_start = np.maximum.accumulate(np.where(boundary == 1, columns, 0), axis=1)
    valid = columns[:-1] < (stops - starts - 1)[:, None]  # a short (last) window ends in padding
    counted = (local[:, 1:] == local[:, :-1]) & valid
    if getattr(array, "has_loss_mask", True):
        for index, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist())):
            mask = array.loss_mask(start, stop)
            if mask is None:
                break
            counted[index, :stop - start - 1] &= np.asarray(mask[1:], bool)
    batch["input_ids"][rows] = np.where(valid, tokens[:, :-1], batch["input_ids"][rows])
    batch["targets"][rows] = np.where(valid, tokens[:, 1:], batch["targets"][rows])
    batch["loss_mask"][rows] = counted
    batch["segment_ids"][rows] = np.where(valid, local[:, :-1] + 1, 0)
    batch["positions"][rows] = np.where(valid, columns[:-1] - segment_start[:, :-1], 0)


class _Windows:
    """One language's windows: fixed ranges of `seq_len + 1` tokens (consecutive windows share one
    token, so every token after the first is a target exactly once) over its arrays, back to back."""

    def __init__(self, arrays: Sequence[DocumentArray], seq_len: int, *, cover_tail: bool):
        self.arrays = list(arrays)
        self.seq_len = seq_len
        counts = []
        for array in self.arrays:
            pairs = max(int(array.num_tokens) - 1, 0)
            if cover_tail:
                counts.append(-(-pairs // seq_len))
            else:  # training drops a short tail, except where it is all there is
                counts.append(max(pairs // seq_len, 1 if pairs else 0))
        self.cumulative = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.count = int(self.cumulative[-1])

    def fill(self, batch: Batch, rows: np.ndarray, indices: np.ndarray) -> None:
        """Write windows `indices` into batch rows `rows`."""
        which, starts, stops = self.locate(indices)
        for number in np.unique(which).tolist():
            group = which == number
            fill_windows(batch, rows[group], self.arrays[number], starts[group], stops[group])

    def window(self, index: int) -> tuple[DocumentArray, int, int]:
        which, starts, stops = self.locate(np.asarray([index]))
        return self.arrays[int(which[0])], int(starts[0]), int(stops[0])

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(array number, start, stop) of each window in `indices`."""
        which = np.searchsorted(self.cumulative, indices, side="right") - 1
        starts = (indices - self.cumulative[which]) * self.seq_len
        sizes = np.asarray([int(array.num_tokens) for array in self.arrays], np.int64)
        return which, starts, np.minimum(starts + self.seq_len + 1, sizes[which])


class _Packs:
    """One language's rows of whole documents (conversations): the documents, in an order fixed by the
    seed, packed greedily (one that does not fit the rest of a row starts the next row), never cut across
    rows. A document longer than a row (`seq_len + 1` tokens) is shortened by `truncation`: "turns" keeps
    its longest prefix ending with an assistant answer (its last masked token), "tokens" its first
    `seq_len + 1` tokens (if they hold a masked one), "drop" drops it; one left with nothing to learn is
    dropped. The store's document separator is not read (it is never a target).

    Unlike windows, the plan reads every document's offsets once (8 bytes a document): conversation sets
    are small next to pretraining text.
    """

    def __init__(self, arrays: Sequence[DocumentArray], seq_len: int, *, key: int, truncation: Truncation,
                 language: str = ""):
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation {truncation!r}: expected one of {', '.join(TRUNCATIONS)}")
        self.arrays = list(arrays)
        self.seq_len = seq_len
        self.documents = self.truncated = self.dropped = 0
        self.starts, self.stops, self.row_first = [], [], []
        counts = []
        for number, array in enumerate(self.arrays):
            offsets = np.asarray(array.offsets, np.int64)
            starts, stops = offsets[:-1], offsets[1:] - 1  # without the separator
            self.documents += len(starts)
            order = permute(np.arange(len(starts)), len(starts), _key(key, number))
            starts, stops = starts[order], stops[order]
            stops = self._shorten(array, starts, stops, truncation)
            keep = stops - starts > 1
            starts, stops = starts[keep], stops[keep]
            row_first = _greedy_rows(stops - starts - 1, seq_len)
            self.starts.append(starts)
            self.stops.append(stops)
            self.row_first.append(row_first)
            counts.append(len(row_first) - 1)
        self.cumulative = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.count = int(self.cumulative[-1])

    def _shorten(self, array: DocumentArray, starts: np.ndarray, stops: np.ndarray, truncation: Truncation) -> np.ndarray:
        stops = stops.copy()
        limit = self.seq_len + 1
        for index in np.flatnonzero(stops - starts > limit).tolist():
            start = int(starts[index])
            mask = array.loss_mask(start, start + limit + 1)  # the document is longer than that
            cut = 0
            if truncation == "turns" and mask is not None:
                mask = np.asarray(mask, bool)
                # An answer ends where a masked token is followed by an unmasked one.
                ends = np.flatnonzero(mask[:limit] & ~mask[1:limit + 1])
                cut = int(ends[-1]) + 1 if len(ends) else 0
            elif truncation == "tokens" and (mask is None or np.asarray(mask[1:limit]).any()):
                cut = limit
            if cut > 1:
                self.truncated += 1
            else:
                self.dropped += 1
            stops[index] = start + cut
        return stops

    def fill(self, batch: Batch, rows: np.ndarray, indices: np.ndarray) -> None:
        """Write packs `indices` into batch rows `rows`."""
        which = np.searchsorted(self.cumulative, indices, side="right") - 1
        for row, number, index in zip(rows.tolist(), which.tolist(), indices.tolist()):
            local = index - int(self.cumulative[number])
            first, last = int(self.row_first[number][local]), int(self.row_first[number][local + 1])
            ranges = list(zip(self.starts[number][first:last].tolist(), self.stops[number][first:last].tolist()))
            fill_row(batch, row, self.arrays[number], ranges)


def _greedy_rows(pairs: np.ndarray, seq_len: int) -> np.ndarray:
    """Row boundaries of documents of `pairs` input/target pairs each (all <= seq_len), packed in order:
    the index of each row's first document, then len(pairs)."""
    firsts = [0]
    column = 0
    for index, count in enumerate(pairs.tolist()):
        if column + count > seq_len:
            firsts.append(index)
            column = 0
        column += count
    if len(pairs) == 0:
        return np.zeros(1, np.int64)
    return np.asarray(firsts + [len(pairs)], np.int64)


def _largest_remainder(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to `total`, each within one of weight * total (ties by listed order)."""
    exact = {language: weight * total for language, weight in weights.items()}
    counts = {language: int(math.floor(value)) for language, value in exact.items()}
    order = sorted(exact, key=lambda language: -(exact[language] - counts[language]))
    for language in order[:total - sum(counts.values())]:
        counts[language] += 1
    return counts


def fingerprint(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two loader descriptions, in words (for the resume error)."""
    names = {"stores": "the token store(s)", "tokenizer": "the stores' tokenizer", "weights": "the mixture weights",
             "languages": "the languages", "seq_len": "train.seq_len", "global_batch_size": "train.global_batch_size",
             "seed": "data.seed", "block_rows": "data.mixture_block_rows", "split": "the split",
             "truncation": "data.truncation", "pack": "the packing (windows or whole conversations)"}
    found = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            detail = ""
            if key == "stores":
                old, new = saved.get(key) or {}, current.get(key) or {}
                changed = sorted(language for language in set(old) | set(new) if old.get(language) != new.get(language))
                detail = f" of {', '.join(changed)}"
            elif key in ("weights", "languages", "seq_len", "global_batch_size", "seed", "block_rows", "split",
                         "truncation", "pack"):
                detail = f" ({saved.get(key)} -> {current.get(key)})"
            found.append(names.get(key, key) + detail)
    return found


class TokenLoader:
    """Training batches from per-language document arrays: a pure function of the step.

    Row r of the run (step * global_batch_size + i) lies in mixture block r // block_rows; each block
    holds each language's row count by largest remainder of its weight, in an order permuted by
    (seed, block). A language's k-th row is unit `permute(k mod W, W, key(seed, language, epoch))`
    of its W units, epoch = k // W. This process builds rows [row_start, row_stop) of each step.
    A unit is a window of `seq_len + 1` tokens (pack="windows"), or a pack of whole documents
    (pack="documents", conversations; see `_Packs` for `truncation`).
    """

    def __init__(self, sources: Mapping[str, Sequence[DocumentArray]], weights: Mapping[str, float], *,
                 seq_len: int, global_batch_size: int, row_start: int = 0, row_stop: int | None = None,
                 seed: int = 0, block_rows: int = 0, pad_id: int = 0,
                 description: Mapping[str, Any] | None = None, pack: Pack = "windows",
                 truncation: Truncation = "turns"):
        if seq_len < 1 or global_batch_size < 1:
            raise ConfigError(f"seq_len and global_batch_size must be positive, got {seq_len}, {global_batch_size}")
        row_stop = global_batch_size if row_stop is None else row_stop
        if not 0 <= row_start < row_stop <= global_batch_size:
            raise ConfigError(f"rows [{row_start}, {row_stop}) outside the global batch of {global_batch_size}")
        unknown = sorted(set(weights) - set(sources))
        if unknown:
            raise UnknownLanguageError(f"mixture weight for {', '.join(unknown)}, which has no data; "
                                       f"have {', '.join(sources)}")
        self.languages = [language for language in sources if weights.get(language, 0) > 0]
        if not self.languages:
            raise ConfigError("the mixture gives no language a positive weight")
        if pack not in ("windows", "documents"):
            raise ConfigError(f"pack={pack!r}: expected 'windows' or 'documents'")
        self.units: dict[str, _Windows | _Packs] = {}
        for language in self.languages:
            if pack == "windows":
                self.units[language] = _Windows(sources[language], seq_len, cover_tail=False)
            else:
                packs = self.units[language] = _Packs(sources[language], seq_len, truncation=truncation,
                                                      key=_key(seed, zlib.crc32(language.encode()), 0x7061636B))
                _report_truncation(language, packs, seq_len, truncation)
            if self.units[language].count == 0:
                raise DataFormatError(f"empty source: language {language!r} has no tokens to train on"
                                      + (f" (no conversation fits {seq_len + 1} tokens under truncation="
                                         f"{truncation!r})" if pack == "documents" else ""))
        self.weights = {language: float(weights[language]) for language in self.languages}
        self.seq_len, self.global_batch_size = seq_len, global_batch_size
        self.row_start, self.row_stop = row_start, row_stop
        self.seed, self.pad_id = int(seed), int(pad_id)
        # A block is a whole number of global batches, at least DEFAULT_BLOCK_ROWS rows by default.
        block_rows = block_rows or DEFAULT_BLOCK_ROWS
        self.block_rows = -(-block_rows // global_batch_size) * global_batch_size
        self.block_counts = _largest_remainder(self.weights, self.block_rows)
        self._language_keys = {language: zlib.crc32(language.encode()) for language in self.languages}
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.description = dict(description or {})
        self.description.update(weights=self.weights, seq_len=seq_len, global_batch_size=global_batch_size,
                                seed=self.seed, block_rows=self.block_rows)
        if pack == "documents":
            self.description.update(pack=pack, truncation=truncation)
        self.step = 0

    # -- the schedule ------------------------------------------------------------------------------
    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(language index, ordinal of the row among its language's rows in the block) per block row."""
        cached = self._blocks.get(block)
        if cached is None:
            counts = [self.block_counts[language] for language in self.languages]
            assignment = np.repeat(np.arange(len(counts)), counts)
            order = permute(np.arange(self.block_rows), self.block_rows, _key(self.seed, 0x626C6F636B, block))
            assignment = assignment[order]
            ordinal = np.empty(self.block_rows, np.int64)
            for index in range(len(counts)):
                rows = np.flatnonzero(assignment == index)
                ordinal[rows] = np.arange(len(rows))
            cached = (assignment, ordinal)
            if len(self._blocks) > 4:
                self._blocks.clear()
            self._blocks[block] = cached
        return cached

    def row_plan(self, step: int) -> list[tuple[str, int, int]]:
        """(language, epoch, unit) of this process's rows at `step`."""
        languages, epochs, windows = self._plan(step)
        return [(self.languages[int(language)], int(epoch), int(window))
                for language, epoch, window in zip(languages, epochs, windows)]

    def _plan(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.arange(step * self.global_batch_size + self.row_start, step * self.global_batch_size + self.row_stop,
                         dtype=np.int64)
        blocks, inside = np.divmod(rows, self.block_rows)
        languages = np.empty(len(rows), np.int64)
        ordinals = np.empty(len(rows), np.int64)
        for block in np.unique(blocks).tolist():
            assignment, ordinal = self._block(block)
            here = blocks == block
            languages[here] = assignment[inside[here]]
            ordinals[here] = ordinal[inside[here]]
        counts = np.asarray([self.block_counts[language] for language in self.languages], np.int64)
        k = blocks * counts[languages] + ordinals  # the row's number among its language's rows
        sizes = np.asarray([self.units[language].count for language in self.languages], np.int64)
        epochs, indices = np.divmod(k, sizes[languages])
        windows = np.empty(len(rows), np.int64)
        for language, epoch in {(int(a), int(b)) for a, b in zip(languages, epochs)}:
            here = (languages == language) & (epochs == epoch)
            name = self.languages[language]
            windows[here] = permute(indices[here], int(sizes[language]),
                                    _key(self.seed, self._language_keys[name], epoch))
        return languages, epochs, windows

    def batch(self, step: int) -> Batch:
        """This process's rows of the global batch at `step`."""
        batch = empty_batch(self.row_stop - self.row_start, self.seq_len, self.pad_id)
        languages, _, windows = self._plan(step)
        for language in np.unique(languages).tolist():
            rows = np.flatnonzero(languages == language)
            self.units[self.languages[language]].fill(batch, rows, windows[rows])
        return batch

    def rows_consumed(self, steps: int) -> dict[str, int]:
        """Rows of each language in the first `steps` global batches (all processes)."""
        rows = steps * self.global_batch_size
        blocks, rest = divmod(rows, self.block_rows)
        consumed = {language: blocks * count for language, count in self.block_counts.items()}
        if rest:
            assignment, _ = self._block(blocks)
            seen = np.bincount(assignment[:rest], minlength=len(self.languages))
            for index, language in enumerate(self.languages):
                consumed[language] += int(seen[index])
        return consumed

    def epochs(self, steps: int | None = None) -> dict[str, float]:
        """Passes over each language's units in the first `steps` steps (default: so far)."""
        consumed = self.rows_consumed(self.step if steps is None else steps)
        return {language: consumed[language] / self.units[language].count for language in self.languages}

    def metrics(self) -> dict[str, float]:
        """Epochs of the languages that repeat (more than one pass so far), for the training log."""
        return {f"data_epochs_{language}": round(epochs, 4) for language, epochs in self.epochs().items() if epochs > 1}

    # -- iteration and position ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = self.batch(self.step)
        self.step += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "step": self.step, "fingerprint": fingerprint(self.description),
                "data": self.description}

    def restore(self, state: Mapping[str, Any], *, allow_changes: bool = False) -> list[str]:
        """Continue at the saved step. Different stores, tokenizer or mixture raise DataChangedError naming
        them unless `allow_changes` (then the differences are returned, for a warning)."""
        if state.get("format") != STATE_FORMAT:
            raise DataChangedError("the checkpoint's data position is not from a token loader (it was saved "
                                   "with another config.data.source, or by a version that read source 'corpus' "
                                   "with the old packing stream); resume with the same source")
        found = [] if state.get("fingerprint") == fingerprint(self.description) else (
            changes(state.get("data") or {}, self.description) or ["the data description"])
        if found and not allow_changes:
            raise DataChangedError(
                f"the checkpoint was saved with other data: {'; '.join(found)} changed since. Resume with the "
                "same data, or pass --config.data.allow_data_changes=true to continue at the saved step anyway")
        self.step = int(state["step"])
        return found


def _report_truncation(language: str, packs: _Packs, seq_len: int, truncation: str) -> None:
    """Nothing shortened or dropped silently: a warning says how many conversations did not fit a row."""
    if packs.truncated or packs.dropped:
        import warnings

        warnings.warn(f"{language}: {packs.truncated + packs.dropped} of {packs.documents} conversations do not fit "
                      f"a row of {seq_len + 1} tokens: {packs.truncated} truncated, {packs.dropped} dropped "
                      f"(truncation={truncation!r})", stacklevel=3)


class SequentialLoader:
    """Every window (pack='windows') or every document (pack='documents': whole documents per row, a
    longer one cut into row-sized pieces) of some arrays once, in order, unshuffled; finite.

    Batches of `global_batch_size` rows, this process building rows [row_start, row_stop); the last
    batch is padded, and every process stops after the same batch whatever its rows hold.
    """

    def __init__(self, arrays: Sequence[DocumentArray], *, seq_len: int, global_batch_size: int,
                 row_start: int = 0, row_stop: int | None = None, pack: Literal["windows", "documents"] = "windows",
                 pad_id: int = 0):
        if pack not in ("windows", "documents"):
            raise ConfigError(f"pack={pack!r}: expected 'windows' or 'documents'")
        row_stop = global_batch_size if row_stop is None else row_stop
        if not 0 <= row_start < row_stop <= global_batch_size:
            raise ConfigError(f"rows [{row_start}, {row_stop}) outside the global batch of {global_batch_size}")
        self.arrays = list(arrays)
        self.seq_len, self.global_batch_size, self.pack, self.pad_id = seq_len, global_batch_size, pack, pad_id
        self.row_start, self.row_stop = row_start, row_stop
        self.windows = _Windows(self.arrays, seq_len, cover_tail=True)
        self.restore({"batch": 0})

    @property
    def num_tokens(self) -> int:
        return sum(int(array.num_tokens) for array in self.arrays)

    def _document_rows(self) -> Iterator[tuple[DocumentArray, list[tuple[int, int]]]]:
        """Rows of whole documents, greedily: a document that does not fit starts a fresh row."""
        for array in self.arrays:
            ranges: list[tuple[int, int]] = []
            column = 0
            chunk = 1 << 16  # offsets read in chunks: memory stays flat however many documents
            for first in range(0, int(array.num_documents), chunk):
                bounds = np.asarray(array.offsets[first:first + chunk + 1], np.int64)
                for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                    while stop - start > 1:
                        pairs = stop - start - 1
                        if column and pairs > self.seq_len - column:
                            yield array, ranges
                            ranges, column = [], 0
                        count = min(pairs, self.seq_len - column)
                        ranges.append((start, start + count + 1))
                        column += count
                        start += count
                        if column == self.seq_len:
                            yield array, ranges
                            ranges, column = [], 0
            if ranges:
                yield array, ranges

    def restore(self, state: Mapping[str, Any]) -> None:
        self.batch_index = int(state.get("batch", 0))
        self._rows = self._document_rows() if self.pack == "documents" else None
        if self._rows is not None:
            for _ in range(self.batch_index * self.global_batch_size):
                next(self._rows, None)

    def state(self) -> dict[str, Any]:
        return {"batch": self.batch_index}

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = empty_batch(self.row_stop - self.row_start, self.seq_len, self.pad_id)
        placed = False
        first = self.batch_index * self.global_batch_size
        if self.pack == "windows":
            indices = np.arange(first, min(first + self.global_batch_size, self.windows.count), dtype=np.int64)
            if not len(indices):
                raise StopIteration
            mine = indices[(indices - first >= self.row_start) & (indices - first < self.row_stop)]
            which, starts, stops = self.windows.locate(mine)
            for number in np.unique(which).tolist():
                group = which == number
                fill_windows(batch, mine[group] - first - self.row_start, self.arrays[number], starts[group],
                             stops[group])
            self.batch_index += 1
            return batch
        for row in range(self.global_batch_size):
            planned = next(self._rows, None)
            if planned is None:
                break
            array, ranges = planned
            placed = True
            if self.row_start <= row < self.row_stop:
                fill_row(batch, row - self.row_start, array, ranges)
        if not placed:
            raise StopIteration
        self.batch_index += 1
        return batch


# ---- from stores ------------------------------------------------------------------------------------

def resolve_languages(stores: Sequence[Any], languages: Sequence[str] | None, split: str) -> dict[str, list[Any]]:
    """{language: [DocumentArray per store holding it]} for `languages` (None or empty: every language of
    the stores); a language no store has is an UnknownLanguageError naming the stores."""
    available: dict[str, list[Any]] = {}
    for store in stores:
        for language in store.languages:
            available.setdefault(language, []).append(store)
    wanted = list(languages or available)
    missing = [language for language in wanted if language not in available]
    if missing:
        paths = ", ".join(str(store.path) for store in stores)
        raise UnknownLanguageError(f"no data for {', '.join(missing)} in the token store(s) {paths} (they have "
                                   f"{', '.join(sorted(available))}); tokenize it with `seallm-jax data tokenize "
                                   f"{missing[0]}=FILE --out STORE` or drop it from the languages")
    return {language: [store.documents(language, split) for store in available[language]] for language in wanted}


def check_tokenizers(stores: Sequence[Any]) -> str:
    """The stores' common tokenizer fingerprint; stores built with different tokenizers do not mix."""
    fingerprints = {store.tokenizer_fingerprint for store in stores}
    if len(fingerprints) > 1:
        names = "; ".join(f"{store.path}: {store.manifest.get('tokenizer', {}).get('name', '?')} "
                          f"({store.tokenizer_fingerprint[:12]})" for store in stores)
        raise DataFormatError(f"the token stores were built with different tokenizers ({names}); "
                              "re-tokenize them with one tokenizer")
    return fingerprints.pop()


class _TokenizerView:
    """The attributes `tokenizer_fingerprint` reads, for a tokenizer definition made here."""

    def __init__(self, **attributes: Any):
        self.__dict__.update(attributes)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def tokenizer_matches(fingerprint: str, tokenizer: Any) -> bool:
    """Whether a store whose tokenizer has `fingerprint` was built with `tokenizer`.

    Beyond equal fingerprints, a tokenizer that differs only in BPE's `ignore_merges` flag counts as the
    same: the built-in Qwen2 tokenizer sets it, while `transformers` loads a saved Qwen2 directory
    (every Qwen2 checkpoint's) without it, and the two give identical ids (same vocabulary; checked on
    all 85,542 training documents of the shipped corpus in 11 languages).
    """
    import json as _json

    from seallm_jax.data.store import tokenizer_fingerprint

    if tokenizer_fingerprint(tokenizer) == fingerprint:
        return True
    base = getattr(tokenizer, "base_tokenizer", None)
    inner = base if base is not None and getattr(tokenizer, "base_ids", None) is not None else tokenizer
    backend = getattr(inner, "backend_tokenizer", None)
    if backend is None:
        return False
    from tokenizers import Tokenizer

    definition = _json.loads(backend.to_str())
    model = definition.get("model") or {}
    if "ignore_merges" not in model:
        return False
    model["ignore_merges"] = not model["ignore_merges"]
    variant = _TokenizerView(backend_tokenizer=Tokenizer.from_str(_json.dumps(definition)))
    if inner is not tokenizer:
        variant = _TokenizerView(base_tokenizer=variant, base_ids=tokenizer.base_ids)
    return tokenizer_fingerprint(variant) == fingerprint


def parse_weights(items: Sequence[str] | Mapping[str, float] | None, what: str = "config.data.weights") -> dict[str, float]:
    """["th=0.7", "vi=0.3"] (or a mapping) -> {"th": 0.7, "vi": 0.3}."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {str(language): float(weight) for language, weight in items.items()}
    weights = {}
    for item in items:
        language, sep, value = str(item).partition("=")
        try:
            weights[language.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not language.strip():
            raise ConfigError(f"{what}: {item!r} is not LANG=WEIGHT (e.g. th=0.7,vi=0.3)")
    return weights


def mixture_from_stores(arrays: Mapping[str, Sequence[Any]], *, weighting: WeightMethod = "proportional",
                        weights: Mapping[str, float] | None = None,
                        temperature: float = DEFAULT_TEMPERATURE) -> dict[str, float]:
    """Language weights from each language's train tokens (see seallm_jax.data.mixture.mixture_weights);
    explicit `weights` win over `weighting`."""
    sizes = {language: sum(int(array.num_tokens) for array in items) for language, items in arrays.items()}
    if weights:
        return mixture_weights(sizes, "explicit", weights=weights)
    return mixture_weights(sizes, weighting, temperature=temperature)


def token_loader(stores: Sequence[Any], *, languages: Sequence[str] | None, split: str = "train", seq_len: int,
                 global_batch_size: int, row_start: int = 0, row_stop: int | None = None, seed: int = 0,
                 weighting: WeightMethod = "proportional", weights: Mapping[str, float] | None = None,
                 temperature: float = DEFAULT_TEMPERATURE, block_rows: int = 0,
                 truncation: Truncation = "turns") -> TokenLoader:
    """A `TokenLoader` over opened `TokenStore`s; its state carries the stores' and tokenizer's fingerprints.
    Text stores give windows; conversation stores (`data tokenize --conversations`) whole conversations
    per row, `truncation` deciding what happens to one longer than a row."""
    tokenizer = check_tokenizers(stores)
    kinds = {getattr(store, "kind", "text") for store in stores}
    if len(kinds) > 1:
        raise DataFormatError(f"the token stores mix documents and conversations ({', '.join(str(s.path) for s in stores)}"
                              "); train on text and on conversations in separate runs")
    arrays = resolve_languages(stores, languages, split)
    resolved = mixture_from_stores(arrays, weighting=weighting, weights=weights, temperature=temperature)
    description = {"split": split, "tokenizer": tokenizer,
                   # Per language (its manifest entry: sources, shards and their checksums), so that a
                   # resume names the language whose text changed.
                   "stores": {language: sorted(fingerprint(store.manifest["languages"][language])
                                               for store in stores if language in store.languages)
                              for language in arrays},
                   "languages": list(arrays)}
    return TokenLoader(arrays, resolved, seq_len=seq_len, global_batch_size=global_batch_size, row_start=row_start,
                       row_stop=row_stop, seed=seed, block_rows=block_rows, pad_id=stores[0].eos_id,
                       description=description, pack="documents" if kinds == {"conversations"} else "windows",
                       truncation=truncation)
