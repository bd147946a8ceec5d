"""`seallm-jax data ...`: corpus statistics with the real Qwen2 tokenizer, and preparing the TFDS
dataset offline.
"""
from __future__ import annotations

import argparse

from seallm_jax.cli_args import parse_data_args
from seallm_jax.data.corpus import SPLITS, Document, load_corpus, load_files
from seallm_jax.data.mixture import DEFAULT_TEMPERATURE, mixture_weights
from seallm_jax.errors import UserError, require_dir


def corpus_stats(corpus: dict[str, list[Document]], tokenizer: object | None = None) -> list[dict]:
    """Per language: documents, tokens and share of all tokens."""
    from seallm_jax.data.stream import as_tokenizer

    adapter = as_tokenizer(tokenizer)
    rows = []
    for language, documents in corpus.items():
        tokens = sum(len(ids) for ids in adapter.encode_batch([doc.text for doc in documents]))
        rows.append({"language": language, "documents": len(documents), "tokens": tokens})
    total = sum(row["tokens"] for row in rows) or 1
    for row in rows:
        row["share"] = row["tokens"] / total
    return rows


def format_stats(rows: list[dict]) -> str:
    with_mix = all("mix" in row for row in rows)
    lines = [f"{'language':<9}{'documents':>11}{'tokens':>11}{'share':>8}" + (f"{'mix':>8}" if with_mix else "")]
    for row in rows:
        lines.append(f"{row['language']:<9}{row['documents']:>11}{row['tokens']:>11}{row['share']:>8.1%}"
                     + (f"{row['mix']:>8.1%}" if with_mix else ""))
    lines.append(f"{'total':<9}{sum(r['documents'] for r in rows):>11}{sum(r['tokens'] for r in rows):>11}"
                 f"{'100.0%':>8}")
    return "\n".join(lines)


def _stats(args: argparse.Namespace) -> int:
    split = None if args.split == "all" else args.split
    if args.tokenizer:
        require_dir(args.tokenizer, "--tokenizer")
    if args.files:
        corpus = load_files(parse_data_args(args.files, flag="--file"), split=split)
    else:
        corpus = load_corpus(split, args.languages)
    tokenizer = None
    if args.tokenizer:
        from seallm_jax.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    rows = corpus_stats(corpus, tokenizer)
    if args.weighting:
        # The token shares a stream with this weighting would realize (see seallm_jax.data.mixture).
        mix = mixture_weights({row["language"]: row["tokens"] for row in rows}, args.weighting,
                              temperature=args.temperature)
        for row in rows:
            row["mix"] = mix.get(row["language"], 0.0)
    print(f"split: {args.split}")
    print(format_stats(rows))
    return 0


def _build_tfds(args: argparse.Namespace) -> int:
    try:
        from seallm_jax.data.tfds_sea import Builder
    except ImportError as error:
        raise UserError(f"TFDS is an optional extra ({error}); pip install 'seallm-jax[tfds]'") from None
    builder = Builder(config=args.config, data_dir=args.data_dir)
    builder.download_and_prepare()
    for split, info in builder.info.splits.items():
        print(f"{split}\t{info.num_examples}")
    print(f"prepared sea_corpus/{args.config} in {args.data_dir}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="corpus statistics, TFDS preparation")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    stats = commands.add_parser("stats", help="documents, tokens and token share per language")
    stats.add_argument("--split", default="train", choices=[*SPLITS, "all"])
    stats.add_argument("--languages", nargs="+", help="language codes (default: all shipped)")
    stats.add_argument("--file", dest="files", action="append", metavar="LANG=PATH",
                       help="count a user corpus instead of the shipped one (repeatable)")
    stats.add_argument("--tokenizer", help="local Hugging Face tokenizer directory (default: Qwen2)")
    stats.add_argument("--weighting", choices=["proportional", "temperature", "uniform"],
                       help="also print the mixture weight per language under this weighting")
    stats.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    stats.set_defaults(func=_stats)

    tfds_parser = commands.add_parser("build-tfds", help="prepare the sea_corpus TFDS dataset offline")
    tfds_parser.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
    tfds_parser.add_argument("--config", default="all", help="'all' or a language code")
    tfds_parser.set_defaults(func=_build_tfds)
