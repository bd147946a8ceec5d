"""Multiple-choice exams (M3Exam, SeaExam): k-shot prompts, scored by the log-likelihood of each
option's text and of each option's answer letter; accuracy per language.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

from seallm_jax.eval.core import EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.formats import MultipleChoiceQuestion, read_m3exam, read_seaexam
from seallm_jax.eval.languages import language_from_name
from seallm_jax.eval.metrics import accuracy
from seallm_jax.eval.scoring import LoglikelihoodScorer, ScoreRequest


def format_question(question: MultipleChoiceQuestion, answer: bool) -> str:
    """One question block: the question, one line per labelled option, and "Answer:" (+ the label)."""
    lines = [question.question, *(f"{label}. {option}" for label, option in zip(question.labels, question.options))]
    text = "\n".join(lines) + "\nAnswer:"
    return text + f" {question.labels[question.answer]}" if answer else text


def build_prompt(question: MultipleChoiceQuestion, shots: list[MultipleChoiceQuestion], header: str) -> str:
    """Header, the answered shots, then the question up to "Answer:"."""
    blocks = [header] if header else []
    blocks += [format_question(shot, answer=True) for shot in shots]
    blocks.append(format_question(question, answer=False))
    return "\n\n".join(blocks)


@dataclasses.dataclass(frozen=True)
class QuestionScores:
    option_log_likelihoods: list[float]  # log p(" " + option text | prompt)
    option_chars: list[int]              # length of each option text, for the normalised score
    letter_log_likelihoods: list[float]  # log p(" " + label | prompt)


def score_questions(scorer: LoglikelihoodScorer, tokenizer, questions: list[MultipleChoiceQuestion],
                    prompts: list[str], description: str = "mc") -> list[QuestionScores]:
    """Both scorings of every question, as one batch of requests (so one set of compiled shapes)."""
    requests: list[ScoreRequest] = []
    spans: list[tuple[int, int]] = []
    for question, prompt in zip(questions, prompts):
        context = tokenizer.encode(prompt, add_special_tokens=False)
        start = len(requests)
        # The leading space belongs to the continuation, as after "Answer:" in the shots.
        for continuation in [*question.options, *question.labels]:
            ending = tokenizer.encode(" " + continuation, add_special_tokens=False)
            requests.append(ScoreRequest(context + ending, len(context)))
        spans.append((start, len(requests)))
    scores = scorer.score(requests, description=description)
    results = []
    for question, (start, stop) in zip(questions, spans):
        values = [score.log_likelihood for score in scores[start:stop]]
        count = len(question.options)
        results.append(QuestionScores(values[:count], [max(1, len(o)) for o in question.options], values[count:]))
    return results


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def predictions(scores: QuestionScores) -> dict[str, int]:
    """The option each scoring picks: raw option likelihood, per-character likelihood, letter likelihood."""
    normalised = [ll / chars for ll, chars in zip(scores.option_log_likelihoods, scores.option_chars)]
    return {
        "option": _argmax(scores.option_log_likelihoods),
        "option_norm": _argmax(normalised),
        "letter": _argmax(scores.letter_log_likelihoods),
    }


def evaluate_questions(ctx: EvalContext, benchmark: str, test: dict[str, list[MultipleChoiceQuestion]],
                       dev: dict[str, list[MultipleChoiceQuestion]]) -> TaskResult:
    """Accuracy per language for one benchmark's questions, k-shot from `dev` (or the test head)."""
    with ctx.measure() as stats:
        questions, prompts, languages = [], [], []
        shots_source: dict[str, str] = {}
        for language, items in sorted(test.items()):
            shots = dev.get(language, [])[: ctx.config.num_shots]
            shots_source[language] = "dev"
            if not shots and ctx.config.num_shots > 0:
                # No dev file: the first k test questions become the shots and are not evaluated.
                shots, items = items[: ctx.config.num_shots], items[ctx.config.num_shots:]
                shots_source[language] = "test-head"
            for question in ctx.limited(items):
                questions.append(question)
                prompts.append(build_prompt(question, shots, ctx.config.mc_header))
                languages.append(language)
        scores = score_questions(ctx.scorer, ctx.tokenizer, questions, prompts, description=f"mc {benchmark}")
        correct: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        for question, language, question_scores in zip(questions, languages, scores):
            for method, choice in predictions(question_scores).items():
                correct[language][method].append(choice == question.answer)
                correct["all"][method].append(choice == question.answer)
    by_language = {
        language: {**{f"accuracy_{m}": accuracy(v) for m, v in methods.items()}, "n": len(methods["letter"])}
        for language, methods in correct.items() if language != "all"
    }
    overall = {f"accuracy_{m}": accuracy(v) for m, v in correct["all"].items()}
    overall["n"] = len(questions)
    return TaskResult(
        task="mc", benchmark=benchmark, primary_metric="accuracy_letter", by_language=by_language,
        overall=overall, compile_count=int(stats["compile_count"]), seconds=stats["seconds"],
        details={"num_shots": ctx.config.num_shots, "shots_source": shots_source,
                 "scoring_shapes": list(ctx.scorer.buckets), "batch_size": ctx.scorer.batch_size},
    )


def _group(questions: list[MultipleChoiceQuestion]) -> dict[str, list[MultipleChoiceQuestion]]:
    grouped: dict[str, list[MultipleChoiceQuestion]] = defaultdict(list)
    for question in questions:
        grouped[question.language].append(question)
    return dict(grouped)


def load_m3exam(ctx: EvalContext, root: Path) -> tuple[dict, dict]:
    """`root/{language}-questions-{test,dev}.json`, the M3Exam release's names."""
    test, dev = {}, {}
    for path in sorted(root.glob("*-questions-test.json")):
        language = language_from_name(path.name.split("-")[0])
        if not ctx.wants(language):
            continue
        test.update(_group(read_m3exam(path)))
        dev_path = path.with_name(path.name.replace("-test.json", "-dev.json"))
        if dev_path.is_file():
            dev.update(_group(read_m3exam(dev_path)))
    return test, dev


def load_seaexam(ctx: EvalContext, root: Path) -> tuple[dict, dict]:
    """`root/{language}/{test,dev}.json` (one SeaExam subset, e.g. `seaexam/m3exam`)."""
    test, dev = {}, {}
    for path in sorted(root.glob("*/test.json")):
        language = language_from_name(path.parent.name)
        if not ctx.wants(language):
            continue
        test.update(_group(read_seaexam(path, language)))
        dev_path = path.with_name("dev.json")
        if dev_path.is_file():
            dev.update(_group(read_seaexam(dev_path, language)))
    return test, dev


def run(ctx: EvalContext) -> list[TaskResult]:
    """Every multiple-choice benchmark found under --data-dir: `m3exam/` and `seaexam/<subset>/`."""
    results = []
    m3exam_root = ctx.data_path("m3exam")
    if m3exam_root.is_dir():
        test, dev = load_m3exam(ctx, m3exam_root)
        if test:
            results.append(evaluate_questions(ctx, "m3exam", test, dev))
    seaexam_root = ctx.data_path("seaexam")
    if seaexam_root.is_dir():
        for subset in sorted(p for p in seaexam_root.iterdir() if p.is_dir()):
            test, dev = load_seaexam(ctx, subset)
            if test:
                results.append(evaluate_questions(ctx, f"seaexam-{subset.name}", test, dev))
    if not results:
        raise MissingDataError(
            f"no multiple-choice data for languages {ctx.languages or 'any'} under {ctx.data_dir}: expected "
            "m3exam/{language}-questions-test.json or seaexam/{subset}/{language}/test.json (see docs/eval.md)"
        )
    return results
