"""Data: the shipped parallel SEA corpus, user corpora, token stores and their deterministic loader,
ChatML SFT and language mixing. TFDS lives in `seallm_jax.data.tfds_sea`: `load_tfds` imports it (and TensorFlow) on
first use.
"""
from seallm_jax._lazy import lazy_getattr
from seallm_jax.data.corpus import (SPLITS, DataFormatError, Document, LoadReport, check_language, load_corpus,
                                    load_documents, load_files, load_parallel, shipped_languages, split_of)
from seallm_jax.data.loader import SequentialLoader, TokenLoader, token_loader
from seallm_jax.data.mixture import Example, ExampleSource, Mixture, mixture_weights
from seallm_jax.data.sft import (ChatMLRenderer, Conversation, Message, load_conversations, sft_stream,
                                 translation_conversations)
from seallm_jax.data.store import TokenStore
from seallm_jax.data.stream import PackedStream, TokenizerAdapter, as_tokenizer
from seallm_jax.languages import LANGUAGE_NAMES

# Not in __all__: a star import must not need TensorFlow.
__getattr__ = lazy_getattr(__name__, {"load_tfds": "seallm_jax.data.tfds_sea.loading"})

__all__ = [
    "LANGUAGE_NAMES", "SPLITS", "DataFormatError", "Document", "LoadReport", "check_language", "load_corpus",
    "load_documents", "load_files", "load_parallel", "shipped_languages", "split_of", "Example",
    "ExampleSource", "Mixture", "mixture_weights", "ChatMLRenderer", "Conversation", "Message",
    "load_conversations", "sft_stream", "translation_conversations", "PackedStream", "TokenizerAdapter",
    "as_tokenizer", "TokenStore", "TokenLoader", "SequentialLoader", "token_loader",
]
