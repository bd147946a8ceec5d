"""Inputs of the LSN commands: per-language packed batches of text.

Text comes from the shipped corpus (default) or user files (`LANG=PATH`), packed by `seallm_jax.data`.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import jax
import numpy as np

from seallm_jax.defaults import LSN_BATCH_SIZE, LSN_SEQ_LEN
from seallm_jax.lsn.stats import Batch
from seallm_jax.tokenizer import document_separator_id


def language_batches(language: str, *, tokenizer, split: str | None = "train",
                     files: Sequence[str] | None = None, seq_len: int = LSN_SEQ_LEN,
                     batch_size: int = LSN_BATCH_SIZE) -> Iterator[Batch]:
    """One pass (no repetition) over `language`'s documents, packed into `[batch_size, seq_len]` rows.

    Documents are not split across rows (PLND counts each segment as a document); a document longer than
    a row is cut into row-sized pieces. Each process reads its own share of the documents.
    """
    from seallm_jax.data.stream import pretraining_stream

    corpus = {language: list(files)} if files else None
    return pretraining_stream(
        languages=[language], split=split if not files else None, seq_len=seq_len, batch_size=batch_size,
        tokenizer=tokenizer, corpus=corpus, max_epochs=1, split_documents=False, eos_id=document_separator_id(tokenizer),
        process_index=jax.process_index(), process_count=jax.process_count(),
    )


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
