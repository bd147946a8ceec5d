"""Tokenizers: the real Qwen2 tokenizer built offline (`qwen2`), vocabulary subsets with a far smaller
LM head (`vocabulary`), and the one way to resolve special-token ids (`special`).

Inside the package the modules depend downwards only: `special` (standard library) <- `qwen2` <-
`vocabulary` <- `loading`. Names load lazily, so `seallm_jax.tokenizer.special` (what the data code
uses) does not import `transformers`.
"""
from seallm_jax._lazy import lazy_getattr

_EXPORTS = {
    "ENDOFTEXT": "seallm_jax.tokenizer.special",
    "IM_START": "seallm_jax.tokenizer.special",
    "IM_END": "seallm_jax.tokenizer.special",
    "special_token_id": "seallm_jax.tokenizer.special",
    "document_separator_id": "seallm_jax.tokenizer.special",
    "QWEN2_ADDED_TOKENS": "seallm_jax.tokenizer.qwen2",
    "QWEN2_CHAT_TEMPLATE": "seallm_jax.tokenizer.qwen2",
    "QWEN2_NUM_BPE_RANKS": "seallm_jax.tokenizer.qwen2",
    "QWEN2_PATTERN": "seallm_jax.tokenizer.qwen2",
    "CACHE_ENV_VAR": "seallm_jax.tokenizer.qwen2",
    "build_qwen2_tokenizer": "seallm_jax.tokenizer.qwen2",
    "load_qwen2_ranks": "seallm_jax.tokenizer.qwen2",
    "load_qwen2_tokenizer": "seallm_jax.tokenizer.qwen2",
    "load_local_tokenizer": "seallm_jax.tokenizer.qwen2",
    "save_tokenizer_files": "seallm_jax.tokenizer.qwen2",
    "has_tokenizer_files": "seallm_jax.tokenizer.qwen2",
    "VocabularySubset": "seallm_jax.tokenizer.vocabulary",
    "load_tokenizer": "seallm_jax.tokenizer.loading",
    "tokenizer_for": "seallm_jax.tokenizer.loading",
    "save_tokenizer": "seallm_jax.tokenizer.loading",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
