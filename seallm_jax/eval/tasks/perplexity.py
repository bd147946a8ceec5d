"""Perplexity per language: the shipped corpus' held-out split by default, or any text under
--data-dir/ppl/{language}.txt (one document per line) or {language}.jsonl (a "text" field).
"""
from __future__ import annotations

from pathlib import Path

from seallm_jax.data.corpus import load_corpus, shipped_languages
from seallm_jax.eval.core import EvalContext, MissingDataError, TaskResult
from seallm_jax.eval.formats import read_records
from seallm_jax.eval.metrics import bits_per_byte, perplexity
from seallm_jax.eval.scoring import ScoreRequest
from seallm_jax.tokenizer import document_separator_id


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


def evaluate_documents(ctx: EvalContext, benchmark: str, documents: dict[str, list[str]]) -> TaskResult:
    """Token perplexity and bits per UTF-8 byte for each language's documents."""
    eos = document_separator_id(ctx.tokenizer) if ctx.config.score_first_token else None
    window = ctx.scorer.buckets[-1]
    with ctx.measure() as stats:
        requests, owners = [], []
        for language, texts in documents.items():
            for text in texts:
                for request in document_requests(ctx.tokenizer.encode(text, add_special_tokens=False), window, eos):
                    requests.append(request)
                    owners.append(language)
        scores = ctx.scorer.score(requests, description=f"ppl {benchmark}")
    by_language = {}
    for language, texts in documents.items():
        mine = [score for score, owner in zip(scores, owners) if owner == language]
        log_likelihood = sum(score.log_likelihood for score in mine)
        tokens = sum(score.num_tokens for score in mine)
        num_bytes = sum(len(text.encode("utf-8")) for text in texts)
        if tokens == 0:
            continue
        by_language[language] = {
            "perplexity": perplexity(log_likelihood, tokens),
            "bits_per_byte": bits_per_byte(log_likelihood, num_bytes),
            "tokens": tokens, "n": len(texts),
        }
    return TaskResult(
        task="ppl", benchmark=benchmark, primary_metric="perplexity", by_language=by_language,
        compile_count=int(stats["compile_count"]), seconds=stats["seconds"],
        details={"window": window, "first_token_context": None if eos is None else ctx.tokenizer.convert_ids_to_tokens(eos)},
    )


def _read_text_file(path: Path) -> list[str]:
    if path.suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    return [str(row["text"]) for row in read_records(path) if str(row.get("text", "")).strip()]


def run(ctx: EvalContext) -> list[TaskResult]:
    """`ppl/` under --data-dir when present, and always the shipped corpus' held-out split."""
    results = []
    custom = ctx.data_path("ppl") if ctx.data_dir is not None else None
    if custom is not None and custom.is_dir():
        documents = {}
        for path in sorted([*custom.glob("*.txt"), *custom.glob("*.jsonl")]):
            if ctx.wants(path.stem) and path.stem not in documents:
                documents[path.stem] = ctx.limited(_read_text_file(path))
        if documents:
            results.append(evaluate_documents(ctx, "custom", documents))
    available = shipped_languages()
    languages = [lang for lang in (ctx.languages or available) if lang in available]
    if languages:
        corpus = load_corpus(ctx.config.corpus_split, languages)
        documents = {language: ctx.limited([doc.text for doc in docs]) for language, docs in corpus.items()}
        results.append(evaluate_documents(ctx, f"corpus-{ctx.config.corpus_split}", documents))
    if not results:
        raise MissingDataError(
            f"no perplexity text for languages {ctx.languages}: the shipped corpus has {', '.join(available)}; "
            "put other languages' text in --data-dir/ppl/{language}.txt"
        )
    return results
