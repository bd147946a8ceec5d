"""Neuron sets: which FFN neurons (per layer) belong to which language, as a validated JSON file.

A `NeuronSet` is what selection writes, what masked training and ablation read, and what a user inspects.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from seallm_jax.errors import ConfigError, DataFormatError, UnknownLanguageError, require_file
from seallm_jax.files import atomic_file

# Per-layer neuron ids of one language: layer index -> sorted unique int array.
LayerNeurons = dict[int, np.ndarray]

# FFN matrices a neuron owns: gate/up kernel column j and down kernel row j (Flax [in, out] layout).
FFN_MATRICES = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass
class NeuronSet:
    """Language -> layer -> sorted FFN neuron ids, plus the model geometry they index into.

    `hidden_size` and `num_parameters` (of the whole model) let the set report the parameter fraction it covers.
    """

    method: str
    num_layers: int
    intermediate_size: int
    languages: dict[str, LayerNeurons]
    hidden_size: int | None = None
    num_parameters: int | None = None
    config: dict = dataclasses.field(default_factory=dict)  # the selection settings, for the record

    def __post_init__(self) -> None:
        self.languages = {lang: _normalize_layers(layers) for lang, layers in self.languages.items()}
        self.validate()

    # ---- checks -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the language/layer when ids are out of range, unsorted or duplicated."""
        if self.num_layers <= 0 or self.intermediate_size <= 0:
            raise DataFormatError(
                f"neuron set: num_layers ({self.num_layers}) and intermediate_size ({self.intermediate_size}) "
                "must be positive"
            )
        for lang, layers in self.languages.items():
            _validate_layers(layers, self.num_layers, self.intermediate_size, f"language {lang!r}")

    def check_compatible(self, num_layers: int, intermediate_size: int) -> None:
        """A `ConfigError` when this set was selected for a model of a different shape."""
        if (num_layers, intermediate_size) != (self.num_layers, self.intermediate_size):
            raise ConfigError(
                f"the neuron set is for a model of {self.num_layers} layers x {self.intermediate_size} FFN neurons, "
                f"but this model has {num_layers} x {intermediate_size}: select neurons from statistics of this "
                "model (`seallm-jax lsn stats`, then `lsn select`)"
            )

    def _languages_or_all(self, languages: Iterable[str] | None) -> list[str]:
        if languages is None:
            return sorted(self.languages)
        languages = list(languages)
        unknown = [lang for lang in languages if lang not in self.languages]
        if unknown:
            raise UnknownLanguageError(
                f"the neuron set has no neurons for language {', '.join(unknown)}; it has: {', '.join(sorted(self.languages))}"
            )
        return languages

    # ---- views ---------------------------------------------------------------------------------------------
    def union(self, languages: Iterable[str] | None = None) -> LayerNeurons:
        """Per-layer union of the neurons of `languages` (all languages when None)."""
        merged: LayerNeurons = {}
        for layer in range(self.num_layers):
            parts = [self.languages[lang].get(layer, _EMPTY) for lang in self._languages_or_all(languages)]
            ids = np.unique(np.concatenate(parts)) if parts else _EMPTY
            if ids.size:
                merged[layer] = ids.astype(np.int64)
        return merged

    def mask(self, languages: Iterable[str] | None = None) -> np.ndarray:
        """Boolean `[num_layers, intermediate_size]`, True for the neurons of `languages` (union)."""
        out = np.zeros((self.num_layers, self.intermediate_size), dtype=bool)
        for layer, ids in self.union(languages).items():
            out[layer, ids] = True
        return out

    def gate_scale(self, languages: Iterable[str] | None = None, dtype: type = np.float32) -> np.ndarray:
        """The model's `ffn_gate_scale` `[L, I]` that deactivates the neurons of `languages` (0 there, 1 elsewhere)."""
        return np.where(self.mask(languages), 0.0, 1.0).astype(dtype)

    def counts(self) -> dict[str, int]:
        """Number of selected neurons per language."""
        return {lang: int(sum(ids.size for ids in layers.values())) for lang, layers in self.languages.items()}

    def counts_per_layer(self, languages: Sequence[str] | None = None) -> np.ndarray:
        """`[num_languages, num_layers]` neuron counts (the heatmap's data), languages in the given order."""
        langs = self._languages_or_all(languages)
        out = np.zeros((len(langs), self.num_layers), dtype=np.int64)
        for row, lang in enumerate(langs):
            for layer, ids in self.languages[lang].items():
                out[row, layer] = ids.size
        return out

    def parameter_count(self, languages: Iterable[str] | None = None,
                        matrices: Sequence[str] = FFN_MATRICES) -> int | None:
        """Parameters owned by the union of `languages`' neurons in `matrices` (None without hidden_size)."""
        if self.hidden_size is None:
            return None
        neurons = int(self.mask(languages).sum())
        return neurons * len(matrices) * self.hidden_size

    def parameter_fraction(self, languages: Iterable[str] | None = None,
                           matrices: Sequence[str] = FFN_MATRICES) -> float | None:
        """Share of all model parameters owned by the union of `languages`' neurons (None when unknown)."""
        count = self.parameter_count(languages, matrices)
        if count is None or not self.num_parameters:
            return None
        return count / self.num_parameters

    def restricted(self, languages: Iterable[str]) -> "NeuronSet":
        """A copy holding only `languages`."""
        langs = self._languages_or_all(languages)
        return dataclasses.replace(
            self,
            languages={lang: self.languages[lang] for lang in langs},
        )

    # ---- file format ---------------------------------------------------------------------------------------
    def to_json_dict(self) -> dict:
        def layers_json(layers: LayerNeurons) -> dict[str, list[int]]:
            return {str(layer): [int(i) for i in layers[layer]] for layer in sorted(layers)}

        counts = self.counts()
        out = {
            "method": self.method,
            "num_layers": self.num_layers,
            "intermediate_size": self.intermediate_size,
            "languages": {lang: layers_json(self.languages[lang]) for lang in sorted(self.languages)},
            "counts": counts,
            "total_neurons": self.num_layers * self.intermediate_size,
            "union_count": int(self.mask().sum()),
            "hidden_size": self.hidden_size,
            "num_parameters": self.num_parameters,
            "parameter_fraction": {lang: self.parameter_fraction([lang]) for lang in sorted(self.languages)},
            "parameter_fraction_union": self.parameter_fraction(),
            "config": self.config,
        }
        return out

    def save(self, path: str | os.PathLike) -> None:
        with atomic_file(path) as staging, open(staging, "w", encoding="utf-8") as f:
            json.dump(self.to_json_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def from_json_dict(cls, data: Mapping, source: str = "neuron set") -> "NeuronSet":
        for key in ("method", "num_layers", "intermediate_size", "languages"):
            if key not in data:
                raise DataFormatError(f"{source}: missing key {key!r}")
        if "attention" in data:  # never written by seallm-jax; refused rather than silently ignored
            raise DataFormatError(f"{source}: attention units are not supported; neuron sets hold FFN neurons only")

        def layers_from_json(layers: Mapping) -> LayerNeurons:
            try:
                return {int(layer): np.asarray(ids, dtype=np.int64) for layer, ids in layers.items()}
            except (TypeError, ValueError) as error:
                raise DataFormatError(f"{source}: layer keys must be integers and ids integer lists ({error})")

        try:
            return cls(
                method=str(data["method"]),
                num_layers=int(data["num_layers"]),
                intermediate_size=int(data["intermediate_size"]),
                languages={lang: layers_from_json(layers) for lang, layers in data["languages"].items()},
                hidden_size=data.get("hidden_size"),
                num_parameters=data.get("num_parameters"),
                config=dict(data.get("config", {})),
            )
        except ValueError as error:
            raise DataFormatError(f"{source}: {error}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronSet":
        return cls.from_json_dict(_read_json(path), source=str(path))


    @classmethod
    def from_masks(cls, method: str, masks: Mapping[str, np.ndarray], **kwargs) -> "NeuronSet":
        """Build from per-language boolean `[L, I]` masks."""
        masks = {lang: np.asarray(mask, dtype=bool) for lang, mask in masks.items()}
        shapes = {mask.shape for mask in masks.values()}
        if len(shapes) != 1:
            raise DataFormatError(f"per-language masks must share one [layers, intermediate] shape, got {shapes}")
        (num_layers, intermediate_size), = shapes
        languages = {
            lang: {layer: np.flatnonzero(mask[layer]) for layer in range(num_layers) if mask[layer].any()}
            for lang, mask in masks.items()
        }
        return cls(method=method, num_layers=num_layers, intermediate_size=intermediate_size,
                   languages=languages, **kwargs)


_EMPTY = np.zeros((0,), dtype=np.int64)


def _normalize_layers(layers: Mapping) -> LayerNeurons:
    """int layer keys, int64 id arrays, empty layers dropped (the JSON lists only non-empty layers)."""
    out: LayerNeurons = {}
    for layer, ids in layers.items():
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size:
            out[int(layer)] = ids
    return out


def _validate_layers(layers: LayerNeurons, num_layers: int, size: int, what: str) -> None:
    for layer, ids in layers.items():
        if not 0 <= layer < num_layers:
            raise DataFormatError(f"neuron set: {what} has layer {layer}, expected 0..{num_layers - 1}")
        if ids.min() < 0 or ids.max() >= size:
            raise DataFormatError(
                f"neuron set: {what} layer {layer} has neuron ids outside 0..{size - 1} "
                f"(min {ids.min()}, max {ids.max()})"
            )
        if np.any(np.diff(ids) <= 0):
            raise DataFormatError(f"neuron set: {what} layer {layer} ids must be sorted and unique")


def _read_json(path: str | os.PathLike) -> dict:
    require_file(path, "neuron file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path}: not a neuron-set JSON file ({error})") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: not a neuron-set JSON file (a JSON {type(data).__name__}, expected an object)")
    return data

