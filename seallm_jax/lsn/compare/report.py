"""Reporting for `lsn compare`: compare.json's content (`build_report`), its tables (`tables`: printed by
`format_table`, written to compare.md by `format_markdown`) and the plot of target gain against English's and
the other languages' change (`plot_curves`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seallm_jax.files import atomic_file
from seallm_jax.lsn.compare import score
from seallm_jax.lsn.compare.settings import CONFIDENCE, EVAL_SPLITS

SCHEMA_VERSION = 3
DEFINITIONS = {
    "change": "ln(ppl_after / ppl_before) = loss after - loss before, per language (negative = better)",
    "target_gain_percent": "100 * (1 - ppl_after / ppl_before) of the target language",
    "others_mean_abs": "mean |change| over the evaluated languages other than the target and English",
    "interval": f"{CONFIDENCE:.0%} Student-t interval over seeds: mean +- t(n-1) * s / sqrt(n); low/high are "
                "null with fewer than 2 values; per_seed lists the seeds' values (null: no value)",
    "matched": "the curve (base at step 0, then every eval_every steps) at the first point where the target gain "
               "reaches the given %, linear between the two checkpoints around it; a seed that never reaches it "
               "has no value (seeds_reached counts the others); seeds_from_base counts the seeds that reach it before "
               "the first scored checkpoint, where the point is interpolated from the base model (a smaller gain "
               "than the curves resolve: it only rescales that checkpoint)",
    "comparisons": "paired differences a - b over the seeds both arms reach the gain with (seeds share data "
                   "orders); beyond_interval: the interval of the difference excludes 0",
}


def build_report(settings, context, base, deactivation, results, scorer, timings, started,
                 complete: bool, unfinished: Sequence[str] = ()) -> dict[str, Any]:
    """Everything compare.json holds (schema in docs/lsn.md section 6). `unfinished`: the arms ("target/label")
    a report-only run left out because OUT does not hold all their runs yet."""
    import jax

    from seallm_jax.data.other_domain import other_domain_manifest

    manifest = other_domain_manifest()["languages"]
    return {
        "schema_version": SCHEMA_VERSION, "complete": complete, "unfinished": list(unfinished),
        "config": dataclasses.asdict(settings),
        "definitions": DEFINITIONS,
        "model": {"path": os.path.abspath(settings.model), "num_parameters": context.num_parameters,
                  "hidden_size": context.hidden_size},
        "machine": {"backend": jax.default_backend(), "devices": jax.device_count(), "cpu_count": os.cpu_count(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "evaluation": {"tokens": scorer.tokens, "curve_steps": settings.curve_steps(),
                       "other_domain_sources": {
                           lang: {k: manifest[lang][k] for k in ("package", "version", "domain", "license")}
                           for lang in scorer.batches["other_domain"] if lang in manifest}},
        "neurons": {"lape_counts": context.lape.counts(),
                    "statistics_tokens": dict(zip(context.stats.languages, context.stats.token_count.tolist()))},
        "base": {"loss": base,
                 "perplexity": {s: {lang: math.exp(v) for lang, v in by.items()} for s, by in base.items()}},
        "deactivation": deactivation,
        "results": results,
        "comparisons": {target: score.comparisons(by_label, settings.target_gains)
                        for target, by_label in results.items() if by_label},
        "timings": {**timings, "total_seconds": round(time.perf_counter() - started, 2)},
    }


# ---- text -------------------------------------------------------------------------------------------------
def _interval(value: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 3, signed: bool = True) -> str:
    if not value or value["mean"] is None:
        return "-"
    form = f"{'+' if signed else ''}.{digits}f"
    text = f"{scale * value['mean']:{form}}"
    if value["low"] is not None:
        text += f" [{scale * value['low']:{form}},{scale * value['high']:{form}}]"
    return text


def tables(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every table of the report, as `{"title", "header", "rows", "notes"}` (cells as text): the deactivation
    check, then per target and split the arms at each matched gain and at the last step, the latter with the
    differences between arms that are larger than their intervals as notes, and every language's change at the
    last step. `format_table` and `format_markdown` render them."""
    out = []
    for target, check in report.get("deactivation", {}).items():
        out.append({"title": f"deactivation check, target {target} ({check['neurons']} neurons), {check['split']} "
                             "split: change when zeroed",
                    "header": ["language", "LAPE", "random", "LAPE - random"],
                    "rows": [[lang, f"{value:+.3f}", _interval(check["random"][lang]),
                              _interval(check["lape_minus_random"][lang])] for lang, value in check["lape"].items()],
                    "notes": []})
    gains = [f"{g:g}" for g in report["config"]["target_gains"]]
    first_step = (report.get("evaluation", {}).get("curve_steps") or ["?"])[0]
    for target, by_label in report["results"].items():
        for split in EVAL_SPLITS:
            if not by_label or split not in next(iter(by_label.values()))["matched"]:
                continue
            rows = []
            for g in gains:
                for label, record in by_label.items():
                    m = record["matched"][split][g]
                    lr = f"{record['learning_rate']:.0e}"
                    if not m["seeds_reached"]:
                        rows.append([f"{g}%", label, lr, "not reached", "", "", ""])
                        continue
                    mark = "*" if m.get("seeds_from_base") else ""
                    rows.append([f"{g}%", label, lr, _interval(m["english"]), _interval(m["others_mean_abs"]),
                                 _interval(m["step"], digits=1, signed=False), f"{m['seeds_reached']}{mark}"])
            finals = [[label, f"{record['learning_rate']:.0e}", _interval(record["final"][split]["english"]),
                       _interval(record["final"][split]["others_mean_abs"]),
                       _interval(record["final"][split]["target_gain_percent"], digits=1)]
                      for label, record in by_label.items()]
            by_gain = report.get("comparisons", {}).get(target, {}).get(split, {})
            beyond = [f"at {g}%, {q}: {row['a']} - {row['b']} = {_interval(row['difference'])}"
                      for g in gains for q, pairs in by_gain.get(g, {}).items()
                      for row in pairs if row["beyond_interval"]]
            out.append({"title": f"target {target}, {split}: at matched target gain (seeds reaching it; * = before "
                                 f"the first scored checkpoint, step {first_step}: interpolated from the base model)",
                        "header": ["gain", "arm", "lr", "English", "others mean |change|", "step", "seeds"],
                        "rows": rows, "notes": []})
            out.append({"title": f"target {target}, {split}: at the last step ({report['config']['steps']})",
                        "header": ["arm", "lr", "English", "others mean |change|", "target gain %"],
                        "rows": finals,
                        "notes": ["differences larger than their interval:" + ("" if beyond else " none"), *beyond]})
            # Which languages the means above hide: an arm can leave the mean small and still damage one.
            languages = list(next(iter(by_label.values()))["final"][split]["change"])
            out.append({"title": f"target {target}, {split}: every language's change at the last step "
                                 f"({report['config']['steps']})",
                        "header": ["arm", *languages],
                        "rows": [[label, *(_interval(record["final"][split]["change"][lang]) for lang in languages)]
                                 for label, record in by_label.items()],
                        "notes": []})
    return out


