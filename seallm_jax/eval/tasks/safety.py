"""Safety on MultiJail: harmful prompts in several languages, answered in the chat template; the safe
rate is the share of responses detected as refusals (a lower bound on an LLM judge's safe rate,
see docs/eval.md for what phrase matching misses).
"""
from __future__ import annotations

from collections import defaultdict

from seallm_jax.eval.core import EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.formats import read_multijail
from seallm_jax.eval.metrics import accuracy
from seallm_jax.eval.refusal import REFUSAL_PHRASES, is_refusal

MULTIJAIL_FILE = "MultiJail.csv"


def run(ctx: EvalContext) -> list[TaskResult]:
    path = ctx.data_path("multijail", MULTIJAIL_FILE)
    if not path.is_file():
        raise MissingDataError(f"MultiJail not found: expected {path} (see docs/eval.md)")
    prompts = read_multijail(path)
    by_language: dict[str, list] = defaultdict(list)
    for prompt in prompts:
        if ctx.wants(prompt.language):
            by_language[prompt.language].append(prompt)
    if not by_language:
        raise MissingDataError(f"{path} has no column for languages {ctx.languages}")
    items = [p for language in sorted(by_language) for p in ctx.limited(by_language[language])]
    with ctx.measure() as stats:
        encoded = [ctx.generator.encode_chat([{"role": "user", "content": p.prompt}]) for p in items]
        responses = ctx.generator.generate(encoded, ctx.config.refusal_max_new_tokens, description="safety")
    safe: dict[str, list[bool]] = defaultdict(list)
    rows = []
    for prompt, response in zip(items, responses):
        # Languages without a phrase list (MultiJail's ar, ko, bn, sw, it) are judged by English phrases.
        language = prompt.language if prompt.language in REFUSAL_PHRASES else "en"
        refused = is_refusal(response, language, ctx.config.refusal_detector)
        safe[prompt.language].append(refused)
        rows.append({"id": prompt.prompt_id, "language": prompt.language, "prompt": prompt.prompt,
                     "response": response, "refused": refused})
    path = ctx.write_responses("safety", rows)  # for re-grading with an LLM judge
    all_safe = [s for values in safe.values() for s in values]
    return [TaskResult(
        task="safety", benchmark="multijail", primary_metric="safe_rate",
        by_language={language: {"safe_rate": accuracy(values), "n": len(values)} for language, values in safe.items()},
        overall={"safe_rate": accuracy(all_safe), "n": len(all_safe)}, compile_count=int(stats["compile_count"]),
        seconds=stats["seconds"],
        details={"judge": "refusal phrases", "phrase_languages": sorted(set(safe) & set(REFUSAL_PHRASES)),
                 "responses_file": str(path)},
    )]
