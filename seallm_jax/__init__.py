"""seallm-jax: adapt Qwen2-family LLMs to Southeast Asian languages with JAX/Flax.

Find the language-specific neurons, train only those, run a balanced multilingual SFT, export to
Hugging Face. The public API is re-exported here and imported on first use, so that light modules
(the command line's argument checks, the corpus reader) do not pay for importing JAX and Flax.
"""
import importlib

__version__ = "0.1.0"
LANGUAGES = ("en", "zh", "id", "vi", "th", "tl", "ms", "my", "km", "lo", "ta", "jv")

# public name -> the module that defines it
_LAZY = {
    "Qwen2Config": "seallm_jax.model",
    "Qwen2ForCausalLM": "seallm_jax.model",
    "param_logical_axes": "seallm_jax.model",
}

__all__ = [*_LAZY, "LANGUAGES", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'seallm_jax' has no attribute {name!r}")
