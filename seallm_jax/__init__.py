"""seallm-jax: adapt Qwen2-family LLMs to Southeast Asian languages with JAX/Flax.

Find the language-specific neurons, train only those, run a balanced multilingual SFT, export to
Hugging Face. The public API is re-exported here; heavy subsystems are imported lazily.
"""
from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM, param_logical_axes

__version__ = "0.1.0"
LANGUAGES = ("en", "zh", "id", "vi", "th", "tl", "ms", "my", "km", "lo", "ta", "jv")

__all__ = ["Qwen2Config", "Qwen2ForCausalLM", "param_logical_axes", "LANGUAGES", "__version__"]
