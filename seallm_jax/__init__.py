"""seallm-jax: adapt Qwen2-family LLMs to Southeast Asian languages with JAX/Flax.

Find the language-specific neurons, train only those, run a balanced multilingual SFT, export to
Hugging Face. The public API is re-exported here and imported on first use, so that light modules
(the command line's argument checks, the corpus reader) do not pay for importing JAX and Flax;
library modules import from the defining module (`seallm_jax.languages`, `seallm_jax.model`), never
from here.
"""
from seallm_jax._lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "LANGUAGES": "seallm_jax.languages",
    "Qwen2Config": "seallm_jax.model",
    "Qwen2ForCausalLM": "seallm_jax.model",
    "param_logical_axes": "seallm_jax.model",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)

__all__ = [*_EXPORTS, "__version__"]
