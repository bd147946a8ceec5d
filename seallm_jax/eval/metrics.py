"""Corpus-level metrics shared by the tasks: chrF (sacrebleu), accuracy, perplexity, bits per byte.

Each returns plain floats so results serialise to JSON unchanged.
"""
from __future__ import annotations

import math

import sacrebleu


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2), 0..100."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("chrF of an empty corpus is undefined")
    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


def accuracy(correct: list[bool]) -> float:
    """Share of correct answers (0 for no answers, so empty languages do not crash a table)."""
    return sum(correct) / len(correct) if correct else 0.0


def perplexity(total_log_likelihood: float, num_tokens: int) -> float:
    """exp of the mean negative log-likelihood per predicted token."""
    if num_tokens <= 0:
        raise ValueError("perplexity needs at least one predicted token")
    return math.exp(-total_log_likelihood / num_tokens)


def bits_per_byte(total_log_likelihood: float, num_bytes: int) -> float:
    """Negative log-likelihood in bits per UTF-8 byte: comparable across tokenizers."""
    if num_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte of text")
    return -total_log_likelihood / math.log(2) / num_bytes