CHANGES = f"changes are ln(ppl after / ppl before); [low,high] = {CONFIDENCE:.0%} t-interval over seeds"


def _partial(report: Mapping[str, Any]) -> list[str]:
    unfinished = report.get("unfinished") or []
    return [f"partial report: not finished yet, left out: {', '.join(unfinished)}"] if unfinished else []


def format_table(report: Mapping[str, Any]) -> str:
    """The tables as aligned text (what `lsn compare` prints)."""
    lines = [*_partial(report), CHANGES]
    for table in tables(report):
        widths = [max(len(str(cell)) for cell in column) for column in zip(table["header"], *table["rows"])]
        lines += ["", table["title"]]
        lines += ["  ".join(f"{cell:<{w}}" if i < 2 else f"{cell:>{w}}" for i, (cell, w) in
                            enumerate(zip(row, widths))).rstrip() for row in [table["header"], *table["rows"]]]
        lines += [table["notes"][0], *(f"  {note}" for note in table["notes"][1:])] if table["notes"] else []
    return "\n".join(lines)


def format_markdown(report: Mapping[str, Any]) -> str:
    """The same tables in Markdown (written to OUT/compare.md, ready for a docs page)."""
    lines = [*(f"**{line}.**" for line in _partial(report)), CHANGES + "."]
    for table in tables(report):
        lines += ["", f"**{table['title'].replace('|', '&#124;')}**", "",
                  *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                    for row in [table["header"], ["---"] * len(table["header"]), *table["rows"]])]
        if table["notes"]:
            lines += ["", table["notes"][0], *(f"- {note}" for note in table["notes"][1:])]
    return "\n".join(lines) + "\n"


# ---- the plot -----------------------------------------------------------------------------------------------
ARM_STYLE = {"lape": ("o", "tab:red"), "plnd": ("s", "tab:purple"), "random": ("x", "tab:gray"),
             "full": ("D", "tab:blue"), "lora": ("^", "tab:green")}
