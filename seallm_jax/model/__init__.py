"""The Qwen2 model family in Flax NNX."""
from seallm_jax._lazy import lazy_getattr

_EXPORTS = {
    "param_logical_axes": "seallm_jax.model.axes",
    "Qwen2Config": "seallm_jax.model.config",
    "Qwen2ForCausalLM": "seallm_jax.model.qwen2",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)

__all__ = ["Qwen2Config", "Qwen2ForCausalLM", "param_logical_axes"]
