"""The `seallm-jax eval` command: run benchmark tasks on a model, and plot results of several models.

`seallm-jax eval --model DIR --tasks ppl,mc,mgsm,chrf,refusal,safety,seabench --data-dir DIR --out R.json`;
`seallm-jax eval --model DIR --lm-eval-tasks NAMES [--lm-eval-include TASK_DIR] --out R.json` (lm-eval tasks);
`seallm-jax eval plot R1.json R2.json --out compare.png`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from seallm_jax.cli_args import parse_languages
from seallm_jax.defaults import parse_mesh
from seallm_jax.errors import ConfigError, check_dtype, require_dir, require_file
from seallm_jax.paths import require_model_dir
from seallm_jax.files import check_output_file

DEFAULT_TASKS = "ppl,chrf"  # the two that need no downloaded benchmark: they run on the shipped corpus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model: perplexity, exams, MGSM, chrF, refusal, safety, SeaBench",
        description="Run SeaLLMs-3-style benchmarks on a model and write a results JSON "
                    "(`seallm-jax eval plot R1.json R2.json --out X.png` compares results files).",
    )
    parser.add_argument("--model", metavar="DIR", help="Hugging Face model directory or Orbax checkpoint")
    parser.add_argument("--tokenizer", metavar="DIR",
                        help="tokenizer directory (default: the model's own, else the built-in Qwen2 tokenizer)")
    parser.add_argument("--tasks",
                        help=f"comma-separated: ppl,mc,mgsm,chrf,refusal,safety,seabench (default {DEFAULT_TASKS})")
    parser.add_argument("--lm-eval-tasks", metavar="NAMES",
                        help="run lm-evaluation-harness tasks instead (comma-separated lm-eval task or group names) "
                             "with the seallm-jax backend; --out gets lm-eval's results. Needs the [lm-eval] extra")
    parser.add_argument("--lm-eval-include", metavar="DIR",
                        help="a folder of your own lm-eval task YAML files (lm-eval's --include_path)")
    parser.add_argument("--lm-eval-num-fewshot", type=int, metavar="K",
                        help="few-shot examples per lm-eval task (default: each task's own)")
    parser.add_argument("--data-dir", metavar="DIR", help="benchmark files, laid out as in docs/eval.md")
    parser.add_argument("--languages", metavar="CODES", help="comma-separated language codes (default: all present)")
    parser.add_argument("--out", metavar="JSON", default="eval_results.json", help="results file to write")
    parser.add_argument("--output-dir", metavar="DIR", help="where generated answers go (default: next to --out)")
    parser.add_argument("--model-name", help="name used in results and SeaBench outputs (default: the model dir name)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N examples per language and benchmark")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="rows per scoring/decoding batch")
    parser.add_argument("--max-length", type=int, metavar="T",
                        help="longest scored sequence in tokens (default 2048; with --lm-eval-tasks: the model's "
                             "max_position_embeddings, as lm-eval's hf backend)")
    parser.add_argument("--num-shots", type=int, default=3, metavar="K", help="shots for multiple choice")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="cap on generated tokens for every generative task (default: per task)")
    parser.add_argument("--repetition-penalty", type=float, metavar="R",
                        help="divide the logits of tokens already seen by R in every generative task "
                             "(> 1 discourages repeats; 1.0 = off), as `seallm-jax generate`; default 1.0, "
                             "with --lm-eval-tasks the model's generation_config.json (as lm-eval's hf backend)")
    parser.add_argument("--dtype", default="float32", help="compute dtype, e.g. bfloat16")
    parser.add_argument("--unroll-layers", action=argparse.BooleanOptionalAction, default=True,
                        help="decode with the layers unrolled over a copy of the weights (default, fastest); "
                             "--no-unroll-layers holds no copy, slower: for a model that fills the device")
    parser.add_argument("--mesh", metavar="AXES",
                        help="device mesh, e.g. data=-1 or data=2,fsdp=4: shards batches (and params) over devices")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_eval)

    commands = parser.add_subparsers(dest="eval_command", metavar="plot")
    plot = commands.add_parser("plot", help="compare results files in one PNG")
    plot.add_argument("results", nargs="+", metavar="RESULTS.json")
    plot.add_argument("--out", required=True, metavar="PNG", dest="plot_out")
    plot.add_argument("--labels", help="comma-separated model labels (default: model names)")
    plot.set_defaults(func=_run_plot)


def _run_eval(args: argparse.Namespace) -> int:
    if not args.model:
        raise ConfigError("--model is required (or compare results: `seallm-jax eval plot RESULTS.json ... --out PNG`)")
    if args.tokenizer is not None:
        require_dir(args.tokenizer, "--tokenizer")
    if args.data_dir is not None:
        require_dir(args.data_dir, "--data-dir")
    check_dtype(args.dtype)
    from seallm_jax.model.generate import check_sampling  # the same check as `seallm-jax generate`

    if args.repetition_penalty is not None:
        check_sampling(1, 0.0, 0, 1.0, args.repetition_penalty)
    mesh_sizes = parse_mesh(args.mesh)
    languages = parse_languages(args.languages)
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--max-length", args.max_length),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: expected a positive integer")
    if args.num_shots < 0:
        raise ConfigError(f"--num-shots {args.num_shots}: expected 0 or more")
    check_output_file(args.out, "--out")
    if args.lm_eval_tasks is not None:
        return _run_lm_eval(args, mesh_sizes)
    for flag, value in (("--lm-eval-include", args.lm_eval_include),
                        ("--lm-eval-num-fewshot", args.lm_eval_num_fewshot)):
        if value is not None:
            raise ConfigError(f"{flag} applies to --lm-eval-tasks, which is not given")
    args.max_length = args.max_length or 2048
    from seallm_jax.eval.core import EvalConfig, EvalContext
    from seallm_jax.eval.generation import GenerationConfig
    from seallm_jax.eval.runner import check_data, parse_tasks, results_document, run_tasks, save_results
    from seallm_jax.eval.scoring import ScoringConfig
    from seallm_jax.hf import load_model
    from seallm_jax.sharding import make_mesh, params_sharding_fn
    from seallm_jax.tokenizer import tokenizer_for

    tasks = parse_tasks(args.tasks or DEFAULT_TASKS)
    scoring = ScoringConfig(batch_size=args.batch_size, max_length=args.max_length, show_progress=not args.no_progress)
    generation = GenerationConfig(batch_size=args.batch_size, max_prompt_length=args.max_length,
                                  unroll_layers=args.unroll_layers, repetition_penalty=args.repetition_penalty or 1.0,
                                  show_progress=not args.no_progress)
    config = EvalConfig(scoring=scoring, generation=generation, limit=args.limit, num_shots=args.num_shots)
    if args.max_new_tokens is not None:
        config = dataclasses.replace(config, **{field: args.max_new_tokens for field in (
            "mgsm_max_new_tokens", "translation_max_new_tokens", "refusal_max_new_tokens", "seabench_max_new_tokens")})
    mesh = make_mesh(mesh_sizes, what=f"--mesh {args.mesh}") if mesh_sizes else None
    model_name = args.model_name or Path(os.path.abspath(args.model)).name
    ctx = EvalContext(
        model=None, tokenizer=None, config=config, data_dir=Path(args.data_dir) if args.data_dir else None,
        languages=languages, output_dir=Path(args.output_dir) if args.output_dir else Path(args.out).parent,
        model_name=model_name, mesh=mesh,
    )
    check_data(ctx, tasks)  # before the (slow) model load
    require_model_dir(args.model)
    ctx.model = load_model(args.model, dtype=args.dtype,
                           sharding=params_sharding_fn(mesh) if mesh is not None else None)
    ctx.tokenizer = tokenizer_for(args.model, args.tokenizer)
    results = run_tasks(ctx, tasks, table_stream=sys.stdout)
    path = save_results(args.out, results_document(model_name, results, config))
    print(f"wrote {path}")
    return 0


def _run_lm_eval(args: argparse.Namespace, mesh_sizes: dict[str, int] | None) -> int:
    """`--lm-eval-tasks`: lm-evaluation-harness tasks through the seallm-jax backend; --out gets lm-eval's
    results document (`results[task][metric]`, e.g. results["arc_easy"]["acc,none"])."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("--lm-eval-tasks needs lm-evaluation-harness: pip install 'seallm-jax[lm-eval]'")
    if args.tasks is not None:
        raise ConfigError("--tasks and --lm-eval-tasks are separate runs with separate results files: give one")
    if args.lm_eval_include is not None:
        require_dir(args.lm_eval_include, "--lm-eval-include")
    if args.lm_eval_num_fewshot is not None and args.lm_eval_num_fewshot < 0:
        raise ConfigError(f"--lm-eval-num-fewshot {args.lm_eval_num_fewshot}: expected 0 or more")
    names = [name.strip() for name in args.lm_eval_tasks.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--lm-eval-tasks {args.lm_eval_tasks!r} names no task")
    from seallm_jax.eval.lm_eval import evaluate_tasks, task_manager

    manager = task_manager(names, args.lm_eval_include)  # unknown names fail here, before the model loads
    require_model_dir(args.model)
    from seallm_jax import distributed
    from seallm_jax.eval.lm_eval import SeallmJaxLM
    from seallm_jax.sharding import make_mesh

    # One process of many (a TPU pod slice, SLURM, launch/local.py): all join one mesh and run the same
    # requests (JAX programs run on every process at once); process 0 writes the results.
    distributed.initialize()

    mesh = make_mesh(mesh_sizes, what=f"--mesh {args.mesh}") if mesh_sizes else None
    lm = SeallmJaxLM(args.model, tokenizer=args.tokenizer, dtype=args.dtype, batch_size=args.batch_size,
                     max_length=args.max_length, max_gen_toks=args.max_new_tokens or 256, mesh=mesh,
                     repetition_penalty=args.repetition_penalty, unroll_layers=args.unroll_layers,
                     show_progress=not args.no_progress)
    document = evaluate_tasks(lm, names, manager, limit=args.limit, num_fewshot=args.lm_eval_num_fewshot,
                              print_table=distributed.is_primary())
    if distributed.is_primary():
        from seallm_jax.eval.runner import save_results

        print(f"wrote {save_results(args.out, document)}")
    return 0


def _run_plot(args: argparse.Namespace) -> int:
    for path in args.results:
        require_file(path, "results file")
    check_output_file(args.plot_out, "--out")
    from seallm_jax.eval.plot import plot_comparison

    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    print(f"wrote {plot_comparison(args.results, args.plot_out, labels)}")
    return 0
