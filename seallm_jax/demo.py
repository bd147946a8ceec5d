"""`seallm-jax demo`: the main job end to end on the embedded default, on a laptop CPU in minutes.

Pretrain a small Qwen2 on the shipped corpus, find language-specific neurons (LAPE), train only one
language's neurons, measure every language's perplexity before and after, export to Hugging Face and
check that `transformers` computes the same logits. Beside it, the control: as many random neurons per
layer, trained the same way, so the selection's own effect shows. Everything lands in one folder.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from seallm_jax.errors import ConfigError
from seallm_jax.files import check_output_dir

DEMO_LANGUAGES = ("en", "zh", "id", "vi", "th", "ms", "tl", "km", "my")
DEFAULT_TARGET = "th"
# Chosen on the demo's own model (issue 10's sweep, docs/lsn.md "The demo"): at a higher rate or with
# more steps the few trained neurons start to move the other languages; with top_rate 0.05 LAPE keeps
# too few neurons (10 for th) for a visible gain.
DEFAULT_LSN_LEARNING_RATE = 2e-3
DEFAULT_TOP_RATE = 0.1


def demo_config(*, vocab_size: int, eos_token_id: int, tokenizer_dir: str,
                languages: Sequence[str]) -> ml_collections.ConfigDict:
    """The pretraining recipe: a 4-layer Qwen2 on the shipped corpus's vocabulary subset."""
    from seallm_jax.train.config import base_config

    config = base_config()
    config.model.update(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=eos_token_id, eos_token_id=eos_token_id,
    )
    config.train.update(steps=300, global_batch_size=16, seq_len=128, log_every=25, eval_every=0, progress_bar=True)
    config.optimizer.update(learning_rate=5e-3, warmup_steps=20, schedule="cosine", weight_decay=0.01)
    config.checkpoint.update(every=200, keep=1)
    config.data.update(source="corpus", languages=list(languages), tokenizer=tokenizer_dir, weighting="uniform")
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    config.distributed.mode = "none"
    return config


def lsn_config(pretrain: ml_collections.ConfigDict, *, init_from: str, neurons: str, language: str,
               steps: int, learning_rate: float = 2e-3) -> ml_collections.ConfigDict:
    """LSN training: start from the pretrained export, train only `language`'s neurons on its text."""
    config = ml_collections.ConfigDict(pretrain.to_dict())
    config.model.init_from = init_from
    config.data.languages = [language]
    config.train.update(steps=steps, log_every=10)
    config.optimizer.update(learning_rate=learning_rate, warmup_steps=5, weight_decay=0.0)
    config.lsn.update(neurons=neurons, languages=[language])
    return config


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _perplexities(model_dir: str, languages: Sequence[str], tokenizer: Any, max_tokens: int) -> dict[str, float]:
    """Held-out (validation split) perplexity of each language."""
    from seallm_jax import hf
    from seallm_jax.lsn.train import heldout_perplexity

    return heldout_perplexity(hf.load_pretrained(model_dir), languages, tokenizer=tokenizer, max_tokens=max_tokens)


def _check_transformers_parity(model_dir: str, vocab_size: int) -> float:
    """Max |logit difference| between transformers and seallm-jax on the exported model."""
    import torch
    import transformers

    from seallm_jax import hf

    ids = np.random.RandomState(0).randint(1, vocab_size, (2, 24))
    reference = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = reference(torch.as_tensor(ids)).logits.numpy()
    ours = np.asarray(hf.load_pretrained(model_dir)(ids))
    return float(np.abs(theirs - ours).max())


def check_demo_languages(languages: Sequence[str], target: str) -> None:
    """LAPE finds a language's neurons by comparing it with the others: the target and at least one
    other language are needed (checked before any work starts)."""
    if target not in languages:
        raise ConfigError(f"--target {target} must be one of the demo languages ({', '.join(languages)})")
    if len(set(languages)) < 2:
        raise ConfigError(f"--languages {','.join(languages)}: the demo needs the target and at least one other "
                          "language (LAPE compares each language with the others)")


