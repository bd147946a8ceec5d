"""Refusal of unanswerable questions (SeaRefuse format): the model answers in the chat template, a
response counts as a refusal when it holds a refusal phrase of its language; F1 of refusing the
unanswerable ones, per language.
"""
from __future__ import annotations

from collections import defaultdict

from seallm_jax.eval.core import EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.formats import RefusalQuestion, read_searefuse
from seallm_jax.eval.refusal import RefusalCounts, is_refusal, refusal_counts

SEAREFUSE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def find_questions(ctx: EvalContext) -> dict[str, list[RefusalQuestion]]:
    """Every SeaRefuse file under `searefuse/` (any of .jsonl/.json/.csv/.tsv/.parquet)."""
    root = ctx.data_path("searefuse")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in SEAREFUSE_SUFFIXES) if root.is_dir() else []
    grouped: dict[str, list[RefusalQuestion]] = defaultdict(list)
    for path in files:
        for question in read_searefuse(path):
            if ctx.wants(question.language):
                grouped[question.language].append(question)
    if not grouped:
        raise MissingDataError(
            f"no SeaRefuse questions for languages {ctx.languages or 'any'}: expected files under {root} (see docs/eval.md)"
        )
    return {language: ctx.limited(items) for language, items in grouped.items()}


def counts_table(counts: dict[str, RefusalCounts]) -> dict[str, dict[str, float]]:
    table = {}
    for language, c in counts.items():
        answerable = c.false_positive + c.true_negative
        table[language] = {
            "f1": c.f1, "precision": c.precision, "recall": c.recall,
            # Over-refusal: the share of answerable questions the model declined.
            "over_refusal_rate": c.false_positive / answerable if answerable else 0.0,
            "n": c.true_positive + c.false_positive + c.false_negative + c.true_negative,
        }
    return table


def run(ctx: EvalContext) -> list[TaskResult]:
    questions = find_questions(ctx)
    with ctx.measure() as stats:
        items = [q for language in sorted(questions) for q in questions[language]]
        prompts = [ctx.generator.encode_chat([{"role": "user", "content": q.question}]) for q in items]
        responses = ctx.generator.generate(prompts, ctx.config.refusal_max_new_tokens, description="refusal")
    refused: dict[str, list[bool]] = defaultdict(list)
    should_refuse: dict[str, list[bool]] = defaultdict(list)
    for question, response in zip(items, responses):
        refused[question.language].append(is_refusal(response, question.language, ctx.config.refusal_detector))
        should_refuse[question.language].append(not question.answerable)
    path = ctx.write_responses("refusal", [
        {"language": q.language, "question": q.question, "answerable": q.answerable, "response": r,
         "refused": is_refusal(r, q.language, ctx.config.refusal_detector)}
        for q, r in zip(items, responses)
    ])
    counts = {language: refusal_counts(refused[language], should_refuse[language]) for language in refused}
    total = sum(counts.values(), RefusalCounts())
    return [TaskResult(
        task="refusal", benchmark="searefuse", primary_metric="f1", by_language=counts_table(counts),
        overall=counts_table({"all": total})["all"], compile_count=int(stats["compile_count"]),
        seconds=stats["seconds"], details={"detector": "per-language refusal phrases (see docs/eval.md)", "responses_file": str(path)},
    )]
