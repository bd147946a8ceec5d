"""Inputs of the LSN commands: per-language packed batches of text.

Text comes from the shipped corpus (default), user files or token stores (`LANG=PATH`), read by the token
loader's sequential mode through cached stores (`seallm_jax.data.loader`, `seallm_jax.data.tokenize`).
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import jax
import numpy as np

from seallm_jax.defaults import LSN_BATCH_SIZE, LSN_SEQ_LEN
from seallm_jax.errors import ConfigError
from seallm_jax.lsn.stats import Batch
from seallm_jax.tokenizer import document_separator_id


def language_batches(language: str, *, tokenizer, split: str | None = "train",
                     files: Sequence[str] | None = None, seq_len: int = LSN_SEQ_LEN,
                     batch_size: int = LSN_BATCH_SIZE) -> Iterator[Batch]:
    """One pass (no repetition) over `language`'s documents (of `files`, else of the shipped corpus),
    packed into `[batch_size, seq_len]` rows.

    Documents are not split across rows (PLND counts each segment as a document); a document longer than
    a row is cut into row-sized pieces. `files` may name token store directories (their `split` is read)
    and text files (read whole); they are read by the token loader's sequential mode
    (`seallm_jax.data.loader.SequentialLoader`), each process building its own rows of every global batch.
    """
    from seallm_jax.data.loader import SequentialLoader

    index, count = jax.process_index(), jax.process_count()
    arrays = store_arrays(language, tokenizer=tokenizer, split=split, files=files)
    return SequentialLoader(arrays, seq_len=seq_len, global_batch_size=batch_size * count,
                            row_start=index * batch_size, row_stop=(index + 1) * batch_size, pack="documents",
                            pad_id=document_separator_id(tokenizer))


def store_arrays(language: str, *, tokenizer, split: str | None, files: Sequence[str] | None) -> list:
    """The document arrays of `language` in `files`: a store directory's `split`, a text file's every split
    (tokenized once into the cached store of `seallm_jax.data.tokenize.ensure_store`); without files, the
    shipped corpus' `split` (None: all), through its cached store."""
    import os

    from seallm_jax.data import store as stores

    if not files:
        from seallm_jax.data.tokenize import shipped_corpus_store

        corpus = shipped_corpus_store(tokenizer)
        return [corpus.documents(language, name) for name in ([split] if split else stores.STORE_SPLITS)]
    directories = [path for path in files if os.path.isdir(path)]
    texts = [path for path in files if not os.path.isdir(path)]
    opened = [stores.TokenStore.open(path) for path in directories]
    if texts:
        from seallm_jax.data.tokenize import ensure_store

        opened.append(ensure_store({language: texts}, tokenizer=tokenizer))
    from seallm_jax.data.loader import tokenizer_matches

    for store in opened:
        if not tokenizer_matches(store.tokenizer_fingerprint, tokenizer):
            raise ConfigError(f"token store {store.path} was built with another tokenizer "
                              f"({store.manifest['tokenizer'].get('name', '?')}) than the model's; tokenize the text "
                              "again with `seallm-jax data tokenize ... --tokenizer MODEL_DIR`")
    arrays = []
    for store in opened:
        splits = [split or "train"] if store.path in directories else list(stores.STORE_SPLITS)
        arrays += [store.documents(language, name) for name in splits]
    return arrays


def batches_by_language(languages: Sequence[str], *, tokenizer, split: str | None,
                        files: Mapping[str, Sequence[str]] | None = None, seq_len: int = LSN_SEQ_LEN,
                        batch_size: int = LSN_BATCH_SIZE) -> dict[str, Iterator[Batch]]:
    """Per-language batch streams; languages given in `files` read those files, the rest the shipped corpus."""
    files = files or {}
    return {lang: language_batches(lang, tokenizer=tokenizer, split=split, files=files.get(lang),
                                   seq_len=seq_len, batch_size=batch_size) for lang in languages}


def take_tokens(batches: Iterator[Batch], max_tokens: int | None) -> Iterator[Batch]:
    """Batches until `max_tokens` target tokens are covered (the last batch is kept whole)."""
    seen = 0
    for batch in batches:
        yield batch
        seen += int(np.count_nonzero(batch["loss_mask"]))
        if max_tokens is not None and seen >= max_tokens:
            return
