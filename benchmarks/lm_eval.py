"""lm-evaluation-harness requests per second, side by side in one run: the `seallm-jax` backend and
lm-eval's own `hf` backend (transformers, torch, CPU) on the same model and the same local tasks.

    python -m benchmarks.lm_eval --out lm_eval.json               # Qwen2-0.5B shape, th/vi/id, 3 repeats
    python -m benchmarks.lm_eval --num-hidden-layers 4 --repeats 1   # a quick look
    python -m benchmarks.lm_eval --tasks sea_corpus_mc             # one task

The model is random (Qwen2-0.5B's shape unless flags say otherwise) with the real Qwen2 tokenizer,
written once as a Hugging Face directory that both backends load; `--pretrained DIR` runs a trained model
instead (a random model seldom emits the generation task's stop string, a trained one does). The tasks
are the shipped corpus' lm-eval YAML tasks (`seallm_jax.eval.testing.write_corpus_tasks`): multiple choice (loglikelihood),
rolling perplexity (loglikelihood_rolling) and greedy translation (generate_until), float32, the same
batch size for both. Each repeat times one full lm-eval evaluation per backend (`simple_evaluate`,
model already loaded); seallm-jax's first repeat includes its XLA compilations (one per length bucket
used), later repeats reuse them, as a second task of a real run would. Metrics must agree between
backends (printed), so the comparison is of the same work.

The machine probe (`benchmarks.machine`) is printed first and stored under "machine" in `--out`; the
scoring requests' rate is also given as model FLOP/s (2 x parameters x every request's context and
continuation tokens, the work `hf` does) and as a share of the probe's JAX matmul rate.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.common import add_model_args, model_config
from benchmarks.machine import probe, probe_text, share_of_matmul


def _make_model(directory: str, args: argparse.Namespace) -> str:
    from flax import nnx

    from seallm_jax import Qwen2ForCausalLM
    from seallm_jax.hf import save_pretrained
    from seallm_jax.tokenizer import load_tokenizer

    config = model_config(args).replace(eos_token_id=151643, bos_token_id=None)
    model = Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))
    return save_pretrained(model, os.path.join(directory, "model"), tokenizer=load_tokenizer())


METHODS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


def _request_tokens(tokenizer, method: str, requests) -> int:
    """Tokens a plain forward pass reads for these scoring requests (context + continuation, or the text)."""
    if method == "loglikelihood":
        return sum(len(tokenizer.encode(context + continuation)) for context, continuation in
                   (request.args for request in requests))
    if method == "loglikelihood_rolling":
        return sum(len(tokenizer.encode(request.args[0])) for request in requests)
    return 0


def _count_requests(lm, tokenizer) -> dict[str, float]:
    """Count the requests lm-eval hands `lm`, their tokens and the seconds spent answering them, per type."""
    counts = {}
    for method in METHODS:
        def counted(requests, *rest, _original=getattr(lm, method), _method=method, **options):
            start = time.perf_counter()
            answers = _original(requests, *rest, **options)
            counts[_method] = counts.get(_method, 0) + len(requests)
            counts[_method + " s"] = counts.get(_method + " s", 0.0) + time.perf_counter() - start
            counts[_method + " tokens"] = counts.get(_method + " tokens", 0) + _request_tokens(tokenizer, _method,
                                                                                                requests)
            return answers
        setattr(lm, method, counted)
    return counts


def _evaluate(lm, counts: dict[str, float], tasks: list[str], manager) -> tuple[float, dict, int]:
    from lm_eval import simple_evaluate

    counts.clear()
    start = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=False)
    return time.perf_counter() - start, results["results"], sum(int(counts.get(m, 0)) for m in METHODS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--tasks", default="sea_corpus_mc,sea_corpus_ppl,sea_corpus_gen")
    parser.add_argument("--languages", default="th,vi,id")
    parser.add_argument("--docs-per-language", type=int, default=4)
    parser.add_argument("--max-gen-toks", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="seallm-jax,hf")
    parser.add_argument("--out", help="also write the figures (and the machine probe) to this JSON file")
    parser.add_argument("--pretrained", help="a Hugging Face model directory to run instead of the random model "
                                             "(a trained model stops generating at the tasks' stop strings)")
    args = parser.parse_args()

    import jax
    import torch
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from seallm_jax.eval.lm_eval import SeallmJaxLM
    from seallm_jax.eval.testing import write_corpus_tasks
    from seallm_jax.model.config import Qwen2Config

    machine = probe()
    print(probe_text(machine))
    print(f"devices: {jax.devices()}; torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}", flush=True)
    config = Qwen2Config.from_hf(args.pretrained) if args.pretrained else model_config(args)
    # Model FLOPs per token of a forward pass: every matmul weight (the embedding lookup is not one;
    # a tied embedding is also the LM head, which is).
    embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    flops_per_token = 2 * (config.num_parameters() - embedding)
    with tempfile.TemporaryDirectory() as directory:
        model_dir = args.pretrained or _make_model(directory, args)
        task_dir = os.path.join(directory, "tasks")
        write_corpus_tasks(task_dir, languages=tuple(args.languages.split(",")),
                           docs_per_language=args.docs_per_language, max_gen_toks=args.max_gen_toks)
        tasks = args.tasks.split(",")
        manager = TaskManager(include_path=task_dir, include_defaults=False)
        backends = args.backends.split(",")
        lms = {}
        if "seallm-jax" in backends:
            lms["seallm-jax"] = SeallmJaxLM(model_dir, batch_size=args.batch_size, show_progress=False)
        if "hf" in backends:
            lms["hf"] = get_model("hf")(pretrained=model_dir, dtype="float32", device="cpu",
                                        batch_size=args.batch_size)
        tokenizer = next(iter(lms.values())).tokenizer
        counts = {name: _count_requests(lm, tokenizer) for name, lm in lms.items()}
        print(f"model: {args.pretrained or 'random'}, {config.num_parameters() / 1e6:.0f}M parameters; tasks {tasks}; "
              f"batch size {args.batch_size}")
        rates: dict[str, list[float]] = {name: [] for name in lms}
        runs = []
        for repeat in range(args.repeats):
            metrics = {}
            for name, lm in lms.items():
                seconds, metrics[name], requests = _evaluate(lm, counts[name], tasks, manager)
                rates[name].append(requests / seconds)
                by_type = "; ".join(f"{m} {int(counts[name][m])} in {counts[name][m + ' s']:.1f} s"
                                    for m in METHODS if m in counts[name])
                scoring = [m for m in METHODS[:2] if m in counts[name]]
                scoring_seconds = sum(counts[name][m + " s"] for m in scoring)
                scoring_flops = flops_per_token * sum(counts[name][m + " tokens"] for m in scoring)
                share = ""
                if scoring_seconds > 0:
                    rate = scoring_flops / scoring_seconds
                    # The work of a plain forward pass over every request (what `hf` computes; seallm-jax
                    # skips shared contexts and unscored positions, so its figure can pass the probe's).
                    share = (f"; scoring {rate / 1e9:.1f} GFLOP/s of plain-forward work = "
                             f"{100 * share_of_matmul(rate, machine):.0f}% of the probe's JAX matmul rate")
                print(f"repeat {repeat + 1} {name:>10}: {requests} requests in {seconds:.1f} s = "
                      f"{requests / seconds:.2f} requests/s ({by_type}{share})", flush=True)
                runs.append({"repeat": repeat + 1, "backend": name, "requests": requests, "seconds": seconds,
                             "requests_per_second": requests / seconds, "by_type": dict(counts[name]),
                             "scoring_model_flops": scoring_flops})
            for task in tasks:
                row = {name: {k: round(v, 4) for k, v in metrics[name][task].items()
                              if isinstance(v, float) and "stderr" not in k} for name in lms}
                print(f"  {task}: {row}")
            if len(lms) == 2:
                print(f"  ratio seallm-jax / hf: {rates['seallm-jax'][-1] / rates['hf'][-1]:.2f}x", flush=True)
        for name, values in rates.items():
            print(f"{name}: requests/s per repeat {', '.join(f'{v:.2f}' for v in values)}")
        ratios = []
        if len(lms) == 2:
            ratios = (np.asarray(rates["seallm-jax"]) / np.asarray(rates["hf"])).tolist()
            print(f"ratio per repeat: {', '.join(f'{r:.2f}x' for r in ratios)}")
        if args.out:
            from seallm_jax.files import write_text

            write_text(args.out, json.dumps({"machine": machine, "args": vars(args), "tasks": tasks,
                                             "requests_per_second": rates, "ratio_per_repeat": ratios,
                                             "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
