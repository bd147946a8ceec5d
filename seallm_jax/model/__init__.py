"""The Qwen2 model family in Flax NNX."""
from seallm_jax.model.axes import param_logical_axes
from seallm_jax.model.config import Qwen2Config
from seallm_jax.model.qwen2 import Qwen2ForCausalLM

__all__ = ["Qwen2Config", "Qwen2ForCausalLM", "param_logical_axes"]