def check_demo_numbers(args: argparse.Namespace) -> None:
    """The numeric options, before any work starts."""
    if not 0.0 < args.top_rate <= 1.0:
        raise ConfigError(f"--top-rate {args.top_rate}: expected a share of all neurons in (0, 1]")
    if not args.lsn_learning_rate > 0.0:
        raise ConfigError(f"--lsn-learning-rate {args.lsn_learning_rate}: expected a positive number")
    for flag, value in (("--lsn-steps", args.lsn_steps), ("--pretrain-steps", args.pretrain_steps)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: expected at least 1 step")


def run_demo(out: str, *, languages: Sequence[str] = DEMO_LANGUAGES, target: str = DEFAULT_TARGET,
             pretrain_steps: int | None = None, lsn_steps: int = 60, top_rate: float = DEFAULT_TOP_RATE,
             eval_tokens: int = 8192, stats_tokens: int = 32768,
             lsn_learning_rate: float = DEFAULT_LSN_LEARNING_RATE) -> dict[str, Any]:
    """Run the whole job into `out`; returns (and writes to out/summary.json) what it measured."""
    from seallm_jax import hf
    from seallm_jax.data import load_corpus
    from seallm_jax.tokenizer import VocabularySubset
    from seallm_jax.lsn.compare import random_neurons
    from seallm_jax.lsn.inputs import batches_by_language
    from seallm_jax.lsn.neurons import NeuronSet
    from seallm_jax.lsn.optim import WRAPPER
    from seallm_jax.lsn.select import LapeConfig, plot_neuron_heatmap, select_lape
    from seallm_jax.lsn.stats import compute_statistics
    from seallm_jax.tokenizer import load_tokenizer
    from seallm_jax.train.loop import train

    check_demo_languages(languages, target)
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 1)

    _say(f"1/7 vocabulary: the Qwen2 tokens used by the shipped corpus ({', '.join(languages)})")
    corpus = load_corpus(split="train", languages=list(languages))
    subset = VocabularySubset.from_texts(load_tokenizer(), (d.text for docs in corpus.values() for d in docs))
    tokenizer_dir = os.path.join(out, "tokenizer")
    subset.save_pretrained(tokenizer_dir)
    _say(f"    {len(subset)} of 151,643 Qwen2 tokens kept -> {tokenizer_dir}")
    lap("vocabulary")

    pretrain = demo_config(vocab_size=len(subset), eos_token_id=subset.eos_token_id, tokenizer_dir=tokenizer_dir, languages=languages)
    if pretrain_steps is not None:
        pretrain.train.steps = pretrain_steps
    _say(f"2/7 pretraining a {pretrain.model.num_hidden_layers}-layer Qwen2 for {pretrain.train.steps} steps")
    train(pretrain, os.path.join(out, "pretrain"))
    base_dir = hf.convert_orbax_to_hf(os.path.join(out, "pretrain"), os.path.join(out, "base_hf"))
    hf.copy_tokenizer_files(tokenizer_dir, base_dir)
    lap("pretrain")

    _say("3/7 neuron statistics (LAPE activation probabilities, PLND importance) per language")
    model = hf.load_pretrained(base_dir)
    stats = compute_statistics(
        model, batches_by_language(languages, tokenizer=subset, split="train", seq_len=128, batch_size=16),
        max_tokens=stats_tokens, progress=True, metadata={"model": base_dir},
    )
    stats.save(os.path.join(out, "stats.npz"))
    lap("statistics")

    _say(f"4/7 selecting language-specific neurons (LAPE, top_rate={top_rate})")
    neurons = select_lape(stats, LapeConfig(top_rate=top_rate))
    neurons_path = os.path.join(out, "neurons.json")
    neurons.save(neurons_path)
    plot_neuron_heatmap(neurons, os.path.join(out, "neurons.png"))
    counts = {lang: neurons.counts().get(lang, 0) for lang in languages}
    _say(f"    neurons per language: {counts}")
    if counts[target] == 0:
        raise ConfigError(f"LAPE selected no neuron for {target} at --top-rate {top_rate}; raise --top-rate")
    lap("selection")

    _say("5/7 held-out perplexity before LSN training")
    before = _perplexities(base_dir, languages, subset, eval_tokens)
    lap("perplexity_before")

    _say(f"6/7 LSN training: only {target}'s {counts[target]} neurons change, for {lsn_steps} steps")
    lsn = lsn_config(pretrain, init_from=base_dir, neurons=neurons_path, language=target, steps=lsn_steps,
                     learning_rate=lsn_learning_rate)
    train(lsn, os.path.join(out, "lsn_train"), optimizer_wrapper=WRAPPER)
    export_dir = hf.convert_orbax_to_hf(os.path.join(out, "lsn_train"), os.path.join(out, "export_hf"))
    hf.copy_tokenizer_files(tokenizer_dir, export_dir)
    after = _perplexities(export_dir, languages, subset, eval_tokens)
    lap("lsn_training")

    _say(f"    control: {counts[target]} random neurons (the same count in each layer), trained the same way")
    random_path = os.path.join(out, "neurons_random.json")
    target_mask = neurons.mask([target])
    NeuronSet.from_masks("random", {target: random_neurons(target_mask.sum(axis=1), target_mask.shape[1],
                                                            target_mask, seed=0)},
                         hidden_size=neurons.hidden_size, num_parameters=neurons.num_parameters).save(random_path)
    control = lsn_config(pretrain, init_from=base_dir, neurons=random_path, language=target, steps=lsn_steps,
                         learning_rate=lsn_learning_rate)
    train(control, os.path.join(out, "random_train"), optimizer_wrapper=WRAPPER)
    random_dir = hf.convert_orbax_to_hf(os.path.join(out, "random_train"), os.path.join(out, "random_hf"))
    after_random = _perplexities(random_dir, languages, subset, eval_tokens)
    lap("random_control")

    _say("7/7 checking the Hugging Face export with transformers")
    max_diff = _check_transformers_parity(export_dir, len(subset))
    lap("export_check")

    change = {lang: 100.0 * (after[lang] / before[lang] - 1.0) for lang in languages}
    change_random = {lang: 100.0 * (after_random[lang] / before[lang] - 1.0) for lang in languages}
    summary = {
        "out": out, "languages": list(languages), "target": target, "vocabulary_size": len(subset),
        "pretrain_steps": int(pretrain.train.steps), "lsn_steps": lsn_steps,
        "neurons_per_language": counts, "trained_parameter_fraction": neurons.parameter_fraction([target]),
        "perplexity_before": before, "perplexity_after": after, "perplexity_change_percent": change,
        "perplexity_after_random_neurons": after_random, "perplexity_change_percent_random_neurons": change_random,
        "lsn_learning_rate": lsn_learning_rate,
        "transformers_max_abs_logit_diff": max_diff, "seconds": timings,
    }
    lsn_sel, random_sel = selectivity(change, target), selectivity(change_random, target)
    summary["selectivity"] = {name: dict(zip(("target_gain_percent", "others_mean_abs_change_percent",
                                             "others_worst_change_percent"), values))
                              for name, values in (("lsn", lsn_sel), ("random", random_sel))}
    summary["verdict"] = summary_verdict(lsn_sel, random_sel, target)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    target = summary["target"]
    print()
    print(f"{'language':<10}{'ppl before':>12}{'LSN after':>12}{'change':>10}{'random after':>14}{'change':>10}")
    for lang in summary["languages"]:
        mark = "  <- trained" if lang == target else ""
        print(f"{lang:<10}{summary['perplexity_before'][lang]:>12.2f}{summary['perplexity_after'][lang]:>12.2f}"
              f"{summary['perplexity_change_percent'][lang]:>+9.2f}%"
              f"{summary['perplexity_after_random_neurons'][lang]:>14.2f}"
              f"{summary['perplexity_change_percent_random_neurons'][lang]:>+9.2f}%{mark}")
    print(f"\n{'':<22}{target + ' change':>12}{'others mean |change|':>22}{'others worst':>14}")
    for name, arm in (("LSN (LAPE neurons)", "lsn"), ("random neurons", "random")):
        gain, spread, worst = summary["selectivity"][arm].values()
        print(f"{name:<22}{-gain:>+11.2f}%{spread:>21.2f}%{worst:>+13.2f}%")
    print(f"\n{summary['verdict']}")
    print(f"trained {summary['trained_parameter_fraction'] * 100:.3f}% of the parameters ({target}'s neurons)")
    print(f"transformers loads the export with max |logit difference| {summary['transformers_max_abs_logit_diff']:.2e}")
    print(f"total {sum(summary['seconds'].values()):.0f}s {summary['seconds']}")
    print(f"\nEverything is in {summary['out']}: tokenizer/, pretrain/, base_hf/, stats.npz, neurons.json, "
          f"neurons.png, lsn_train/, export_hf/, neurons_random.json, random_train/, random_hf/, summary.json")


