"""Translation chrF over language pairs with a zero-shot prompt, on Flores-200 files and on the
shipped corpus' held-out parallel split.
"""
from __future__ import annotations

from seallm_jax.data.corpus import load_parallel, shipped_languages
from seallm_jax.eval.core import EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.formats import read_flores_pair
from seallm_jax.eval.languages import FLORES_CODES, language_name
from seallm_jax.eval.metrics import chrf

PIVOT = "en"


def translation_prompt(text: str, source: str, target: str) -> str:
    """Zero-shot completion prompt; the answer is read up to the first newline."""
    source_name, target_name = language_name(source), language_name(target)
    return f"Translate the following {source_name} text into {target_name}.\n{source_name}: {text}\n{target_name}:"


def language_pairs(languages: list[str], directions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(source, target) pairs through English: "en-x" = English into each language, "x-en" = back."""
    pairs = []
    for language in languages:
        if language == PIVOT:
            continue
        if "en-x" in directions:
            pairs.append((PIVOT, language))
        if "x-en" in directions:
            pairs.append((language, PIVOT))
    unknown = set(directions) - {"en-x", "x-en"}
    if unknown:
        raise ValueError(f"unknown translation directions {sorted(unknown)}; use 'en-x' and/or 'x-en'")
    return pairs


def evaluate_pairs(ctx: EvalContext, benchmark: str, data: dict[tuple[str, str], tuple[list[str], list[str]]]) -> TaskResult:
    """Translate every pair's sources in one generation run and score each pair with chrF."""
    with ctx.measure() as stats:
        keys, prompts, references = [], [], []
        for (source, target), (sources, targets) in data.items():
            for text, reference in zip(sources, targets):
                keys.append((source, target))
                prompt = translation_prompt(text, source, target)
                if ctx.config.translation_chat:
                    prompts.append(ctx.generator.encode_chat([{"role": "user", "content": prompt}]))
                else:
                    prompts.append(ctx.generator.encode_text(prompt))
                references.append(reference)
        hypotheses = ctx.generator.generate(
            prompts, ctx.config.translation_max_new_tokens, stop_at_newline=True, description=f"chrf {benchmark}"
        )
    by_pair: dict[str, dict[str, float]] = {}
    samples = []
    for pair in data:
        rows = [i for i, key in enumerate(keys) if key == pair]
        pair_hypotheses = [hypotheses[i] for i in rows]
        pair_references = [references[i] for i in rows]
        by_pair[f"{pair[0]}-{pair[1]}"] = {"chrf": chrf(pair_hypotheses, pair_references), "n": len(rows)}
        samples.append({"pair": f"{pair[0]}-{pair[1]}", "hypothesis": pair_hypotheses[0], "reference": pair_references[0]})
    mean = sum(v["chrf"] for v in by_pair.values()) / len(by_pair)
    return TaskResult(
        task="chrf", benchmark=benchmark, primary_metric="chrf", by_language=by_pair,
        overall={"chrf": mean, "n": len(keys)}, compile_count=int(stats["compile_count"]),
        seconds=stats["seconds"],
        details={"prompt": "zero-shot completion, first line", "overall": "mean chrF over pairs", "samples": samples},
    )


def flores_data(ctx: EvalContext) -> tuple[dict[tuple[str, str], tuple[list[str], list[str]]], list[str]]:
    """Aligned Flores-200 text per pair, and the requested pairs whose files are missing."""
    root = ctx.data_path("flores200")
    languages = [lang for lang in (ctx.languages or list(FLORES_CODES)) if lang in FLORES_CODES]
    data, missing = {}, []
    for source, target in language_pairs(languages, ctx.config.translation_directions):
        try:
            sources, targets = read_flores_pair(root, source, target, ctx.config.flores_split)
        except FileNotFoundError:
            missing.append(f"{source}-{target}")  # reported in the results, not silently dropped
            continue
        data[(source, target)] = (ctx.limited(sources), ctx.limited(targets))
    return data, missing


def corpus_data(ctx: EvalContext) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
    available = shipped_languages()
    languages = [lang for lang in (ctx.languages or available) if lang in available]
    data = {}
    for source, target in language_pairs(languages, ctx.config.translation_directions):
        pairs = ctx.limited(load_parallel(ctx.config.corpus_split, source, target))
        data[(source, target)] = ([s.text for s, _ in pairs], [t.text for _, t in pairs])
    return data


def run(ctx: EvalContext) -> list[TaskResult]:
    """Flores-200 when `flores200/` is under --data-dir; always the shipped corpus' parallel split."""
    results = []
    if ctx.data_dir is not None and ctx.data_path("flores200").is_dir():
        data, missing = flores_data(ctx)
        if data:
            result = evaluate_pairs(ctx, f"flores200-{ctx.config.flores_split}", data)
            result.details["missing_pairs"] = missing
            results.append(result)
    data = corpus_data(ctx)
    if data:
        results.append(evaluate_pairs(ctx, f"corpus-{ctx.config.corpus_split}", data))
    if not results:
        raise MissingDataError(
            f"no translation data for languages {ctx.languages}: neither flores200/ under --data-dir nor "
            f"shipped-corpus languages ({', '.join(shipped_languages())}) other than English"
        )
    return results
