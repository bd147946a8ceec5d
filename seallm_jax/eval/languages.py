"""Language tables the evaluation tasks need: display names, Flores-200 codes, benchmark file names.

Codes are the project's ISO 639-1 codes (en, zh, id, vi, th, tl, ms, my, km, lo, ta, jv).
"""
from __future__ import annotations

# Code -> English name, used in prompts and tables; the data package owns the table and the check.
from seallm_jax.languages import LANGUAGE_NAMES

# Code -> Flores-200 file stem (`flores200_dataset/dev/tha_Thai.dev`).
FLORES_CODES: dict[str, str] = {
    "en": "eng_Latn",
    "zh": "zho_Hans",
    "id": "ind_Latn",
    "vi": "vie_Latn",
    "th": "tha_Thai",
    "tl": "tgl_Latn",
    "ms": "zsm_Latn",
    "my": "mya_Mymr",
    "km": "khm_Khmr",
    "lo": "lao_Laoo",
    "ta": "tam_Taml",
    "jv": "jav_Latn",
}

# M3Exam and SeaExam name their files and `language` fields with lower-case English names.
BENCHMARK_LANGUAGE_NAMES: dict[str, str] = {code: name.lower() for code, name in LANGUAGE_NAMES.items()}

# Languages whose usual decimal separator is a comma ("1.234,5" = 1234.5). Used only to break the
# tie of a lone separator before exactly three digits ("1.234"); unambiguous forms parse the same
# way in every language.
COMMA_DECIMAL_LANGUAGES: frozenset[str] = frozenset({"id", "vi", "jv", "de", "es", "fr", "it", "pt", "ru"})


def language_from_name(name: str) -> str:
    """Map a benchmark's language field ("thai", "Thai", "th") to the project's code."""
    key = name.strip().lower()
    if key in LANGUAGE_NAMES:
        return key
    for code, full in BENCHMARK_LANGUAGE_NAMES.items():
        if key == full:
            return code
    # Names outside the project's list (M3Exam has e.g. "swahili") are kept as given, so their
    # results are still reported rather than dropped.
    return key


def language_name(code: str) -> str:
    """English display name of a language code; the code itself when unknown."""
    return LANGUAGE_NAMES.get(code, code)
