"""SeaBench: two-turn open questions; both turns are generated in the chat template and written,
with the references, to a JSON-lines file for an external judge (the official `gen_judgements.py`).
"""
from __future__ import annotations

from collections import Counter

from seallm_jax.eval.core import EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.formats import SeaBenchQuestion, read_seabench


def find_questions(ctx: EvalContext) -> list[SeaBenchQuestion]:
    root = ctx.data_path("seabench")
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else []
    questions = [q for path in files for q in read_seabench(path) if ctx.wants(q.language)]
    if not questions:
        raise MissingDataError(
            f"no SeaBench questions for languages {ctx.languages or 'any'}: expected {root}/public-questions.jsonl"
        )
    by_language: dict[str, list[SeaBenchQuestion]] = {}
    for question in questions:
        by_language.setdefault(question.language, []).append(question)
    return [q for items in by_language.values() for q in ctx.limited(items)]


def run(ctx: EvalContext) -> list[TaskResult]:
    questions = find_questions(ctx)
    generator = ctx.generator
    max_new = ctx.config.seabench_max_new_tokens
    with ctx.measure() as stats:
        first_turns = generator.generate(
            [generator.encode_chat([{"role": "user", "content": q.turns[0]}]) for q in questions], max_new,
            description="seabench turn 1",
        )
        second_prompts = [
            generator.encode_chat([
                {"role": "user", "content": q.turns[0]},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": q.turns[1]},
            ])
            for q, answer in zip(questions, first_turns)
        ]
        second_turns = generator.generate(second_prompts, max_new, description="seabench turn 2")
    # The official judge script reads outputs/{model_name}.jsonl with keys {model_name}_1 / _2.
    path = ctx.write_responses("seabench", [
        {**question.record, f"{ctx.model_name}_1": first, f"{ctx.model_name}_2": second}
        for question, first, second in zip(questions, first_turns, second_turns)
    ])
    counts = Counter(q.language for q in questions)
    empty = Counter(q.language for q, a, b in zip(questions, first_turns, second_turns) if not a or not b)
    return [TaskResult(
        task="seabench", benchmark="seabench", primary_metric="answered_rate",
        by_language={lang: {"answered_rate": 1 - empty[lang] / n, "n": n} for lang, n in counts.items()},
        overall={"answered_rate": 1 - sum(empty.values()) / len(questions), "n": len(questions)},
        compile_count=int(stats["compile_count"]), seconds=stats["seconds"],
        details={"responses_file": str(path), "judge": "external (SeaBench gen_judgements.py)"},
    )]
