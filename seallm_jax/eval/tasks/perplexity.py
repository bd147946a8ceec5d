"""Perplexity per language, read through token stores: the shipped corpus' held-out split by default, any
text under --data-dir/ppl/{language}.txt (one document per line) or {language}.jsonl (a "text" field), and
any token store directory under --data-dir/ppl/ (`seallm-jax data tokenize`: its held-out splits).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seallm_jax.data.corpus import shipped_languages
from seallm_jax.errors import ConfigError
from seallm_jax.eval.core import EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.metrics import bits_per_byte, perplexity
from seallm_jax.eval.scoring import ScoreRequest
from seallm_jax.tokenizer import document_separator_id

# A user's store is scored on the documents its training never reads (the loader trains on "train").
STORE_HELD_OUT_SPLITS = ("validation", "test")


def document_requests(tokens: list[int], window: int, first_token_context: int | None) -> list[ScoreRequest]:
    """Score every token of a document once, in windows of at most `window` tokens.

    With `first_token_context` (end-of-text) the first token is scored given it; consecutive
    windows overlap by one token so every later token has at least its predecessor as context.
    """
    if first_token_context is not None:
        tokens = [first_token_context, *tokens]
    if len(tokens) < 2:
        return []
    requests, start = [], 0
    while start < len(tokens) - 1:
        requests.append(ScoreRequest(tokens[start:start + window], 1))
        start += window - 1
    return requests


def store_documents(ctx: EvalContext, arrays: Sequence[Any]) -> tuple[list[list[int]], int]:
    """The documents of some store arrays (at most --limit, in store order), each without its trailing
    separator, and their UTF-8 bytes: the decoded text's (byte-level BPE decodes to the text it encoded)."""
    documents = []
    for array in arrays:
        for index in range(int(array.num_documents)):
            if ctx.config.limit is not None and len(documents) >= ctx.config.limit:
                break
            documents.append(np.asarray(array.document(index))[:-1].tolist())
    texts = ctx.tokenizer.batch_decode(documents) if documents else []
    return documents, sum(len(text.encode("utf-8")) for text in texts)


def evaluate_documents(ctx: EvalContext, benchmark: str,
                       documents: dict[str, tuple[list[list[int]], int]]) -> TaskResult:
    """Token perplexity and bits per UTF-8 byte of each language's (token documents, bytes)."""
    eos = document_separator_id(ctx.tokenizer) if ctx.config.score_first_token else None
    window = ctx.scorer.buckets[-1]
    with ctx.measure() as stats:
        requests, owners = [], []
        for language, (token_documents, _) in documents.items():
            for tokens in token_documents:
                for request in document_requests(tokens, window, eos):
                    requests.append(request)
                    owners.append(language)
        scores = ctx.scorer.score(requests, description=f"ppl {benchmark}")
    by_language = {}
    for language, (token_documents, num_bytes) in documents.items():
        mine = [score for score, owner in zip(scores, owners) if owner == language]
        log_likelihood = sum(score.log_likelihood for score in mine)
        tokens = sum(score.num_tokens for score in mine)
        if tokens == 0:
            continue
        by_language[language] = {
            "perplexity": perplexity(log_likelihood, tokens),
            "bits_per_byte": bits_per_byte(log_likelihood, num_bytes),
            "tokens": tokens, "n": len(token_documents),
        }
    return TaskResult(
        task="ppl", benchmark=benchmark, primary_metric="perplexity", by_language=by_language,
        compile_count=int(stats["compile_count"]), seconds=stats["seconds"],
        details={"window": window, "first_token_context": None if eos is None else ctx.tokenizer.convert_ids_to_tokens(eos)},
    )


def _checked(ctx: EvalContext, store: Any) -> Any:
    from seallm_jax.data.loader import tokenizer_matches

    if not tokenizer_matches(store.tokenizer_fingerprint, ctx.tokenizer):
        raise ConfigError(f"token store {store.path} was built with another tokenizer "
                          f"({store.manifest.get('tokenizer', {}).get('name', '?')}) than the model's; tokenize the "
                          "text again with `seallm-jax data tokenize ... --tokenizer MODEL_DIR`")
    return store


def run(ctx: EvalContext) -> list[TaskResult]:
    """`ppl/` under --data-dir when present (text files, token stores), and always the shipped corpus'
    held-out split; all read as token stores (text tokenized once into a cache)."""
    from seallm_jax.data.store import STORE_SPLITS, TokenStore
    from seallm_jax.data.tokenize import ensure_store, shipped_corpus_store

    results = []
    custom = ctx.data_path("ppl") if ctx.data_dir is not None else None
    if custom is not None and custom.is_dir():
        files: dict[str, Path] = {}
        for path in sorted([*custom.glob("*.txt"), *custom.glob("*.jsonl")]):
            if ctx.wants(path.stem) and path.stem not in files:
                files[path.stem] = path
        if files:
            # A text file is scored whole: every split of its cached store.
            store = ensure_store({language: [str(path)] for language, path in files.items()}, tokenizer=ctx.tokenizer)
            results.append(evaluate_documents(ctx, "custom", {
                language: store_documents(ctx, [store.documents(language, split) for split in STORE_SPLITS])
                for language in files}))
        for directory in sorted(path for path in custom.iterdir() if (path / "manifest.json").is_file()):
            store = _checked(ctx, TokenStore.open(directory))
            documents = {language: store_documents(ctx, [store.documents(language, split)
                                                         for split in STORE_HELD_OUT_SPLITS])
                         for language in store.languages if ctx.wants(language)}
            if documents:
                results.append(evaluate_documents(ctx, f"store-{directory.name}", documents))
    available = shipped_languages()
    languages = [lang for lang in (ctx.languages or available) if lang in available]
    if languages:
        corpus = shipped_corpus_store(ctx.tokenizer)
        split = ctx.config.corpus_split
        documents = {language: store_documents(ctx, [corpus.documents(language, split)]) for language in languages}
        results.append(evaluate_documents(ctx, f"corpus-{split}", documents))
    if not results:
        raise MissingDataError(
            f"no perplexity text for languages {ctx.languages}: the shipped corpus has {', '.join(available)}; "
            "put other languages' text in --data-dir/ppl/{language}.txt, or a token store in --data-dir/ppl/"
        )
    return results
