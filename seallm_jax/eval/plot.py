"""Compare models: one panel per benchmark found in the results files, grouped bars per language,
one bar per model, on each benchmark's primary metric (bits per byte for perplexity).
"""
from __future__ import annotations

import math
from pathlib import Path

from seallm_jax.eval.runner import load_results
from seallm_jax.files import atomic_file


# Token perplexity depends on the tokenizer (a byte-level model and a 150k-vocabulary model split the
# same text into very different numbers of tokens), so models are compared on bits per byte.
PLOT_METRIC_OVERRIDES = {"ppl": "bits_per_byte"}


def plot_comparison(results_paths: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    """Write a PNG comparing the results files (first file's benchmarks, in order)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on pods and CI
    import matplotlib.pyplot as plt
    import numpy as np

    if not results_paths:
        raise ValueError("give at least one results file to plot")
    runs = [load_results(path) for path in results_paths]
    names = labels or [Path(model).name or str(model) for model, _ in runs]
    if len(names) != len(runs):
        raise ValueError(f"{len(names)} labels for {len(runs)} results files")
    keys: list[str] = []
    for _, results in runs:
        keys += [key for key in results if key not in keys]
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.6 * rows), squeeze=False)
    for panel, key in zip(axes.flat, keys):
        present = [(name, results[key]) for name, (_, results) in zip(names, runs) if key in results]
        metric = PLOT_METRIC_OVERRIDES.get(present[0][1].task, present[0][1].primary_metric)
        languages = sorted({lang for _, result in present for lang in result.by_language})
        width = 0.8 / len(present)
        positions = np.arange(len(languages))
        for offset, (name, result) in enumerate(present):
            values = [result.by_language.get(lang, {}).get(metric, np.nan) for lang in languages]
            panel.bar(positions + offset * width - 0.4 + width / 2, values, width, label=name)
        panel.set_xticks(positions, languages, rotation=45 if len(languages) > 8 else 0)
        panel.set_title(key)
        panel.set_ylabel(metric)
    for panel in list(axes.flat)[len(keys):]:
        panel.axis("off")
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    out = Path(out)
    with atomic_file(out) as staging:
        figure.savefig(staging, dpi=110)
    plt.close(figure)
    return out
