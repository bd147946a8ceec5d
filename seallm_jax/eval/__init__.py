"""Evaluation harness: SeaLLMs-3 benchmark families (perplexity, multiple choice, MGSM, chrF, refusal,
safety, SeaBench) on local benchmark files, with batched, jitted, bucketed scoring and generation.
"""
from seallm_jax._lazy import lazy_getattr

_EXPORTS = {
    "EvalConfig": "seallm_jax.eval.core",
    "EvalContext": "seallm_jax.eval.core",
    "MissingDataError": "seallm_jax.eval.core",
    "TaskResult": "seallm_jax.eval.core",
    "BatchGenerator": "seallm_jax.eval.generation",
    "GenerationConfig": "seallm_jax.eval.generation",
    "accuracy": "seallm_jax.eval.metrics",
    "bits_per_byte": "seallm_jax.eval.metrics",
    "chrf": "seallm_jax.eval.metrics",
    "perplexity": "seallm_jax.eval.metrics",
    "extract_final_number": "seallm_jax.eval.numbers",
    "parse_number": "seallm_jax.eval.numbers",
    "RefusalDetectorConfig": "seallm_jax.eval.refusal",
    "is_refusal": "seallm_jax.eval.refusal",
    "refusal_f1": "seallm_jax.eval.refusal",
    "format_table": "seallm_jax.eval.runner",
    "load_results": "seallm_jax.eval.runner",
    "run_tasks": "seallm_jax.eval.runner",
    "save_results": "seallm_jax.eval.runner",
    "LoglikelihoodScorer": "seallm_jax.eval.scoring",
    "Score": "seallm_jax.eval.scoring",
    "ScoreRequest": "seallm_jax.eval.scoring",
    "ScoringConfig": "seallm_jax.eval.scoring",
    "TASKS": "seallm_jax.eval.tasks",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)

__all__ = [
    "EvalConfig", "EvalContext", "MissingDataError", "TaskResult", "BatchGenerator", "GenerationConfig",
    "accuracy", "bits_per_byte", "chrf", "perplexity", "extract_final_number", "parse_number",
    "RefusalDetectorConfig", "is_refusal", "refusal_f1", "format_table", "load_results", "run_tasks",
    "save_results", "LoglikelihoodScorer", "Score", "ScoreRequest", "ScoringConfig", "TASKS",
]
