"""Scoring for `lsn compare`: the Scorer (fixed batches per split and language, one compiled evaluator) and the
arithmetic on its losses — log-perplexity ratios, curves against target gain, matched gains, t-intervals.

A change is the signed log-perplexity ratio `ln(ppl_after / ppl_before)` = loss after - loss before (negative
= better). The target's gain is `100 * (1 - ppl_after / ppl_before)` percent. Intervals are Student-t over seeds.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seallm_jax.lsn.compare.settings import CONFIDENCE, CompareSettings

Losses = dict[str, dict[str, float]]  # split -> language -> mean token cross-entropy


class Scorer:
    """Mean token cross-entropy of a model on fixed, pre-tokenized batches per (split, language).

    `batches[split][language]` is a list of evaluation batches (the training batch format). Where the text
    comes from is `from_corpus`'s business alone, so another reader can build a Scorer the same way.
    """

    def __init__(self, batches: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]):
        self.batches = {split: {lang: list(b) for lang, b in by_lang.items()} for split, by_lang in batches.items()}
        self.tokens = {split: {lang: int(sum(np.count_nonzero(b["loss_mask"]) for b in batches))
                               for lang, batches in by_lang.items()} for split, by_lang in self.batches.items()}
        self._evaluator = None
        self._loaded: tuple[str, int | None] | None = None

    @classmethod
    def from_corpus(cls, settings: CompareSettings, tokenizer: Any) -> "Scorer":
        """Test and validation splits of the shipped corpus, and the other-domain text (`data.other_domain`)."""
        from seallm_jax.data.other_domain import other_domain_files
        from seallm_jax.lsn.inputs import batches_by_language, take_tokens

        def fixed(split: str | None, languages: Sequence[str], files: Mapping | None, max_tokens: int):
            streams = batches_by_language(languages, tokenizer=tokenizer, split=split, files=files,
                                          seq_len=settings.eval_seq_len, batch_size=settings.eval_batch_size)
            return {lang: list(take_tokens(streams[lang], max_tokens)) for lang in languages}

        files = other_domain_files(settings.languages)
        return cls({"test": fixed("test", settings.languages, None, settings.eval_tokens),
                    "other_domain": fixed(None, list(files), files, settings.eval_tokens),
                    "validation": fixed("validation", settings.targets, None, settings.sweep_eval_tokens)})

    def _load(self, path: str, step: int | None) -> None:
        """Point the evaluator at the model in `path` (HF directory or training workdir; `step`: that
        checkpoint instead of the latest). Every model has the base's architecture: one compile serves all."""
        import jax
        from flax import nnx

        from seallm_jax import hf
        from seallm_jax.checkpoint import CHECKPOINT_SUBDIR, load_params
        from seallm_jax.train.evaluate import Evaluator

        if self._loaded == (path, step):
            return
        if self._evaluator is None or step is None:
            model = hf.load_model(path)
            if self._evaluator is None:
                self._evaluator = Evaluator(model)
            self._evaluator.params = nnx.split(model, nnx.Param)[1].to_pure_dict()
        if step is not None:  # restored straight onto the devices the current parameters live on
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                    self._evaluator.params)
            self._evaluator.params = load_params(f"{path}/{CHECKPOINT_SUBDIR}/{step}", abstract)
        self._loaded = (path, step)

    def loss(self, path: str, splits: Mapping[str, Sequence[str]], *, step: int | None = None,
             gate_scale: np.ndarray | None = None) -> Losses:
        """Loss per split and language of the model in `path` (at checkpoint `step` of a workdir), with the
        neurons that `gate_scale` zeroes switched off (as `lsn ablate` does)."""
        self._load(path, step)
        return {split: {lang: float(self._evaluator.loss(self.batches[split][lang], gate_scale)[0])
                        for lang in languages} for split, languages in splits.items()}


# ---- changes, curves and intervals --------------------------------------------------------------------------
def log_ratios(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]) -> Losses:
    """ln(ppl_after / ppl_before) per split and language (the languages of `after`)."""
    return {split: {lang: after[split][lang] - before[split][lang] for lang in after[split]} for split in after}


def gain_percent(log_ratio: float) -> float:
    """The target's perplexity reduction in percent for a log-perplexity ratio."""
    return 100.0 * (1.0 - math.exp(log_ratio))


def others(languages: Sequence[str], target: str) -> list[str]:
    """The 'other languages' of a target: every evaluated language but the target and English (reported alone)."""
    return [lang for lang in languages if lang not in (target, "en")]


def point(changes: Mapping[str, float], target: str) -> dict[str, float | None]:
    """One point of a curve from one split's changes: target gain %, English's change, others' mean |change|."""
    rest = [abs(changes[lang]) for lang in others(list(changes), target)]
    return {"target_gain_percent": gain_percent(changes[target]) if target in changes else None,
            "english": changes.get("en") if target != "en" else None,
            "others_mean_abs": float(np.mean(rest)) if rest else None}


