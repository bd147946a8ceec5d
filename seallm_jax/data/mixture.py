"""Language mixing weights (explicit, proportional, temperature, uniform) from per-language sizes; the token
loader (`seallm_jax.data.loader`) realises them per block of rows.
"""
from __future__ import annotations

from typing import Literal, Mapping

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
