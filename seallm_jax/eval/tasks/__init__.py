"""The benchmark families, by the name `seallm-jax eval --tasks` uses for each."""
from __future__ import annotations

from collections.abc import Callable

from seallm_jax.eval.core import EvalContext, TaskResult
from seallm_jax.eval.tasks import mgsm, multiple_choice, perplexity, refusal, safety, seabench, translation

TASKS: dict[str, Callable[[EvalContext], list[TaskResult]]] = {
    "ppl": perplexity.run,
    "mc": multiple_choice.run,
    "mgsm": mgsm.run,
    "chrf": translation.run,
    "refusal": refusal.run,
    "safety": safety.run,
    "seabench": seabench.run,
}

__all__ = ["TASKS"]