def curve(base: Losses, losses_by_step: Mapping[int, Losses], target: str) -> dict[str, list[dict[str, Any]]]:
    """Per split: the run's points in step order, starting with the base model at step 0 (no change)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for step in sorted([0, *losses_by_step]):
        changes = log_ratios(base, losses_by_step[step]) if step else {
            split: {lang: 0.0 for lang in by_lang} for split, by_lang in next(iter(losses_by_step.values())).items()}
        for split, by_lang in changes.items():
            out.setdefault(split, []).append({"step": step, **point(by_lang, target)})
    return out


def at_gain(points: Sequence[Mapping[str, Any]], gain: float) -> dict[str, Any] | None:
    """The curve where the target gain first reaches `gain` % (linear between the two points around it), or
    None if it never does: the step (fractional), English's change and the others' mean |change| there, and
    `from_base`: whether it lies before the first scored checkpoint (interpolated from the base model, so
    it says no more than that checkpoint does, scaled)."""
    for before, after in zip(points, points[1:]):
        g0, g1 = before["target_gain_percent"], after["target_gain_percent"]
        if g0 is None or g1 is None or not g0 < gain <= g1:
            continue
        share = (gain - g0) / (g1 - g0)
        return {**{key: (None if before[key] is None or after[key] is None
                         else before[key] + share * (after[key] - before[key]))
                   for key in ("step", "english", "others_mean_abs")},
                "from_base": before["step"] == 0}
    return None


def t_interval(values: Sequence[float | None], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and Student-t interval (mean ± t(1-(1-c)/2, n-1) · s/√n) of the values that are not None;
    `per_seed` keeps them in seed order (None where a seed has no value). low/high are None below 2 values."""
    from scipy import stats

    present = np.asarray([v for v in values if v is not None], float)
    n = int(present.size)
    mean = float(present.mean()) if n else None
    half = (float(stats.t.ppf(0.5 + confidence / 2, n - 1) * present.std(ddof=1) / math.sqrt(n)) if n >= 2 else None)
    return {"mean": mean, "low": mean - half if half is not None else None,
            "high": mean + half if half is not None else None, "n": n,
            "per_seed": [None if v is None else float(v) for v in values]}


def excludes_zero(interval: Mapping[str, Any]) -> bool:
    """The interval lies wholly on one side of 0 (the difference is larger than its interval)."""
    return interval["low"] is not None and (interval["low"] > 0 or interval["high"] < 0)


def summarize_arm(curves: Sequence[Mapping[str, list]], final_changes: Sequence[Losses], target: str,
                  gains: Sequence[float]) -> dict[str, Any]:
    """Over an arm's seeds (one curve and one set of final changes each): per split, the final change of every
    language and of the curve's three quantities, and the matched-gain values, each a t-interval."""
    final: dict[str, Any] = {}
    matched: dict[str, Any] = {}
    for split in final_changes[0]:
        languages = list(final_changes[0][split])
        last = [c[split][-1] for c in curves]
        final[split] = {"change": {lang: t_interval([f[split][lang] for f in final_changes]) for lang in languages},
                        **{key: t_interval([p[key] for p in last])
                           for key in ("target_gain_percent", "english", "others_mean_abs")}}
        matched[split] = {}
        for gain in gains:
            hits = [at_gain(c[split], float(gain)) for c in curves]
            matched[split][f"{gain:g}"] = {
                "seeds_reached": sum(h is not None for h in hits),
                "seeds_from_base": sum(bool(h and h["from_base"]) for h in hits),
                **{key: t_interval([h[key] if h else None for h in hits])
                   for key in ("step", "english", "others_mean_abs")}}
    return {"final": final, "matched": matched}


def paired_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """t-interval of a - b over the seeds both have (the seeds share data orders, so the pairs are matched)."""
    return t_interval([x - y if x is not None and y is not None else None
                       for x, y in zip(a["per_seed"], b["per_seed"])])


def comparisons(arms: Mapping[str, Mapping[str, Any]], gains: Sequence[float]) -> dict[str, Any]:
    """Per split, gain and quantity (English's change, others' mean |change|): every pair of arms' paired
    difference at that matched gain; `beyond_interval` says whether its interval excludes 0."""
    labels = list(arms)
    out: dict[str, Any] = {}
    splits = list(next(iter(arms.values()))["matched"]) if arms else []
    for split in splits:
        for gain in gains:
            key = f"{gain:g}"
            for quantity in ("english", "others_mean_abs"):
                rows = []
                for i, a in enumerate(labels):
                    for b in labels[i + 1:]:
                        difference = paired_difference(arms[a]["matched"][split][key][quantity],
                                                       arms[b]["matched"][split][key][quantity])
                        rows.append({"a": a, "b": b, "difference": difference,
                                     "beyond_interval": excludes_zero(difference)})
                out.setdefault(split, {}).setdefault(key, {})[quantity] = rows
    return out
