"""Evaluation harness: SeaLLMs-3 benchmark families (perplexity, multiple choice, MGSM, chrF, refusal,
safety, SeaBench) on local benchmark files, with batched, jitted, bucketed scoring and generation.
"""
from seallm_jax.eval.core import EvalConfig, EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.generation import BatchGenerator, GenerationConfig
from seallm_jax.eval.metrics import accuracy, bits_per_byte, chrf, perplexity
from seallm_jax.eval.numbers import extract_final_number, parse_number
from seallm_jax.eval.refusal import RefusalDetectorConfig, is_refusal, refusal_f1
from seallm_jax.eval.runner import format_table, load_results, run_tasks, save_results
from seallm_jax.eval.scoring import LoglikelihoodScorer, Score, ScoreRequest, ScoringConfig
from seallm_jax.eval.tasks import TASKS

__all__ = [
    "EvalConfig", "EvalContext", "MissingDataError", "TaskResult", "BatchGenerator", "GenerationConfig",
    "accuracy", "bits_per_byte", "chrf", "perplexity", "extract_final_number", "parse_number",
    "RefusalDetectorConfig", "is_refusal", "refusal_f1", "format_table", "load_results", "run_tasks",
    "save_results", "LoglikelihoodScorer", "Score", "ScoreRequest", "ScoringConfig", "TASKS",
]
