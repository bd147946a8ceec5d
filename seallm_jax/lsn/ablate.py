"""LSN ablation: per-language perplexity with each language's neurons deactivated (silu(gate) set to 0).

Rows are the deactivated language (plus a "none" baseline), columns the evaluated language; a language's
own neurons should hurt its own perplexity most (the diagonal).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seallm_jax.data.corpus import check_languages
from seallm_jax.errors import DataFormatError, UnknownLanguageError
from seallm_jax.files import atomic_file
from seallm_jax.lsn.neurons import NeuronSet
from seallm_jax.lsn.stats import BATCH_MESH_AXES, Batch, _segment_positions_np
from seallm_jax.train.step import cross_entropy_sums

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


def _loss_sums(graphdef: nnx.GraphDef, params, batch: dict[str, jax.Array], gate_scale: jax.Array):
    model = nnx.merge(graphdef, params)
    logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                   ffn_gate_scale=gate_scale)
    loss_sum, _ = cross_entropy_sums(logits, batch["targets"], batch["loss_mask"])
    return loss_sum, jnp.sum(batch["loss_mask"].astype(jnp.float32))


class PerplexityEvaluator:
    """Jitted summed cross-entropy of a batch under an `ffn_gate_scale` (one compile for every ablation row)."""

    def __init__(self, model: nnx.Module, mesh: Mesh | None = None):
        self.graphdef, params = nnx.split(model, nnx.Param)
        params = params.to_pure_dict()
        self.config = model.config
        self.batch_sharding = None
        if mesh is not None:
            axes = tuple(axis for axis in BATCH_MESH_AXES if axis in mesh.axis_names)
            self.batch_sharding = NamedSharding(mesh, PartitionSpec(axes))
            params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        self.params = params
        self._compiled = jax.jit(_loss_sums, static_argnums=0)

    def _put(self, batch: Batch) -> dict[str, jax.Array]:
        segment_ids = np.asarray(batch["segment_ids"], np.int32)
        arrays = {
            "input_ids": np.asarray(batch["input_ids"], np.int32),
            "targets": np.asarray(batch["targets"], np.int32),
            "loss_mask": np.asarray(batch["loss_mask"], np.float32),
            "segment_ids": segment_ids,
            "positions": np.asarray(batch["positions"], np.int32) if "positions" in batch
            else _segment_positions_np(segment_ids),
        }
        if self.batch_sharding is None:
            return {k: jnp.asarray(v) for k, v in arrays.items()}
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v) for k, v in arrays.items()}

    def loss(self, batches: Sequence[Batch], gate_scale: np.ndarray | None = None) -> tuple[float, int]:
        """(mean token cross-entropy, target tokens) over `batches`."""
        if gate_scale is None:
            gate_scale = np.ones((self.config.num_hidden_layers, self.config.intermediate_size), np.float32)
        scale = jnp.asarray(gate_scale, jnp.float32)
        results = [self._compiled(self.graphdef, self.params, self._put(batch), scale) for batch in batches]
        loss_sum = sum(float(r[0]) for r in results)
        tokens = int(sum(float(r[1]) for r in results))
        if tokens == 0:
            raise DataFormatError("no target tokens to evaluate (all loss_mask entries are 0): the text is empty")
        return loss_sum / tokens, tokens


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
    evaluator = PerplexityEvaluator(model, mesh)
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
