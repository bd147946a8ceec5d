"""MGSM: grade-school math in many languages, answered in the chat template and graded by the final
number of the response (local digits and number formats understood); accuracy per language.
"""
from __future__ import annotations

import re
from collections import defaultdict

from seallm_jax.eval.core import EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.formats import MathProblem, read_mgsm
from seallm_jax.eval.metrics import accuracy
from seallm_jax.eval.numbers import extract_final_number, numbers_match

_FILE_PATTERN = re.compile(r"mgsm_([a-z]{2,3})\.(tsv|jsonl|json)$")


def find_problems(ctx: EvalContext) -> dict[str, list[MathProblem]]:
    """`mgsm/mgsm_{language}.tsv` (the release's files; .jsonl/.json exports work too)."""
    root = ctx.data_path("mgsm")
    problems: dict[str, list[MathProblem]] = {}
    for path in sorted(root.glob("mgsm_*")) if root.is_dir() else []:
        match = _FILE_PATTERN.match(path.name)
        if match and ctx.wants(match.group(1)) and match.group(1) not in problems:
            problems[match.group(1)] = ctx.limited(read_mgsm(path, match.group(1)))
    if not problems:
        raise MissingDataError(
            f"no MGSM files for languages {ctx.languages or 'any'}: expected {root}/mgsm_{{language}}.tsv (see docs/eval.md)"
        )
    return problems


def run(ctx: EvalContext) -> list[TaskResult]:
    problems = find_problems(ctx)
    with ctx.measure() as stats:
        items = [problem for language in sorted(problems) for problem in problems[language]]
        prompts = [
            ctx.generator.encode_chat([{"role": "user", "content": f"{p.question}\n{ctx.config.mgsm_instruction}"}])
            for p in items
        ]
        responses = ctx.generator.generate(prompts, ctx.config.mgsm_max_new_tokens, description="mgsm")
        correct: dict[str, list[bool]] = defaultdict(list)
        samples = []
        for problem, response in zip(items, responses):
            predicted = extract_final_number(response, problem.language)
            correct[problem.language].append(numbers_match(predicted, problem.answer))
            if len(samples) < 3:
                samples.append({"question": problem.question, "response": response, "predicted": predicted,
                                "answer": problem.answer})
    all_correct = [c for values in correct.values() for c in values]
    return [TaskResult(
        task="mgsm", benchmark="mgsm", primary_metric="accuracy",
        by_language={language: {"accuracy": accuracy(values), "n": len(values)} for language, values in correct.items()},
        overall={"accuracy": accuracy(all_correct), "n": len(all_correct)},
        compile_count=int(stats["compile_count"]), seconds=stats["seconds"], details={"samples": samples},
    )]
