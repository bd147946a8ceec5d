"""Batched, jitted log-likelihood scoring: the engine under perplexity, multiple choice and the lm-eval
backend, on the parameters of the one evaluator (`train.evaluate.Evaluator`: placement over a mesh).

Requests are packed, not padded: several sequences share a row (each its own segment, positions
restarting), so a batch is nearly all real tokens. Requests that share their context (a multiple-choice
question's options) have that context computed once: the contexts run first and fill a KV cache, then
every continuation runs against its own context's cache. The LM head (float32 log-softmax over the
vocabulary) runs on continuation rows only, never on a shared context. Shapes are fixed per call (two
row counts at most: full batches and the last one), so a task compiles one or two programs;
`compile_count` says how many.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from seallm_jax import sharding as shd
from seallm_jax.train.evaluate import Evaluator

Array = jax.Array
# Units whose rows are searched for room for the next sequence (first fit over a recent window: packing
# stays linear in the number of requests, and sorted requests rarely fit further back).
_PACK_WINDOW = 32
# A shared context is scored once only for continuations up to this long: the continuation pass attends
# densely over [continuation, context + continuation], fine for answers, not for documents.
_SHARE_MAX_CONTINUATION = 512
# Groups of requests sharing a context are split into chunks of at most this many (continuation rows per
# context row); each chunk computes the context again.
_MAX_GROUP = 16


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """Shapes the scorer compiles for, and how much of the vocabulary projection it holds at once."""

    # Context rows per batch (each with as many continuation rows as the largest group of requests
    # sharing a context); without shared contexts, rows per batch.
    batch_size: int = 8
    # Row lengths are the smallest bucket holding the longest sequence (and about two average ones).
    length_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    # Longer requests keep their last `max_length` tokens (the scored continuation is at the end).
    max_length: int = 2048
    # Logits exist for `logits_chunk * batch_size` positions at a time: never [rows, length, vocab],
    # which for a 152k vocabulary is the difference between MBs and GBs.
    logits_chunk: int = 256
    show_progress: bool = True


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
    """Score `tokens[score_from:]`, each token given all tokens before it."""

    tokens: Sequence[int]
    score_from: int


@dataclasses.dataclass(frozen=True)
class Score:
    log_likelihood: float  # sum of log p(token | prefix) over the scored tokens
    num_tokens: int        # scored tokens (after any truncation)
    is_greedy: bool        # every scored token is the argmax of its distribution


def bucket_lengths(config: ScoringConfig) -> tuple[int, ...]:
    """The padded lengths in use: the configured buckets below `max_length`, then `max_length`."""
    return tuple(sorted({b for b in config.length_buckets if b < config.max_length} | {config.max_length}))


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"sequence of {length} tokens is longer than the largest bucket {buckets[-1]}")


def truncate_request(request: ScoreRequest, max_length: int) -> ScoreRequest:
    """Drop tokens from the left so the request fits `max_length`; at least one token stays as context."""
    tokens = list(request.tokens)
    if not 1 <= request.score_from <= len(tokens):
        raise ValueError(
            f"score_from={request.score_from} must be in [1, {len(tokens)}] (the first token has no prefix)"
        )
    if len(tokens) <= max_length:
        return ScoreRequest(tokens, request.score_from)
    dropped = len(tokens) - max_length
    return ScoreRequest(tokens[dropped:], max(1, request.score_from - dropped))


@dataclasses.dataclass
class _Unit:
    """One context row and its continuation rows: contexts packed in the first, and each group's
    continuations in distinct rows of the rest (a continuation sees only its own segment)."""

    context_used: int
    rows_used: list[int]
    # (segment, context tokens) and (request, row, offset, segment)
    contexts: list[tuple[int, list[int]]] = dataclasses.field(default_factory=list)
    continuations: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Plan:
    context_length: int   # 0: no shared contexts, every sequence whole in the continuation rows
    row_length: int
    group: int            # continuation rows per unit
    skip: list[int]       # per request: its tokens before this many are in the context row
    units: list[_Unit]


def _plan(requests: Sequence[ScoreRequest], buckets: Sequence[int]) -> _Plan:
    """Group requests by shared context, choose the row lengths, and pack (first fit, longest first)."""
    shared: dict[tuple[int, ...], list[int]] = {}
    for index, request in enumerate(requests):
        if request.score_from > 1:  # the context less its last token (which predicts the first scored one)
            shared.setdefault(tuple(request.tokens[:request.score_from - 1]), []).append(index)
    longest_continuation = max(len(r.tokens) - r.score_from + 1 for r in requests)
    share = (any(len(members) > 1 for members in shared.values())
             and longest_continuation <= _SHARE_MAX_CONTINUATION)
    groups: list[tuple[list[int], list[int]]] = []  # (context, members)
    if share:
        grouped = {i for members in shared.values() for i in members}
        for context, members in shared.items():
            groups += [(list(context), members[s:s + _MAX_GROUP]) for s in range(0, len(members), _MAX_GROUP)]
        groups += [([], [i]) for i in range(len(requests)) if i not in grouped]
        skip = [r.score_from - 1 for r in requests]
    else:
        groups = [([], [i]) for i in range(len(requests))]
        skip = [0] * len(requests)
    lengths = [len(r.tokens) - s for r, s in zip(requests, skip)]
    group = max(len(members) for _, members in groups)

    def row_length(longest: int, wanted: float) -> int:
        # About two average sequences per row, so that packing fills rows; never past the largest bucket.
        return bucket_for(max(longest, min(int(np.ceil(wanted)), buckets[-1])), buckets)

    length = row_length(max(lengths), 2 * np.mean(lengths))
    context_length = 0
    if share:
        contexts = [len(context) for context, _ in groups]
        # As many contexts per context row as continuations fit a continuation row.
        context_length = row_length(max(contexts), np.mean(contexts) * length / np.mean(lengths))
    units: list[_Unit] = []
    def content(i: int) -> tuple[int, tuple[int, ...]]:  # an order that does not depend on the input's
        return -lengths[i], tuple(requests[i].tokens)

    groups = [(context, sorted(members, key=content)) for context, members in groups]
    # Longest first; ties by content, so the same requests in any order pack (and compile) alike.
    groups.sort(key=lambda g: (content(g[1][0]), -len(g[0]), tuple(g[0])))
    for context, members in groups:
        placed = False
        for unit in units[-_PACK_WINDOW:]:
            if unit.context_used + len(context) > context_length:
                continue
            rows = sorted(range(group), key=lambda r: unit.rows_used[r])[:len(members)]
            if all(unit.rows_used[r] + lengths[i] <= length for r, i in zip(rows, members)):
                placed = True
                break
        if not placed:
            unit = _Unit(0, [0] * group)
            units.append(unit)
            rows = list(range(len(members)))
        segment = len(unit.contexts) + 1
        unit.contexts.append((segment, context))
        unit.context_used += len(context)
        for row, i in zip(rows, members):
            unit.continuations.append((i, row, unit.rows_used[row], segment))
            unit.rows_used[row] += lengths[i]
    return _Plan(context_length, length, group, skip, units)


class LoglikelihoodScorer:
    """Scores many requests on the parameters of `train.evaluate.Evaluator` (the one evaluator), a
    program per shape.

    With a `mesh`, parameters are placed and batches split over the batch axes as in training, and the
    batch size is rounded up to a multiple of the devices the batch is split over.
    """

    def __init__(self, model: nnx.Module, config: ScoringConfig = ScoringConfig(), mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh
        self.buckets = bucket_lengths(config)
        self.evaluator = Evaluator(model, mesh, chunk_tokens=config.logits_chunk * config.batch_size)
        divisor = self.evaluator.batch_divisor
        self.batch_size = -(-config.batch_size // divisor) * divisor
        self._compiles = 0
        out_shardings = shd.replicated(mesh) if mesh is not None else None
        self._scores = jax.jit(self._traced_scores, out_shardings=out_shardings)

    @property
    def compile_count(self) -> int:
        """Programs compiled so far (one per batch shape used)."""
        return self._compiles

    def _traced_scores(self, params: Any, batch: dict[str, Array]) -> tuple[Array, Array]:
        """(log p(target), target is the argmax) [scored] at the continuation-row positions `scored`
        (flat indices into [rows * length]) whose next tokens are `targets`."""
        self._compiles += 1  # runs only while tracing
        model = nnx.merge(self.evaluator.graphdef, params)
        with shd.activation_sharding(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            hidden = self._hidden(model, batch)
            return self._position_scores(model, hidden, batch["scored"], batch["targets"])

    @staticmethod
    def _hidden(model: nnx.Module, batch: dict[str, Array]) -> Array:
        if batch["context_ids"].shape[1] == 0:
            hidden, _ = model.hidden_states(batch["input_ids"], positions=batch["positions"],
                                            segment_ids=batch["segment_ids"])
            return hidden
        units, context_length = batch["context_ids"].shape
        # The contexts fill a KV cache (attending within their segments, as without one) ...
        cache = model.init_cache(units, context_length + batch["input_ids"].shape[1])
        _, cache, _ = model.model(batch["context_ids"], batch["context_positions"], batch["context_segments"],
                                  cache, None, None, fresh_cache=True)
        # ... which every continuation row takes from its unit: a continuation token sees the cached
        # tokens of its own segment (its context) and the earlier tokens of its own continuation.
        unit = batch["unit"]
        cache = {"k": jnp.take(cache["k"], unit, axis=1), "v": jnp.take(cache["v"], unit, axis=1),
                 "segment": jnp.take(cache["segment"], unit, axis=0), "index": cache["index"]}
        hidden, _, _ = model.model(batch["input_ids"], batch["positions"], batch["segment_ids"], cache, None, None)
        return hidden

    def _position_scores(self, model: nnx.Module, hidden: Array, scored: Array,
                         targets: Array) -> tuple[Array, Array]:
        # The head only where a scored token is predicted: hidden states are gathered first, so neither
        # contexts, nor padding, nor a sequence's last position reach the [positions, vocab] projection.
        hidden = jnp.take(hidden.reshape(-1, hidden.shape[-1]), scored, axis=0)
        count = scored.shape[0]
        chunk = min(count, self.evaluator.chunk_tokens)
        padded = -(-count // chunk) * chunk
        if padded != count:
            hidden = jnp.pad(hidden, ((0, padded - count), (0, 0)))
            targets = jnp.pad(targets, (0, padded - count))

        def one_chunk(inputs: tuple[Array, Array]) -> tuple[Array, Array]:
            hidden_chunk, target_chunk = inputs
            logits = model.logits(hidden_chunk[None])[0]  # float32 [chunk, vocab]
            target_logit = jnp.take_along_axis(logits, target_chunk[:, None], axis=-1)[:, 0]
            return (target_logit - jax.nn.logsumexp(logits, axis=-1),
                    jnp.argmax(logits, axis=-1) == target_chunk)

        log_p, greedy = jax.lax.map(one_chunk, (hidden.reshape(padded // chunk, chunk, -1),
                                                targets.reshape(padded // chunk, chunk)))
        return log_p.reshape(-1)[:count], greedy.reshape(-1)[:count]

    def _put(self, arrays: dict[str, np.ndarray]) -> dict[str, Array]:
        if self.mesh is None:
            return {key: jnp.asarray(value) for key, value in arrays.items()}
        # Every process builds the same batch; context and continuation rows are two batches of their own,
        # the scored positions (indices into the rows of any one process's copy) are replicated.
        out = {}
        for key, value in arrays.items():
            if key in ("scored", "targets"):
                out[key] = jax.make_array_from_process_local_data(shd.replicated(self.mesh), value, value.shape)
            else:
                out.update(shd.shard_batch({key: value}, self.mesh, value.shape[0] * jax.process_count()))
        return out

    def score(self, requests: Sequence[ScoreRequest], description: str = "scoring") -> list[Score]:
        """Scores of `requests`, in order."""
        requests = [truncate_request(request, self.config.max_length) for request in requests]
        if not requests:
            return []
        plan = _plan(requests, self.buckets)
        batches = [plan.units[start:start + self.batch_size]
                   for start in range(0, len(plan.units), self.batch_size)]
        built = [self._batch(requests, plan, units) for units in batches]
        # One count of scored positions for the call (a multiple of 64): one head shape, any batch.
        scored = max(1, max(len(arrays["scored"]) for arrays, _ in built))
        scored = -(-scored // 64) * 64
        pending = []
        for arrays, spans in tqdm(built, desc=description, disable=not self.config.show_progress, leave=False):
            for key in ("scored", "targets"):
                arrays[key] = np.pad(np.asarray(arrays[key], np.int32), (0, scored - len(arrays[key])))
            pending.append((self._scores(self.evaluator.params, self._put(arrays)), spans))
        results: list[Score | None] = [None] * len(requests)
        for (log_p, greedy), spans in pending:  # collected after every batch was dispatched
            log_p, greedy = np.asarray(jax.device_get(log_p), np.float64), np.asarray(jax.device_get(greedy))
            for index, start, stop in spans:
                results[index] = Score(float(np.sum(log_p[start:stop])), stop - start,
                                       bool(np.all(greedy[start:stop])))
        return results  # type: ignore[return-value]

    def _batch(self, requests: Sequence[ScoreRequest], plan: _Plan,
               units: list[_Unit]) -> tuple[dict[str, Any], list[tuple[int, int, int]]]:
        """The arrays of one batch of units (`scored`/`targets` as lists, padded by the caller), and per
        request (index, first, last + 1) of its scored positions in them."""
        count = -(-len(units) // self.evaluator.batch_divisor) * self.evaluator.batch_divisor
        rows, length = count * plan.group, plan.row_length
        arrays: dict[str, Any] = {name: np.zeros((rows, length), np.int32)
                                  for name in ("input_ids", "positions", "segment_ids")}
        scored: list[int] = []
        targets: list[int] = []
        context = {name: np.zeros((count, plan.context_length), np.int32)
                   for name in ("context_ids", "context_positions", "context_segments")}
        spans = []
        for number, unit in enumerate(units):
            offset = 0
            for segment, tokens in unit.contexts:
                end = offset + len(tokens)
                context["context_ids"][number, offset:end] = tokens
                context["context_positions"][number, offset:end] = np.arange(len(tokens))
                context["context_segments"][number, offset:end] = segment
                offset = end
            for index, row, start, segment in unit.continuations:
                request, skip = requests[index], plan.skip[index]
                tokens = request.tokens[skip:]
                row, end = number * plan.group + row, start + len(tokens)
                arrays["input_ids"][row, start:end] = tokens
                arrays["positions"][row, start:end] = np.arange(skip, skip + len(tokens))
                arrays["segment_ids"][row, start:end] = segment
                # Position p predicts token p + 1: the scored tokens are predicted from score_from - 1 on.
                first = request.score_from - 1 - skip
                spans.append((index, len(scored), len(scored) + len(tokens) - 1 - first))
                scored += range(row * length + start + first, row * length + end - 1)
                targets += tokens[first + 1:]
        arrays.update(context, scored=scored, targets=targets)
        arrays["unit"] = np.repeat(np.arange(count, dtype=np.int32), plan.group)
        return arrays, spans