def selectivity(change_percent: dict[str, float], target: str) -> tuple[float, float, float]:
    """(target's perplexity reduction, mean |change| of the other languages, their largest increase), in %."""
    others = [v for k, v in change_percent.items() if k != target]
    return (-change_percent[target], float(np.mean(np.abs(others))) if others else 0.0,
            max(others) if others else 0.0)


def summary_verdict(lsn: tuple[float, float, float], random: tuple[float, float, float], target: str) -> str:
    """One sentence: do the selected neurons beat random ones, by gain and by what they move elsewhere."""
    (gain, spread, _), (random_gain, random_spread, _) = lsn, random
    if gain <= 0:
        return f"LSN training did not lower {target}'s perplexity here (raise --lsn-steps or --lsn-learning-rate)"
    per_unit = gain / max(spread, 1e-3)
    random_per_unit = random_gain / max(random_spread, 1e-3) if random_gain > 0 else 0.0
    better_gain = gain > random_gain
    better_selectivity = per_unit > random_per_unit
    if better_gain and better_selectivity:
        how = "more gain on the target and less change elsewhere"
    elif better_selectivity:
        how = (f"a similar or smaller gain on the target ({gain:.2f}% vs {random_gain:.2f}%) but less change "
               f"elsewhere ({per_unit:.1f} vs {random_per_unit:.1f} points of gain per point of mean change)")
    elif better_gain:
        return (f"{target}: the selected neurons gain more than random ones of the same count ({gain:.2f}% vs "
                f"{random_gain:.2f}%) but move the other languages more ({per_unit:.1f} vs {random_per_unit:.1f} "
                "points of gain per point of mean change)")
    else:
        return f"{target}: the selected neurons do not beat random ones of the same count here"
    return f"{target}: the selected neurons beat random ones of the same count: {how}"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the main job end to end on a small model (minutes on a CPU)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="seallm_demo", help="folder for everything the demo writes")
    parser.add_argument("--languages", default=",".join(DEMO_LANGUAGES), help="comma-separated language codes")
    parser.add_argument("--target", default=DEFAULT_TARGET, help="the language whose neurons are trained")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (default: the recipe's)")
    parser.add_argument("--lsn-steps", type=int, default=60, help="LSN training steps")
    parser.add_argument("--top-rate", type=float, default=DEFAULT_TOP_RATE, help="LAPE: share of all neurons selected")
    parser.add_argument("--lsn-learning-rate", type=float, default=DEFAULT_LSN_LEARNING_RATE,
                        help="learning rate of LSN training (and of the random-neuron control)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from seallm_jax.data import check_language

    languages = [check_language(code.strip()) for code in args.languages.split(",") if code.strip()]
    check_demo_languages(languages, check_language(args.target))
    check_demo_numbers(args)
    check_output_dir(args.out, "--out")
    run_demo(args.out, languages=languages, target=args.target, pretrain_steps=args.pretrain_steps,
             lsn_steps=args.lsn_steps, top_rate=args.top_rate, lsn_learning_rate=args.lsn_learning_rate)
    return 0
