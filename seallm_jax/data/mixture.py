"""Language mixing: per-language weights (explicit, proportional, temperature) and a deterministic
interleaving of per-language sources that realizes those weights as token shares.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

from seallm_jax.data.corpus import check_language
from seallm_jax.errors import ConfigError, DataFormatError, UnknownLanguageError

WeightMethod = Literal["explicit", "proportional", "temperature", "uniform"]
# SeaLLMs-style default: a temperature above 1 flattens the natural distribution toward uniform,
# so low-resource languages are upsampled (p ∝ n^(1/T)).
DEFAULT_TEMPERATURE = 3.0


def mixture_weights(sizes: Mapping[str, int], method: WeightMethod = "temperature", *,
                    weights: Mapping[str, float] | None = None,
                    temperature: float = DEFAULT_TEMPERATURE) -> dict[str, float]:
    """Normalized per-language weights from per-language sizes (tokens).

    explicit: `weights` as given (normalized); proportional: p ∝ n; temperature: p ∝ n^(1/T);
    uniform: equal.
    """
    if not sizes:
        raise DataFormatError("empty source: no languages to mix")
    for language, size in sizes.items():
        check_language(language)
        if size <= 0:
            raise DataFormatError(f"empty source: language {language!r} has no tokens")
    if method == "explicit":
        if not weights:
            raise ConfigError("method='explicit' needs weights={language: weight}")
        for language in weights:
            check_language(language)
            if language not in sizes:
                raise UnknownLanguageError(f"weight given for {language!r}, which has no data; have {', '.join(sizes)}")
        raw = {language: float(weights.get(language, 0.0)) for language in sizes}
    elif method == "proportional":
        raw = {language: float(size) for language, size in sizes.items()}
    elif method == "temperature":
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        raw = {language: float(size) ** (1.0 / temperature) for language, size in sizes.items()}
    elif method == "uniform":
        raw = {language: 1.0 for language in sizes}
    else:
        raise ConfigError(f"unknown weighting method {method!r}; expected explicit, proportional, "
                         "temperature or uniform")
    if any(value < 0 for value in raw.values()) or sum(raw.values()) <= 0:
        raise ConfigError(f"weights must be non-negative and not all zero, got {raw}")
    total = sum(raw.values())
    return {language: value / total for language, value in raw.items() if value > 0}


@dataclass
class Example:
    """A token sequence and, per token, whether predicting it counts in the loss."""

    tokens: list[int]
    loss_mask: list[float]
    language: str

    @property
    def num_pairs(self) -> int:
        """Input/target pairs this example puts in a row (the first token is never a target)."""
        return max(len(self.tokens) - 1, 0)


class ExampleSource:
    """One language's examples, this process's share, reshuffled each epoch from (seed, epoch).

    Process `p` of `P` reads positions p, p+P, ... of the epoch's global permutation, so shares are
    disjoint and together cover the data. `max_epochs` caps how often a small language repeats.
    """

    def __init__(self, language: str, examples: Sequence[Example], *, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                 max_epochs: int | None = None):
        if not 0 <= process_index < process_count:
            raise ConfigError(f"process_index {process_index} outside [0, {process_count})")
        if not examples:
            raise DataFormatError(f"empty source: no examples for language {language!r}")
        if len(examples) < process_count:
            raise DataFormatError(f"language {language!r} has {len(examples)} examples, fewer than "
                             f"{process_count} processes; every process needs at least one")
        self.language = language
        self.examples = examples
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.shuffle = shuffle
        self.max_epochs = max_epochs
        self.epoch = 0
        self.position = 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Indices into `examples` that this process reads in `epoch`."""
        if self._order_epoch != epoch:
            count = len(self.examples)
            if self.shuffle:
                # The language is mixed into the seed so that languages are not shuffled alike.
                rng = np.random.default_rng([self.seed, epoch, zlib.crc32(self.language.encode())])
                order = rng.permutation(count)
            else:
                order = np.arange(count)
            self._order = order[self.process_index::self.process_count]
            self._order_epoch = epoch
        return self._order

    @property
    def exhausted(self) -> bool:
        return self.max_epochs is not None and self.epoch >= self.max_epochs

    def next(self) -> Example:
        if self.exhausted:
            raise StopIteration
        order = self.epoch_order(self.epoch)
        example = self.examples[int(order[self.position])]
        self.position += 1
        if self.position == len(order):
            self.epoch, self.position = self.epoch + 1, 0
        return example

    def state(self) -> list[int]:
        return [self.epoch, self.position]

    def restore(self, state: Sequence[int]) -> None:
        self.epoch, self.position = int(state[0]), int(state[1])


class Mixture:
    """Interleaves per-language sources so that realized token shares track `weights`.

    Deterministic deficit scheduling: the next example comes from the active language whose share of
    tokens so far is furthest below its weight. A language stops when its source is exhausted or its
    `token_caps` entry is reached; the others then share the stream in proportion to their weights.
    """

    def __init__(self, sources: Mapping[str, ExampleSource], weights: Mapping[str, float],
                 token_caps: Mapping[str, int] | None = None):
        if not sources:
            raise DataFormatError("empty source: a mixture needs at least one language")
        for language in weights:
            if language not in sources:
                raise UnknownLanguageError(f"weight for {language!r}, which has no source; have {', '.join(sources)}")
        self.sources = dict(sources)
        self.weights = {language: float(weights.get(language, 0.0)) for language in sources}
        self.token_caps = dict(token_caps or {})
        for language in self.token_caps:
            check_language(language)
        self.tokens = {language: 0 for language in sources}

    def _active(self, language: str) -> bool:
        cap = self.token_caps.get(language)
        return (self.weights[language] > 0 and not self.sources[language].exhausted
                and (cap is None or self.tokens[language] < cap))

    def next(self) -> Example:
        active = [language for language in self.sources if self._active(language)]
        if not active:
            raise StopIteration
        language = min(active, key=lambda lang: (self.tokens[lang] + 1) / self.weights[lang])
        example = self.sources[language].next()
        self.tokens[language] += example.num_pairs
        return example

    def state(self) -> dict:
        return {"sources": {language: source.state() for language, source in self.sources.items()},
                "tokens": dict(self.tokens)}

    def restore(self, state: Mapping) -> None:
        if set(state["sources"]) != set(self.sources):
            raise DataFormatError(f"data state is for languages {sorted(state['sources'])}, "
                             f"this stream has {sorted(self.sources)}")
        for language, source_state in state["sources"].items():
            self.sources[language].restore(source_state)
        self.tokens = {language: int(count) for language, count in state["tokens"].items()}
