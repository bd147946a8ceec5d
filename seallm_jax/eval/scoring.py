"""Batched, jitted log-likelihood scoring: the engine under perplexity and multiple choice.

Requests are padded into a few fixed shapes (a fixed batch size and a handful of length buckets),
so the scorer compiles once per bucket used, not once per example; `compile_count` says how often.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from seallm_jax.model.axes import activation_sharding

# Mesh axes the batch dimension is split over (the project's data-parallel axes).
BATCH_MESH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """Shapes the scorer compiles for, and how much of the vocabulary projection it holds at once."""

    batch_size: int = 8
    # Sequences are right-padded to the smallest bucket that holds them; each bucket is one compile.
    length_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    # Longer requests keep their last `max_length` tokens (the scored continuation is at the end).
    max_length: int = 2048
    # Logits are computed this many positions at a time: [batch, chunk, vocab] instead of
    # [batch, length, vocab], which for a 152k vocabulary is the difference between MBs and GBs.
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


class LoglikelihoodScorer:
    """Scores many requests with one jitted function per padded shape.

    With a `mesh`, batches are placed with their batch dimension split over the mesh's data axes and
    activations are constrained the same way; the model's parameters keep whatever sharding they
    were loaded with.
    """

    def __init__(self, model: nnx.Module, config: ScoringConfig = ScoringConfig(), mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh
        self.buckets = bucket_lengths(config)
        self.graphdef, self.state = nnx.split(model)
        self.batch_size = config.batch_size
        self._batch_sharding = None
        if mesh is not None:
            axes = tuple(axis for axis in BATCH_MESH_AXES if axis in mesh.shape)
            divisor = math.prod(mesh.shape[axis] for axis in axes)
            # The batch must split evenly over the devices; round the batch size up.
            self.batch_size = -(-config.batch_size // divisor) * divisor
            self._batch_axes = axes
            self._batch_sharding = NamedSharding(mesh, PartitionSpec(axes, None))
        # Incremented while tracing only: the number of times XLA compiled the scoring function.
        self.compile_count = 0
        self._score_batch = jax.jit(self._score_batch_impl)

    def _score_batch_impl(self, state, input_ids, score_mask):
        self.compile_count += 1
        model = nnx.merge(self.graphdef, state)
        hidden, _ = model.hidden_states(input_ids)          # [batch, length, embed]
        targets = jnp.roll(input_ids, -1, axis=1)            # targets[:, t] = input_ids[:, t + 1]
        # score_mask[:, t] marks token t as scored; it is predicted from position t - 1.
        predict_mask = jnp.roll(score_mask, -1, axis=1).at[:, -1].set(False)
        length = input_ids.shape[1]
        chunk = self.config.logits_chunk if length % self.config.logits_chunk == 0 else length

        def chunk_scores(chunk_inputs):
            hidden_chunk, target_chunk = chunk_inputs            # [batch, chunk, embed], [batch, chunk]
            logits = model.logits(hidden_chunk)                  # [batch, chunk, vocab] float32
            log_probs = jax.nn.log_softmax(logits, axis=-1)
            token_log_probs = jnp.take_along_axis(log_probs, target_chunk[..., None], axis=-1)[..., 0]
            return token_log_probs, jnp.argmax(logits, axis=-1) == target_chunk

        def split(x):  # [batch, length, ...] -> [chunks, batch, chunk, ...]
            return jnp.moveaxis(x.reshape(x.shape[0], length // chunk, chunk, *x.shape[2:]), 1, 0)

        token_log_probs, greedy = jax.lax.map(chunk_scores, (split(hidden), split(targets)))
        token_log_probs = jnp.moveaxis(token_log_probs, 0, 1).reshape(input_ids.shape)
        greedy = jnp.moveaxis(greedy, 0, 1).reshape(input_ids.shape)
        log_likelihood = jnp.where(predict_mask, token_log_probs, 0.0).sum(axis=1)
        all_greedy = jnp.all(greedy | ~predict_mask, axis=1)
        return log_likelihood, predict_mask.sum(axis=1), all_greedy

    def _run(self, input_ids: np.ndarray, score_mask: np.ndarray):
        if self.mesh is None:
            return self._score_batch(self.state, input_ids, score_mask)
        input_ids = jax.device_put(input_ids, self._batch_sharding)
        score_mask = jax.device_put(score_mask, self._batch_sharding)
        with activation_sharding(self.mesh, {"batch": self._batch_axes}):
            return self._score_batch(self.state, input_ids, score_mask)

    def score(self, requests: Sequence[ScoreRequest], description: str = "scoring") -> list[Score]:
        """Scores of `requests`, in order. Requests are sorted by length so batches share buckets."""
        requests = [truncate_request(request, self.config.max_length) for request in requests]
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].tokens))
        results: list[Score | None] = [None] * len(requests)
        batches = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc=description, disable=not self.config.show_progress, leave=False):
            length = bucket_for(max(len(requests[i].tokens) for i in batch), self.buckets)
            # Padding rows (when the last batch is short) are all zeros and fully unscored.
            input_ids = np.zeros((self.batch_size, length), np.int32)
            score_mask = np.zeros((self.batch_size, length), bool)
            for row, index in enumerate(batch):
                tokens = requests[index].tokens
                input_ids[row, :len(tokens)] = tokens
                score_mask[row, requests[index].score_from:len(tokens)] = True
            log_likelihood, num_tokens, greedy = jax.device_get(self._run(input_ids, score_mask))
            for row, index in enumerate(batch):
                results[index] = Score(float(log_likelihood[row]), int(num_tokens[row]), bool(greedy[row]))
        return results  # type: ignore[return-value]
