"""The project's languages: ISO 639-1 codes in the project's order, and their English names.

Standard library only (no imports at all), so anything, the corpus reader and `--help` included, can
use the table without importing JAX, Flax or the data stack.
"""

LANGUAGES: tuple[str, ...] = ("en", "zh", "id", "vi", "th", "tl", "ms", "my", "km", "lo", "ta", "jv")

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "id": "Indonesian", "vi": "Vietnamese", "th": "Thai",
    "tl": "Tagalog", "ms": "Malay", "my": "Burmese", "km": "Khmer", "lo": "Lao", "ta": "Tamil",
    "jv": "Javanese",
}
