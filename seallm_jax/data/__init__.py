"""Data: the shipped parallel SEA corpus, user corpora, token stores and their deterministic loader,
ChatML SFT conversations and language mixing. TFDS lives in `seallm_jax.data.tfds_sea`: `load_tfds` imports it
(and TensorFlow) on first use.
"""
from seallm_jax._lazy import lazy_getattr
from seallm_jax.data.corpus import (SPLITS, DataFormatError, Document, LoadReport, check_language, load_corpus,
                                    load_documents, load_files, load_parallel, shipped_languages, split_of)
from seallm_jax.data.loader import SequentialLoader, TokenLoader, token_loader
from seallm_jax.data.mixture import mixture_weights
from seallm_jax.data.sft import (ChatTemplate, Conversation, Message, load_conversations, render_conversation,
                                 translation_conversations)
from seallm_jax.data.store import TokenStore
from seallm_jax.data.tokenize import conversation_store
from seallm_jax.data.tokenizer_adapter import TokenizerAdapter, as_tokenizer
from seallm_jax.languages import LANGUAGE_NAMES

# Not in __all__: a star import must not need TensorFlow.
__getattr__ = lazy_getattr(__name__, {"load_tfds": "seallm_jax.data.tfds_sea.loading"})

__all__ = [
    "LANGUAGE_NAMES", "SPLITS", "DataFormatError", "Document", "LoadReport", "check_language", "load_corpus",
    "load_documents", "load_files", "load_parallel", "shipped_languages", "split_of", "mixture_weights",
    "ChatTemplate", "Conversation", "Message", "conversation_store", "load_conversations", "render_conversation",
    "translation_conversations", "TokenizerAdapter", "as_tokenizer", "TokenStore", "TokenLoader",
    "SequentialLoader", "token_loader",
]