QUANTITIES = (("english", "English's change"), ("others_mean_abs", "others' mean |change|"))


def _band(curves: list[list[Mapping[str, Any]]], quantity: str, grid: np.ndarray):
    """Mean and interval over seeds of `quantity` along `grid` gains (each seed's first crossing)."""
    mean, low, high = [], [], []
    for gain in grid:
        values = [hit[quantity] if hit and hit[quantity] is not None else None
                  for hit in (score.at_gain(c, float(gain)) for c in curves)]
        interval = score.t_interval(values)
        mean.append(np.nan if interval["mean"] is None else interval["mean"])
        low.append(np.nan if interval["low"] is None else interval["low"])
        high.append(np.nan if interval["high"] is None else interval["high"])
    return np.array(mean), np.array(low), np.array(high)


def plot_curves(report: Mapping[str, Any], path: str) -> None:
    """Per target (rows) and split: target gain (x) against English's change and against the others' mean
    |change| (y), one curve per arm (mean over seeds) with its interval band, matched-gain points marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on pods and CI
    import matplotlib.pyplot as plt

    targets = [t for t, by_label in report["results"].items() if by_label]
    columns = [(split, q) for split in EVAL_SPLITS for q in QUANTITIES]
    rows = max(len(targets), 1)
    fig, axes = plt.subplots(rows, len(columns), figsize=(4.6 * len(columns), 3.8 * rows), squeeze=False)
    gains = [float(g) for g in report["config"]["target_gains"]]
    for row, target in enumerate(targets):
        for col, (split, (quantity, name)) in enumerate(columns):
            ax = axes[row][col]
            for label, record in report["results"][target].items():
                curves = [run["curve"][split] for run in record["runs"] if split in run["curve"]]
                if not curves or quantity == "english" and target == "en":
                    continue
                top = max(max((p["target_gain_percent"] or 0.0) for p in c) for c in curves)
                if top <= 0:
                    continue
                grid = np.linspace(0.0, top, 40)[1:]
                mean, low, high = _band(curves, quantity, grid)
                marker, color = ARM_STYLE.get(record["arm"], ("*", "black"))
                if record["arm"] == "lora" and not record["details"].get("closest_to_lape", True):
                    color = "tab:olive"
                # Below the first scored checkpoint's gain the curve is a line from the base model: dashed.
                first = min((c[1]["target_gain_percent"] for c in curves if len(c) > 1
                             and c[1]["target_gain_percent"] is not None), default=0.0)
                x, y = np.r_[0.0, grid], np.r_[0.0, mean]
                joint = int(np.flatnonzero(x <= first)[-1])  # the two pieces share this point
                ax.plot(x[:joint + 1], y[:joint + 1], color=color, lw=1.2, ls="--")
                ax.plot(x[joint:], y[joint:], color=color, label=label, lw=1.4)
                ax.fill_between(grid, low, high, color=color, alpha=0.15, lw=0)
                for curve in curves:  # every seed's scored checkpoints
                    points = [p for p in curve[1:] if p["target_gain_percent"] is not None and p[quantity] is not None]
                    ax.scatter([p["target_gain_percent"] for p in points], [p[quantity] for p in points], s=7,
                               color=color, alpha=0.45, lw=0)
                for gain in gains:
                    matched = record["matched"][split][f"{gain:g}"][quantity]
                    if matched["mean"] is None:
                        continue
                    errors = None if matched["low"] is None else [[matched["mean"] - matched["low"]],
                                                                   [matched["high"] - matched["mean"]]]
                    ax.errorbar([gain], [matched["mean"]], yerr=errors, marker=marker, color=color, ms=6,
                                capsize=3, lw=1)
            for gain in gains:
                ax.axvline(gain, color="black", lw=0.4, ls=":")
            ax.axhline(0, color="black", lw=0.5)
            ax.set_xlabel(f"{target} perplexity reduction % ({split.replace('_', '-')} text)")
            ax.set_ylabel(f"{name} (ln ppl ratio)")
            ax.set_title(f"target {target}: {name}, {split.replace('_', '-')}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"mean over seeds, bands: {CONFIDENCE:.0%} t-interval; markers: matched target gains; dots: each "
                 "seed's scored checkpoints; dashed: before the first checkpoint (a line from the base model)", fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as staging:
        fig.savefig(staging, dpi=110, format="png")
    plt.close(fig)
