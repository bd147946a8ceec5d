"""`seallm-jax data ...`: corpus statistics with the real Qwen2 tokenizer, tokenizing text into token stores,
preparing the TFDS dataset offline, and building the vocabulary subset of the SFT recipes' CPU variant.
"""
from __future__ import annotations

import argparse

from seallm_jax.cli_args import parse_languages
from seallm_jax.data.corpus import SPLITS, Document, load_corpus, load_files
from seallm_jax.data.mixture import DEFAULT_TEMPERATURE, mixture_weights
from seallm_jax.data.sft import QWEN2_DEFAULT_SYSTEM
from seallm_jax.errors import ConfigError, UserError, require_dir
from seallm_jax.files import check_output_dir


def corpus_stats(corpus: dict[str, list[Document]], tokenizer: object | None = None) -> list[dict]:
    """Per language: documents, tokens and share of all tokens."""
    from seallm_jax.data.tokenizer_adapter import as_tokenizer

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
        from seallm_jax.data.store import parse_data_args

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


def _sft_vocabulary(args: argparse.Namespace) -> int:
    try:
        thresholds = [int(value) for value in args.min_source_chars.split(",")]
    except ValueError:
        raise ConfigError(f"--min-source-chars {args.min_source_chars!r}: expected integers, e.g. 0,60") from None
    if args.max_per_language < 0 or any(value < 0 for value in thresholds):
        raise ConfigError("--max-per-language and --min-source-chars must not be negative")
    out = check_output_dir(args.out, "OUT")
    languages = parse_languages(args.languages)
    from seallm_jax.train.data_source import sft_vocabulary

    subset = sft_vocabulary(out, languages=languages, max_per_language=args.max_per_language or None,
                            min_source_chars=thresholds)
    print(f"vocabulary subset of {subset.vocab_size} ids (end of text {subset.eos_token_id}) in {out}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    if not args.files:
        raise ConfigError("give at least one LANG=PATH, e.g. th=data/th.jsonl")
    from seallm_jax.data.store import parse_data_args

    files = parse_data_args(args.files, flag="LANG=PATH")
    if args.tokenizer:
        require_dir(args.tokenizer, "--tokenizer")
    from seallm_jax.data.tokenize import tokenize_files

    conversations = {"kind": "conversations", "default_system": args.default_system or None} \
        if args.conversations else {}
    store = tokenize_files(files, args.out, tokenizer=args.tokenizer, text_field=args.text_field,
                           text_unit=args.text_unit, workers=args.workers, encoder=args.encoder,
                           chunk_bytes=int(args.chunk_mb * 1e6), progress=not args.no_progress, **conversations)
    print(f"token store {store.path} ({store.fingerprint[:12]}):")
    print(f"{'language':<9}{'split':<12}{'documents':>11}{'tokens':>14}{'shards':>8}")
    for language in store.languages:
        for split, entry in store.splits(language).items():
            print(f"{language:<9}{split:<12}{entry['documents']:>11}{entry['tokens']:>14}{len(entry['shards']):>8}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="corpus statistics, tokenizing into token stores, TFDS preparation, "
                                              "SFT vocabulary subsets")
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

    tokenize = commands.add_parser(
        "tokenize", help="tokenize text files into a token store (flat uint32 tokens + offsets + manifest)",
        description="Tokenize text files per language into a token store, in parallel, resumable: rerun after a "
                    "kill, it finishes the rest and the store is byte-identical. Formats by file name: JSON-lines "
                    "(.jsonl/.json, also .gz/.zst), Parquet (.parquet), otherwise plain text (also .gz/.zst). "
                    "See docs/data.md.")
    tokenize.add_argument("files", nargs="*", metavar="LANG=PATH", help="an input file of a language (repeatable, "
                          "also for one language)")
    tokenize.add_argument("--out", required=True, metavar="STORE", help="the token store directory to write")
    tokenize.add_argument("--tokenizer", help="local Hugging Face tokenizer directory (default: Qwen2, built offline)")
    tokenize.add_argument("--text-field", default="text",
                          help="the text field of JSON-lines records / text column of Parquet files (default: text)")
    tokenize.add_argument("--text-unit", choices=["line", "paragraph"], default="line",
                          help="plain text: one document per line (default) or per blank-line separated paragraph")
    tokenize.add_argument("--workers", type=int, default=None, help="processes encoding in parallel (default: "
                          "all cores; 1: in this process)")
    tokenize.add_argument("--chunk-mb", type=float, default=16.0,
                          help="input per chunk, one shard per chunk and split (default: 16); part of the store's "
                               "identity: a rerun must use the same value to resume")
    tokenize.add_argument("--encoder", choices=["auto", "fast", "hf"], default="auto",
                          help="fast: tiktoken with exactly the tokenizer's ids (byte-level BPE such as Qwen2's; "
                          "an error for others); hf: the tokenizer itself; auto (default): fast on inputs of "
                          "32 MB or more when the tokenizer qualifies. The store is the same either way")
    tokenize.add_argument("--conversations", action="store_true",
                          help="the inputs are JSON-lines conversations ({\"messages\": [{\"role\", \"content\"}, ...]}), "
                          "stored rendered with ChatML with an assistant-only loss mask, for SFT (docs/data.md)")
    tokenize.add_argument("--default-system", default=QWEN2_DEFAULT_SYSTEM, metavar="TEXT",
                          help="with --conversations: the system message inserted where a conversation has none "
                          "(default: Qwen2's, as its chat template does; '' inserts none)")
    tokenize.add_argument("--no-progress", action="store_true", help="no progress bar")
    tokenize.set_defaults(func=_tokenize)

    tfds_parser = commands.add_parser("build-tfds", help="prepare the sea_corpus TFDS dataset offline")
    tfds_parser.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
    tfds_parser.add_argument("--config", default="all", help="'all' or a language code")
    tfds_parser.set_defaults(func=_build_tfds)

    vocabulary = commands.add_parser(
        "sft-vocabulary", help="save the Qwen2 vocabulary subset of the shipped translation conversations",
        description="The Qwen2 tokens the SFT translation conversations selected by these settings use (train "
                    "and validation splits, every --min-source-chars value), renumbered densely; kept if OUT "
                    "already holds one. configs/sft_stage1.py:cpu reads it.")
    vocabulary.add_argument("out", metavar="OUT", help="directory to write the vocabulary subset into")
    vocabulary.add_argument("--languages", help="comma-separated language codes (default: every shipped one)")
    vocabulary.add_argument("--max-per-language", type=int, default=0,
                            help="at most this many conversations per language (0: all)")
    vocabulary.add_argument("--min-source-chars", default="0",
                            help="comma-separated source-length thresholds, one per SFT stage (default: 0)")
    vocabulary.set_defaults(func=_sft_vocabulary)
