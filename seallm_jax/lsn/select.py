"""Select language-specific neurons from `NeuronStats`: LAPE (Tang et al. 2024) and PLND (Zhao et al. 2024).

Every threshold is a named config field with the paper's default; the result is a `NeuronSet`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np

from seallm_jax.errors import ConfigError, DataFormatError, UnknownLanguageError
from seallm_jax.files import atomic_file
from seallm_jax.lsn.neurons import FFN_MATRICES, NeuronSet
from seallm_jax.lsn.stats import NeuronStats

METHODS = ("lape", "plnd")


@dataclasses.dataclass(frozen=True)
class LapeConfig:
    """LAPE: lowest-entropy neurons of the activation probability over languages.

    top_rate: share of all (layer, neuron) pairs selected (the paper's 0.01; an older version used 0.05).
    filter_rate: a neuron is a candidate only if some language's probability exceeds the k-th smallest of
        all probabilities with k = round(N * filter_rate) (the reference's "95th percentile").
    activation_bar_ratio: a selected neuron belongs to every language whose probability exceeds the same
        kind of percentile at this ratio.
    budget: when set, a fraction of all model parameters that replaces top_rate: the number of selected
        neurons is floor(budget * num_parameters / (len(matrices) * hidden_size)).
    matrices: FFN matrices a neuron owns for the budget and the reported parameter fraction.
    """

    top_rate: float = 0.01
    filter_rate: float = 0.95
    activation_bar_ratio: float = 0.95
    budget: float | None = None
    matrices: tuple[str, ...] = FFN_MATRICES

    def __post_init__(self):
        for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"LapeConfig.{name} must be in (0, 1], got {value}")
        _check_budget(self.budget, self.matrices)


@dataclasses.dataclass(frozen=True)
class PlndConfig:
    """PLND: neurons in the per-document top-k (k fixed when the statistics were computed) of most documents.

    membership_fraction: a neuron belongs to a language when it is in the top-k of at least this share of
        the language's documents (1.0 = every document, the paper's strict intersection).
    budget: when set, a fraction of all model parameters: each language keeps at most
        floor(budget * num_parameters / (len(matrices) * hidden_size)) neurons, the most frequent first
        (ties broken by mean importance).
    max_languages_per_neuron: drop neurons selected for more than this many languages (language-agnostic
        ones); None keeps them all, as the paper does.
    """

    membership_fraction: float = 1.0
    budget: float | None = None
    max_languages_per_neuron: int | None = None
    matrices: tuple[str, ...] = FFN_MATRICES

    def __post_init__(self):
        if not 0.0 < self.membership_fraction <= 1.0:
            raise ConfigError(f"PlndConfig.membership_fraction must be in (0, 1], got {self.membership_fraction}")
        if self.max_languages_per_neuron is not None and self.max_languages_per_neuron < 1:
            raise ConfigError("PlndConfig.max_languages_per_neuron must be >= 1 or None")
        _check_budget(self.budget, self.matrices)


def _check_budget(budget: float | None, matrices: Sequence[str]) -> None:
    if budget is not None and not 0.0 < budget <= 1.0:
        raise ConfigError(f"budget must be a fraction of all parameters in (0, 1], got {budget}")
    unknown = [m for m in matrices if m not in FFN_MATRICES]
    if unknown or not matrices:
        raise ConfigError(f"matrices must be a non-empty subset of {FFN_MATRICES}, got {tuple(matrices)}")


def budget_neurons(stats: NeuronStats, budget: float, matrices: Sequence[str]) -> int:
    """How many neurons `budget` (a fraction of all parameters) buys: each owns len(matrices) * hidden weights."""
    hidden, total = stats.metadata.get("hidden_size"), stats.metadata.get("num_parameters")
    if not hidden or not total:
        raise DataFormatError("a parameter budget needs hidden_size and num_parameters in the statistics' metadata")
    return int(math.floor(budget * total / (len(matrices) * hidden)))


def kth_value(values: np.ndarray, rate: float) -> float:
    """The reference's percentile: the k-th smallest value (1-based) with k = round(len(values) * rate)."""
    flat = np.sort(values.reshape(-1), kind="stable")
    k = min(max(int(round(flat.size * rate)), 1), flat.size)
    return float(flat[k - 1])


def lape_entropy(activation_probability: np.ndarray) -> np.ndarray:
    """Entropy over languages of the normalized activation probability `[L, I, K]` -> `[L, I]` (0 log 0 = 0)."""
    total = activation_probability.sum(axis=-1, keepdims=True)
    normalized = np.divide(activation_probability, total, out=np.zeros_like(activation_probability),
                           where=total > 0)
    logs = np.log(normalized, out=np.zeros_like(normalized), where=normalized > 0)
    return -(normalized * logs).sum(axis=-1)


def select_lape(stats: NeuronStats, config: LapeConfig = LapeConfig()) -> NeuronSet:
    """LAPE selection; a neuron may belong to several languages, and a selected one to none (then dropped)."""
    probability = stats.activation_probability()  # [L, I, K]
    num_layers, intermediate, _ = probability.shape
    entropy = lape_entropy(probability)
    filter_bar = kth_value(probability, config.filter_rate)
    # A neuron that no language activates above the bar is never specific to one.
    entropy = np.where((probability > filter_bar).any(axis=-1), entropy, np.inf)
    if config.budget is not None:
        num_selected = budget_neurons(stats, config.budget, config.matrices)
    else:
        num_selected = int(round(entropy.size * config.top_rate))
    flat_entropy = entropy.reshape(-1)
    order = np.argsort(flat_entropy, kind="stable")[:num_selected]
    order = order[np.isfinite(flat_entropy[order])]  # fewer candidates than asked: keep only real ones
    activation_bar = kth_value(probability, config.activation_bar_ratio)
    selected_probability = probability.reshape(-1, probability.shape[-1])[order]  # [n, K]
    masks = {}
    for column, language in enumerate(stats.languages):
        mask = np.zeros(num_layers * intermediate, bool)
        mask[order[selected_probability[:, column] > activation_bar]] = True
        masks[language] = mask.reshape(num_layers, intermediate)
    settings = dataclasses.asdict(config) | {
        "num_candidates": int(order.size), "filter_bar": filter_bar, "activation_bar": activation_bar,
    }
    return _neuron_set("lape", masks, stats, settings)


def select_plnd(stats: NeuronStats, config: PlndConfig = PlndConfig()) -> NeuronSet:
    """PLND selection from per-document top-k membership counts."""
    if not stats.has_plnd:
        raise ConfigError("these statistics were computed without PLND (`lsn stats --lape-only`): "
                          "select with --method lape, or recompute them without --lape-only")
    empty = [lang for lang, docs in zip(stats.languages, stats.document_count) if docs <= 0]
    if empty:
        raise UnknownLanguageError(f"statistics have no documents for language(s) {empty}")
    # count >= fraction * documents, with a tolerance so that 0.9 * 10 documents means 9, not 10.
    required = config.membership_fraction * stats.document_count[:, None, None] - 1e-9
    masks_array = stats.topk_count >= required  # [K, L, I]
    if config.max_languages_per_neuron is not None:
        masks_array &= masks_array.sum(axis=0, keepdims=True) <= config.max_languages_per_neuron
    if config.budget is not None:
        limit = budget_neurons(stats, config.budget, config.matrices)
        mean_importance = stats.importance_sum / np.maximum(stats.token_count, 1)[:, None, None]
        for row in range(len(stats.languages)):
            chosen = np.flatnonzero(masks_array[row])
            if chosen.size > limit:
                # most frequent first, then most important (lexsort: last key is primary)
                rank = np.lexsort((-mean_importance[row].reshape(-1)[chosen], -stats.topk_count[row].reshape(-1)[chosen]))
                keep = np.zeros(masks_array[row].size, bool)
                keep[chosen[rank[:limit]]] = True
                masks_array[row] = keep.reshape(masks_array[row].shape)
    masks = {lang: masks_array[row] for row, lang in enumerate(stats.languages)}
    settings = dataclasses.asdict(config) | {"top_k": stats.top_k,
                                             "documents": dict(zip(stats.languages, stats.document_count.tolist()))}
    return _neuron_set("plnd", masks, stats, settings)


def select(stats: NeuronStats, method: str, config: LapeConfig | PlndConfig | None = None) -> NeuronSet:
    """Dispatch on `method` ('lape' or 'plnd')."""
    if method == "lape":
        return select_lape(stats, config or LapeConfig())
    if method == "plnd":
        return select_plnd(stats, config or PlndConfig())
    raise ConfigError(f"unknown LSN selection method {method!r}; expected one of {METHODS}")


def _neuron_set(method: str, masks: dict[str, np.ndarray], stats: NeuronStats, settings: dict) -> NeuronSet:
    settings = {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}
    settings["statistics_tokens"] = dict(zip(stats.languages, stats.token_count.tolist()))
    if "model" in stats.metadata:
        settings["model"] = stats.metadata["model"]
    return NeuronSet.from_masks(
        method, masks, hidden_size=stats.metadata.get("hidden_size"),
        num_parameters=stats.metadata.get("num_parameters"), config=settings,
    )


def plot_neuron_heatmap(neuron_set: NeuronSet, path: str | os.PathLike, languages: Sequence[str] | None = None,
                        title: str | None = None) -> None:
    """Heatmap PNG of selected neurons per layer (columns) and language (rows), counts written in cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = list(languages) if languages is not None else sorted(neuron_set.languages)
    counts = neuron_set.counts_per_layer(languages)
    width = max(6.0, 0.45 * neuron_set.num_layers + 2.0)
    fig, ax = plt.subplots(figsize=(width, max(2.5, 0.45 * len(languages) + 1.5)))
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(languages)), labels=languages)
    ax.set_xticks(range(neuron_set.num_layers))
    ax.set_xlabel("layer")
    ax.set_ylabel("language")
    if neuron_set.num_layers * len(languages) <= 600:
        limit = counts.max() / 2 if counts.size else 0
        for (row, col), value in np.ndenumerate(counts):
            ax.text(col, row, str(value), ha="center", va="center", fontsize=6,
                    color="black" if value > limit else "white")
    fig.colorbar(image, ax=ax, label="neurons")
    ax.set_title(title or f"{neuron_set.method.upper()} neurons per layer ({neuron_set.intermediate_size} per layer)")
    fig.tight_layout()
    with atomic_file(path) as staging:
        fig.savefig(staging, dpi=120)
    plt.close(fig)
