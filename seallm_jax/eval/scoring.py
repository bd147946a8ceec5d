"""Batched, jitted log-likelihood scoring: the engine under perplexity and multiple choice.

Requests are padded into a few fixed shapes (a fixed batch size and a handful of length buckets),
so the scorer compiles once per bucket used, not once per example; `compile_count` says how often.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from seallm_jax.train.evaluate import Evaluator


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
    """Scores many requests with `train.evaluate.Evaluator` (the one evaluator), one compile per bucket.

    With a `mesh`, parameters are placed and batches split over the batch axes as in training, and the
    batch size is rounded up to a multiple of the devices the batch is split over.
    """

    def __init__(self, model: nnx.Module, config: ScoringConfig = ScoringConfig(), mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh
        self.buckets = bucket_lengths(config)
        # Logits exist for `logits_chunk` positions of every row at a time.
        self.evaluator = Evaluator(model, mesh, chunk_tokens=config.logits_chunk * config.batch_size)
        divisor = self.evaluator.batch_divisor
        self.batch_size = -(-config.batch_size // divisor) * divisor

    @property
    def compile_count(self) -> int:
        """Programs compiled so far (one per bucket used)."""
        return self.evaluator.compile_count

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
            # loss_mask[:, t] marks the target input_ids[:, t + 1] (a scored token, predicted at t).
            loss_mask = np.zeros((self.batch_size, length), np.float32)
            for row, index in enumerate(batch):
                tokens = requests[index].tokens
                input_ids[row, :len(tokens)] = tokens
                loss_mask[row, requests[index].score_from - 1:len(tokens) - 1] = 1.0
            targets = np.roll(input_ids, -1, axis=1)
            sums = self.evaluator.row_sums({"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask,
                                            "segment_ids": np.ones_like(input_ids)})
            for row, index in enumerate(batch):
                results[index] = Score(float(sums["log_likelihood"][row]), int(sums["target_tokens"][row]),
                                       bool(sums["all_greedy"][row]))
        return results  # type: ignore[return-value]
