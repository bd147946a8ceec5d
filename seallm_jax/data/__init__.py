"""Data: the shipped parallel SEA corpus, user corpora, packed pretraining streams, ChatML SFT and
language mixing. TFDS lives in `seallm_jax.data.tfds_sea` and is imported only on request.
"""
from seallm_jax.data.corpus import (LANGUAGE_NAMES, SPLITS, DataFormatError, Document, LoadReport,
                                    check_language, load_corpus, load_documents, load_files, load_parallel,
                                    load_tfds, shipped_languages, split_of)
from seallm_jax.data.mixture import Example, ExampleSource, Mixture, mixture_weights
from seallm_jax.data.sft import (ChatMLRenderer, Conversation, Message, load_conversations, sft_stream,
                                 translation_conversations)
from seallm_jax.data.stream import PackedStream, TokenizerAdapter, as_tokenizer, pretraining_stream

__all__ = [
    "LANGUAGE_NAMES", "SPLITS", "DataFormatError", "Document", "LoadReport", "check_language", "load_corpus",
    "load_documents", "load_files", "load_parallel", "load_tfds", "shipped_languages", "split_of", "Example",
    "ExampleSource", "Mixture", "mixture_weights", "ChatMLRenderer", "Conversation", "Message",
    "load_conversations", "sft_stream", "translation_conversations", "PackedStream", "TokenizerAdapter",
    "as_tokenizer", "pretraining_stream",
]
