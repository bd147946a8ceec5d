"""LSN ablation: per-language perplexity with each language's neurons deactivated (silu(gate) set to 0).

Rows are the deactivated language (plus a "none" baseline), columns the evaluated language; a language's
own neurons should hurt its own perplexity most (the diagonal). Each cell is `train.evaluate.Evaluator`'s
loss under that row's `ffn_gate_scale`: one compile serves every row.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from seallm_jax.data.corpus import check_languages
from seallm_jax.errors import UnknownLanguageError
from seallm_jax.files import atomic_file
from seallm_jax.lsn.neurons import NeuronSet
from seallm_jax.lsn.stats import Batch
from seallm_jax.train.evaluate import Evaluator

BASELINE = "none"  # the row with no neurons deactivated


@dataclasses.dataclass
class AblationResult:
    """perplexity[row][column]: row = deactivated language (or "none"), column = evaluated language."""

    deactivated: list[str]
    evaluated: list[str]
    perplexity: np.ndarray  # [rows, columns]
    tokens: dict[str, int]  # target tokens evaluated per column language
    neurons: dict[str, int]  # neurons deactivated per row language
    metadata: dict = dataclasses.field(default_factory=dict)

    def relative_change(self) -> np.ndarray:
        """perplexity / baseline perplexity - 1, per row and column."""
        baseline = self.perplexity[self.deactivated.index(BASELINE)]
        return self.perplexity / baseline[None, :] - 1.0

    def to_json_dict(self) -> dict:
        relative = self.relative_change()
        return {
            "deactivated": self.deactivated,
            "evaluated": self.evaluated,
            "perplexity": {row: dict(zip(self.evaluated, map(float, self.perplexity[i])))
                           for i, row in enumerate(self.deactivated)},
            "relative_change": {row: dict(zip(self.evaluated, map(float, relative[i])))
                                for i, row in enumerate(self.deactivated)},
            "tokens": self.tokens,
            "neurons": self.neurons,
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike) -> None:
        with atomic_file(path) as staging, open(staging, "w", encoding="utf-8") as f:
            json.dump(self.to_json_dict(), f, indent=1)
            f.write("\n")

    def table(self) -> str:
        """Perplexity with the relative change from the baseline, one row per deactivated language."""
        relative = self.relative_change()
        width = max(16, *(len(c) + 2 for c in self.evaluated))
        lines = ["deactivated \\ evaluated".ljust(24) + "".join(c.rjust(width) for c in self.evaluated)]
        for i, row in enumerate(self.deactivated):
            label = f"{row} ({self.neurons.get(row, 0)} neurons)" if row != BASELINE else "none (baseline)"
            cells = []
            for j in range(len(self.evaluated)):
                cell = f"{self.perplexity[i, j]:.2f}"
                if row != BASELINE:
                    cell += f" {100 * relative[i, j]:+.0f}%"
                cells.append(cell.rjust(width))
            lines.append(label.ljust(24) + "".join(cells))
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, title: str | None = None) -> None:
        """Heatmap PNG of the relative perplexity change (rows: deactivated, columns: evaluated)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.deactivated if r != BASELINE]
        relative = self.relative_change()[[self.deactivated.index(r) for r in rows]]
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(self.evaluated), 1.2 + 0.55 * len(rows)))
        image = ax.imshow(100 * relative, cmap="Reds", aspect="auto", vmin=0)
        ax.set_xticks(range(len(self.evaluated)), labels=self.evaluated)
        ax.set_yticks(range(len(rows)), labels=rows)
        ax.set_xlabel("evaluated language")
        ax.set_ylabel("deactivated neurons of")
        for (i, j), value in np.ndenumerate(100 * relative):
            ax.text(j, i, f"{value:+.0f}", ha="center", va="center", fontsize=7)
        fig.colorbar(image, ax=ax, label="perplexity change (%)")
        ax.set_title(title or "Perplexity change when a language's neurons are deactivated")
        fig.tight_layout()
        with atomic_file(path) as staging:
            fig.savefig(staging, dpi=120)
        plt.close(fig)


def ablation_matrix(model: nnx.Module, neuron_set: NeuronSet, batches_by_language: Mapping[str, Iterable[Batch]],
                    *, deactivate: Sequence[str] | None = None, mesh: Mesh | None = None,
                    progress: bool = False) -> AblationResult:
    """Perplexity of every evaluated language (keys of `batches_by_language`) with each language's neurons
    in `deactivate` (default: every language of the neuron set that is evaluated) switched off."""
    config = model.config
    neuron_set.check_compatible(config.num_hidden_layers, config.intermediate_size)
    evaluated = list(batches_by_language)
    if deactivate is None:
        deactivate = [lang for lang in evaluated if lang in neuron_set.languages]
    check_languages(deactivate, sorted(neuron_set.languages), where="the neuron set")
    if not deactivate:
        raise UnknownLanguageError(
            f"nothing to deactivate: the neuron set has neurons for {', '.join(sorted(neuron_set.languages))}, none of "
            f"which is evaluated ({', '.join(evaluated)}); evaluate one of them or name them with --deactivate")
    evaluator = Evaluator(model, mesh)
    batches = {lang: list(b) for lang, b in batches_by_language.items()}  # evaluated once per row
    rows = [BASELINE, *deactivate]
    perplexity = np.zeros((len(rows), len(evaluated)))
    tokens: dict[str, int] = {}
    steps = [(i, j) for i in range(len(rows)) for j in range(len(evaluated))]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="lsn ablate", unit="eval")
    for i, row in enumerate(rows):
        scale = None if row == BASELINE else neuron_set.gate_scale([row])
        for j, lang in enumerate(evaluated):
            loss, count = evaluator.loss(batches[lang], scale)
            perplexity[i, j] = math.exp(loss)
            tokens[lang] = count
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    counts = neuron_set.counts()
    return AblationResult(deactivated=rows, evaluated=evaluated, perplexity=perplexity, tokens=tokens,
                          neurons={lang: counts[lang] for lang in deactivate},
                          metadata={"method": neuron_set.method})
