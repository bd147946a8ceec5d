"""`seallm-jax lsn stats | select | ablate`: language-specific neurons from the command line.

stats: a model + text per language -> NeuronStats (.npz); select: stats -> neuron set (.json + heatmap);
ablate: a model + neuron set -> perplexity matrix with each language's neurons deactivated (.json + .png).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from seallm_jax.cli_args import parse_languages
from seallm_jax.defaults import parse_mesh
from seallm_jax.data.corpus import check_languages, shipped_languages
from seallm_jax.defaults import LSN_BATCH_SIZE, LSN_SEQ_LEN
from seallm_jax.errors import ConfigError, UnknownLanguageError, check_dtype, require_dir, require_file
from seallm_jax.files import check_output_file
from seallm_jax.paths import require_model_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    lsn = subparsers.add_parser("lsn", help="language-specific neurons: statistics, selection, ablation",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = lsn.add_subparsers(dest="lsn_command", metavar="SUBCOMMAND")
    commands.required = True

    stats = commands.add_parser("stats", help="per-neuron statistics of each language (one jitted pass)")
    stats.add_argument("--model", required=True, help="Hugging Face directory or Orbax checkpoint")
    stats.add_argument("--languages", required=True, help="comma-separated codes, e.g. en,zh,th")
    _add_data_arguments(stats, default_split="train")
    stats.add_argument("--top-k", type=int, default=None,
                       help="PLND: neurons kept per document and layer (default: 5%% of intermediate_size)")
    stats.add_argument("--lape-only", action="store_true",
                       help="compute the LAPE counts only (no PLND importance or top-k): a faster pass")
    stats.add_argument("--out", required=True, help="statistics file to write (.npz)")
    stats.set_defaults(func=run_stats)

    select = commands.add_parser("select", help="select neurons from statistics (LAPE or PLND)")
    select.add_argument("--stats", required=True, nargs="+", help="statistics file(s); several are merged")
    select.add_argument("--method", required=True, choices=("lape", "plnd"))
    select.add_argument("--languages", default=None, help="restrict to these languages (default: all)")
    select.add_argument("--top-rate", type=float, default=0.01, help="LAPE: share of all neurons selected")
    select.add_argument("--filter-rate", type=float, default=0.95, help="LAPE: candidate probability percentile")
    select.add_argument("--activation-bar-ratio", type=float, default=0.95,
                        help="LAPE: percentile a language's probability must exceed to own a selected neuron")
    select.add_argument("--membership-fraction", type=float, default=1.0,
                        help="PLND: share of a language's documents whose top-k must contain the neuron")
    select.add_argument("--max-languages-per-neuron", type=int, default=None,
                        help="PLND: drop neurons selected for more languages than this")
    select.add_argument("--budget", type=float, default=None,
                        help="fraction of all parameters (e.g. 0.001); LAPE: replaces --top-rate; "
                             "PLND: cap per language")
    select.add_argument("--matrices", default="gate_proj,up_proj,down_proj",
                        help="FFN matrices a neuron owns, for the budget and the parameter fraction")
    select.add_argument("--out", required=True, help="neuron-set JSON to write")
    select.add_argument("--heatmap", default=None, help="heatmap PNG (default: OUT with .png)")
    select.set_defaults(func=run_select)

    ablate = commands.add_parser("ablate", help="perplexity matrix with each language's neurons deactivated")
    ablate.add_argument("--model", required=True, help="Hugging Face directory or Orbax checkpoint")
    ablate.add_argument("--neurons", required=True, help="neuron-set JSON")
    ablate.add_argument("--languages", default=None,
                        help="evaluated languages (default: the neuron set's languages)")
    ablate.add_argument("--deactivate", default=None,
                        help="languages whose neurons are deactivated, one row each (default: evaluated ones)")
    _add_data_arguments(ablate, default_split="test")
    ablate.add_argument("--out", required=True, help="ablation JSON to write")
    ablate.add_argument("--plot", default=None, help="heatmap PNG (default: OUT with .png)")
    ablate.set_defaults(func=run_ablate)

    from seallm_jax.lsn.compare.cli import register as register_compare
    register_compare(commands)  # lsn compare: LSN against random neurons, full fine-tuning and LoRA


def _add_data_arguments(parser: argparse.ArgumentParser, default_split: str) -> None:
    parser.add_argument("--data", action="append", metavar="LANG=PATH", default=None,
                        help="text of a language (.jsonl with a 'text' field, or .txt) or a token store "
                             "directory (`seallm-jax data tokenize`); repeatable; languages without --data "
                             "read the shipped corpus")
    parser.add_argument("--split", default=default_split, choices=("train", "validation", "test"),
                        help=f"split of the shipped corpus and of token stores (default: {default_split}); "
                             "a text file is read whole")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per language (default: all)")
    parser.add_argument("--seq-len", type=int, default=LSN_SEQ_LEN, help="tokens per packed row")
    parser.add_argument("--batch-size", type=int, default=LSN_BATCH_SIZE,
                        help="rows per process and batch (rounded up to split over the mesh)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory (default: the model's own, else the built-in Qwen2 one)")
    parser.add_argument("--mesh", default=None,
                        help="mesh sizes, e.g. data=-1,fsdp=1,tensor=1 (default: data over all devices "
                             "when there are several)")
    parser.add_argument("--dtype", default="float32", help="compute dtype (float32 or bfloat16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _mesh_from(args: argparse.Namespace):
    import jax

    from seallm_jax import sharding

    sizes = parse_mesh(args.mesh)
    if sizes is None:
        if jax.device_count() == 1:
            return None
        sizes = {"data": -1, "fsdp": 1, "tensor": 1}
    return sharding.make_mesh(sizes, what=f"--mesh {args.mesh}")


def _rows_per_process(batch_size: int, mesh) -> int:
    """Round the per-process batch up so that the global batch splits over the mesh's batch axes."""
    import jax

    if mesh is None:
        return batch_size
    from seallm_jax.sharding import batch_shard_count

    divisor = batch_shard_count(mesh)
    per_process = max(1, divisor // jax.process_count())
    return int(math.ceil(batch_size / per_process) * per_process)


def _check_inputs(args: argparse.Namespace, languages: list[str]) -> dict[str, list[str]]:
    """Everything the model-reading commands take from the user, checked before JAX is imported:
    the model directory, the tokenizer, every --data file, the --mesh and the numbers."""
    require_model_dir(args.model)
    if args.tokenizer is not None:
        require_dir(args.tokenizer, "--tokenizer")
    check_dtype(args.dtype)
    parse_mesh(args.mesh)
    for flag, value in (("--seq-len", args.seq_len), ("--batch-size", args.batch_size), ("--max-tokens", args.max_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: expected a positive integer")
    from seallm_jax.data.store import parse_data_args

    files = parse_data_args(args.data, languages, stores=True)
    from_corpus = [language for language in languages if language not in files]
    check_languages(from_corpus, shipped_languages(), where="the shipped corpus (give --data LANG=PATH for others)")
    return files


def _prepare(args: argparse.Namespace, languages: list[str], files: dict[str, list[str]]):
    from seallm_jax.hf import load_model
    from seallm_jax.lsn import inputs
    from seallm_jax.sharding import params_sharding_fn
    from seallm_jax.tokenizer import tokenizer_for

    mesh = _mesh_from(args)
    model = load_model(args.model, dtype=args.dtype, sharding=params_sharding_fn(mesh) if mesh is not None else None)
    tokenizer = tokenizer_for(args.model, args.tokenizer)
    streams = inputs.batches_by_language(
        languages, tokenizer=tokenizer, split=args.split, files=files, seq_len=args.seq_len,
        batch_size=_rows_per_process(args.batch_size, mesh),
    )
    sources = {lang: files.get(lang) or f"shipped corpus ({args.split})" for lang in languages}
    return model, mesh, streams, sources


def run_stats(args: argparse.Namespace) -> int:
    languages = parse_languages(args.languages)
    files = _check_inputs(args, languages)
    check_output_file(args.out, "--out")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k}: expected a positive integer")
    import jax

    from seallm_jax.lsn.stats import StatisticsPass

    model, mesh, streams, sources = _prepare(args, languages, files)
    statistics_pass = StatisticsPass(
        model, top_k=args.top_k, mesh=mesh, plnd=not args.lape_only,
        metadata={"model": os.path.abspath(args.model), "seq_len": args.seq_len, "dtype": args.dtype,
                  "data": sources},
    )
    merged = None
    started = time.perf_counter()
    for language in languages:
        stats = statistics_pass(streams[language], language, max_tokens=args.max_tokens,
                                progress=not args.no_progress)
        merged = stats if merged is None else merged.merge(stats)
    elapsed = time.perf_counter() - started
    merged.metadata["seconds_total"] = elapsed
    if jax.process_index() == 0:
        merged.save(args.out)
    print(merged.summary())
    total = int(merged.token_count.sum())
    print(f"{total:,} tokens in {elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f} tokens/s); "
          f"{'LAPE only' if args.lape_only else f'PLND top_k={merged.top_k}'}; wrote {args.out}")
    return 0


def run_select(args: argparse.Namespace) -> int:
    for path in args.stats:
        require_file(path, "--stats")
    check_output_file(args.out, "--out")
    heatmap = args.heatmap or os.path.splitext(args.out)[0] + ".png"
    check_output_file(heatmap, "--heatmap")
    languages = parse_languages(args.languages)
    from seallm_jax.lsn.select import LapeConfig, PlndConfig, plot_neuron_heatmap, select
    from seallm_jax.lsn.stats import NeuronStats

    stats = NeuronStats.load(args.stats[0])
    for path in args.stats[1:]:
        stats = stats.merge(NeuronStats.load(path))
    if languages is not None:
        check_languages(languages, stats.languages, where=f"the statistics ({', '.join(args.stats)})")
        stats = stats.select_languages(languages)
    matrices = tuple(m.strip() for m in args.matrices.split(",") if m.strip())
    if args.method == "lape":
        config = LapeConfig(top_rate=args.top_rate, filter_rate=args.filter_rate,
                            activation_bar_ratio=args.activation_bar_ratio, budget=args.budget, matrices=matrices)
    else:
        config = PlndConfig(membership_fraction=args.membership_fraction, budget=args.budget,
                            max_languages_per_neuron=args.max_languages_per_neuron, matrices=matrices)
    neuron_set = select(stats, args.method, config)
    neuron_set.save(args.out)
    plot_neuron_heatmap(neuron_set, heatmap, languages=stats.languages)
    counts = neuron_set.counts()
    total = neuron_set.num_layers * neuron_set.intermediate_size
    print(f"{args.method.upper()} neurons of {neuron_set.num_layers} layers x {neuron_set.intermediate_size}:")
    for lang in stats.languages:
        fraction = neuron_set.parameter_fraction([lang], matrices)
        share = f", {100 * fraction:.3f}% of parameters" if fraction is not None else ""
        print(f"  {lang:>4}: {counts.get(lang, 0):6d} neurons ({100 * counts.get(lang, 0) / total:.2f}% of neurons{share})")
    print(f"wrote {args.out} and {heatmap}")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from seallm_jax.lsn.neurons import NeuronSet

    neuron_set = NeuronSet.load(args.neurons)
    languages = parse_languages(args.languages) or sorted(neuron_set.languages)
    deactivate = parse_languages(args.deactivate, "--deactivate")
    has = sorted(neuron_set.languages)
    if deactivate is not None:
        check_languages(deactivate, has, where=f"neuron file {args.neurons}")
    elif not set(languages) & set(has):
        raise UnknownLanguageError(
            f"neuron file {args.neurons} has neurons for {', '.join(has)}, none of which --languages evaluates "
            f"({', '.join(languages)}); evaluate one of them, or name the languages to deactivate with --deactivate")
    files = _check_inputs(args, languages)
    check_output_file(args.out, "--out")
    plot = args.plot or os.path.splitext(args.out)[0] + ".png"
    check_output_file(plot, "--plot")
    import jax

    from seallm_jax.lsn import inputs
    from seallm_jax.lsn.ablate import ablation_matrix

    model, mesh, streams, sources = _prepare(args, languages, files)
    batches = {lang: inputs.take_tokens(stream, args.max_tokens) for lang, stream in streams.items()}
    result = ablation_matrix(model, neuron_set, batches, deactivate=deactivate, mesh=mesh,
                             progress=not args.no_progress)
    result.metadata.update(model=os.path.abspath(args.model), neurons=os.path.abspath(args.neurons),
                           data=sources)
    print(result.table())
    if jax.process_index() == 0:
        result.save(args.out)
        result.plot(plot)
    print(f"wrote {args.out} and {plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `lsn ...` directly (`python -m seallm_jax.lsn.cli stats ...`), as `seallm-jax lsn ...`."""
    from seallm_jax.cli import main as seallm_jax_main

    return seallm_jax_main(["lsn", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
