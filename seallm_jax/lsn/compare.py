"""`seallm-jax lsn compare`: does training only a language's neurons work? Every arm from the same start.

For one model and each target language, train *arms* (LAPE neurons, PLND neurons at LAPE's budget, random
neurons with LAPE's count per layer over several seeds, full fine-tuning, LoRA at LAPE's trainable count and at
a larger rank) with the same data order, steps and batch; each arm picks its learning rate from a small sweep on
the target's validation split; the chosen run is scored on every language's test split and on held-out text of
another domain (`seallm_jax.data.other_domain`). Training is `seallm_jax.train.loop.train` (progress bars,
checkpoints, resume); statistics come from the train split only. Writes OUT/compare.json, prints a table and
plots the trade-off (target gain against the worst other language's change, English marked).

Arms are built by functions in `ARM_BUILDERS` (name -> builder); a new arm is one more entry.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from seallm_jax.errors import ConfigError, MissingDataError
from seallm_jax.files import atomic_file

SCHEMA_VERSION = 1
DEFAULT_ARMS = ("lape", "plnd", "random", "full", "lora")
# Learning-rate grids per arm kind (neuron arms share one); the first look used 2e-3 for LSN, 5e-5 full.
DEFAULT_LEARNING_RATES = {"neurons": (1e-3, 3e-3, 1e-2), "full": (1e-5, 3e-5, 1e-4), "lora": (3e-4, 1e-3, 3e-3)}
EVAL_SPLITS = ("test", "other_domain")
# Language families, for "languages of other families" in the summary (Glottolog's top-level families).
FAMILIES = {"en": "Indo-European", "ta": "Dravidian", "zh": "Sino-Tibetan", "my": "Sino-Tibetan",
            "id": "Austronesian", "ms": "Austronesian", "tl": "Austronesian", "jv": "Austronesian",
            "vi": "Austroasiatic", "km": "Austroasiatic", "th": "Kra-Dai", "lo": "Kra-Dai"}


@dataclasses.dataclass
class CompareSettings:
    """Everything a comparison depends on (saved in compare.json as `config`)."""

    model: str
    out: str
    targets: tuple[str, ...]
    languages: tuple[str, ...]  # statistics and evaluation languages (the targets among them)
    arms: tuple[str, ...] = DEFAULT_ARMS
    tokenizer: str | None = None
    steps: int = 30
    batch_size: int = 4
    seq_len: int = 256
    random_seeds: int = 3
    learning_rates: dict[str, tuple[float, ...]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_LEARNING_RATES))
    warmup_steps: int = 3
    top_rate: float = 0.01
    neurons: str | None = None  # a given LAPE neuron-set JSON instead of selecting one
    matrices: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_larger_factor: int = 4
    stats_tokens: int = 20_000
    eval_tokens: int = 4_096  # per language and split
    sweep_eval_tokens: int = 2_048  # target's validation split, per sweep run
    eval_seq_len: int = 128
    eval_batch_size: int = 8
    seed: int = 0
    keep_checkpoints: bool = False  # False: a run's checkpoints are deleted once it has been scored
    checkpoint_every: int = 0  # steps between checkpoints within a run (0: only at its end)
    # Targets whose arms sweep the learning rate (None: all); the others reuse the rate the same arm chose on
    # the first swept target. Random-neuron arms sweep on their first seed; the other seeds reuse its rate.
    sweep_targets: tuple[str, ...] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.targets:
            raise ConfigError("lsn compare: give at least one target language")
        missing = [t for t in self.targets if t not in self.languages]
        if missing:
            raise ConfigError(f"lsn compare: target(s) {missing} must be among --languages ({','.join(self.languages)})")
        if len(self.languages) < 2:
            raise ConfigError("lsn compare: LAPE needs the target and at least one other language")
        if self.sweep_targets is not None and (not self.sweep_targets or set(self.sweep_targets) - set(self.targets)):
            raise ConfigError(f"lsn compare: sweep targets {list(self.sweep_targets)} must be a non-empty subset "
                              f"of the targets ({','.join(self.targets)})")
        unknown = [a for a in self.arms if a not in ARM_BUILDERS]
        if unknown:
            raise ConfigError(f"lsn compare: unknown arm(s) {unknown}; known: {sorted(ARM_BUILDERS)}")
        for name, value in (("steps", self.steps), ("batch_size", self.batch_size), ("seq_len", self.seq_len),
                            ("random_seeds", self.random_seeds), ("eval_tokens", self.eval_tokens)):
            if int(value) < 1:
                raise ConfigError(f"lsn compare: {name}={value} must be >= 1")
        for kind, grid in self.learning_rates.items():
            if not grid or any(float(lr) <= 0 for lr in grid):
                raise ConfigError(f"lsn compare: learning rates for {kind} must be positive, got {grid}")


@dataclasses.dataclass
class Arm:
    """One training run family: `name` (arm kind), `label` (unique within a target), `lr_kind` (the grid)."""

    name: str
    label: str
    lr_kind: str
    overrides: dict[str, Any]  # config section -> fields
    trainable_parameters: int
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def _say(message: str) -> None:
    print(f"[compare] {message}", flush=True)


# ---- the context the arms are built from -------------------------------------------------------------------
@dataclasses.dataclass
class Context:
    settings: CompareSettings
    stats: Any  # NeuronStats
    lape: Any  # NeuronSet (all languages)
    abstract_params: Any
    num_parameters: int
    hidden_size: int
    out: str


def _neuron_arm(context: Context, name: str, label: str, neuron_set: Any, target: str, details: dict) -> Arm:
    path = os.path.join(context.out, "neurons", f"{target}_{label}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    neuron_set.save(path)
    count = int(neuron_set.mask([target]).sum())
    per_layer = neuron_set.counts_per_layer([target])[0].tolist()
    return Arm(name, label, "neurons", {"lsn": {"neurons": path, "languages": [target],
                                                "matrices": list(context.settings.matrices)}},
               trainable_parameters=count * len(context.settings.matrices) * context.hidden_size,
               details={"neurons": count, "neurons_per_layer": per_layer, "neuron_file": path, **details})


def build_lape(context: Context, target: str) -> list[Arm]:
    lape = context.lape.restricted([target])
    if int(lape.mask([target]).sum()) == 0:
        raise ValueError(f"LAPE selected no neuron for {target}; raise --top-rate")
    return [_neuron_arm(context, "lape", "lape", lape, target, {"top_rate": context.settings.top_rate})]


def build_plnd(context: Context, target: str) -> list[Arm]:
    """PLND neurons, capped at LAPE's count (the same parameter budget); the membership fraction is relaxed
    from 1.0 in steps of 0.1 until PLND has at least that many candidates (recorded)."""
    from seallm_jax.lsn.select import PlndConfig, select_plnd

    wanted = int(context.lape.mask([target]).sum())
    stats = context.stats
    # The budget (a parameter fraction) that buys exactly `wanted` neurons.
    budget = (wanted * len(context.settings.matrices) * context.hidden_size + 0.5) / context.num_parameters
    chosen, fraction = None, 1.0
    for fraction in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
        chosen = select_plnd(stats, PlndConfig(membership_fraction=fraction, budget=min(budget, 1.0),
                                               matrices=tuple(context.settings.matrices)))
        if int(chosen.mask([target]).sum()) >= wanted:
            break
    plnd = chosen.restricted([target])
    return [_neuron_arm(context, "plnd", "plnd", plnd, target, {"membership_fraction": fraction,
                                                                "lape_neurons": wanted})]


def random_neurons(lape_counts_per_layer: Sequence[int], intermediate_size: int, exclude: np.ndarray,
                   seed: int) -> np.ndarray:
    """`[L, I]` mask with LAPE's count in each layer, drawn uniformly from the neurons LAPE did not pick."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((len(lape_counts_per_layer), intermediate_size), bool)
    for layer, count in enumerate(lape_counts_per_layer):
        pool = np.flatnonzero(~exclude[layer])
        mask[layer, rng.choice(pool, size=int(count), replace=False)] = True
    return mask


def build_random(context: Context, target: str) -> list[Arm]:
    from seallm_jax.lsn.neurons import NeuronSet

    lape_mask = context.lape.mask([target])
    per_layer = lape_mask.sum(axis=1)
    arms = []
    for seed in range(context.settings.random_seeds):
        mask = random_neurons(per_layer, lape_mask.shape[1], lape_mask, seed=1000 + seed)
        neuron_set = NeuronSet.from_masks("random", {target: mask}, hidden_size=context.hidden_size,
                                          num_parameters=context.num_parameters, config={"seed": 1000 + seed})
        arms.append(_neuron_arm(context, "random", f"random_s{seed}", neuron_set, target, {"seed": 1000 + seed}))
    return arms


def build_full(context: Context, target: str) -> list[Arm]:
    return [Arm("full", "full", "full", {}, trainable_parameters=context.num_parameters)]


def build_lora(context: Context, target: str) -> list[Arm]:
    """LoRA at the rank whose trainable count is closest to LAPE's, and at `lora_larger_factor` x that rank."""
    from seallm_jax import lora

    targets = tuple(context.settings.lora_targets)
    budget = int(context.lape.mask([target]).sum()) * len(context.settings.matrices) * context.hidden_size
    rank = lora.rank_for_budget(context.abstract_params, budget, targets)
    arms = []
    for r in dict.fromkeys((rank, rank * max(int(context.settings.lora_larger_factor), 2))):
        settings = lora.LoraSettings(rank=r, targets=targets)
        arms.append(Arm("lora", f"lora_r{r}", "lora", {"lora": {"rank": r, "alpha": 0.0, "targets": list(targets)}},
                        trainable_parameters=lora.trainable_count(context.abstract_params, settings),
                        details={"rank": r, "alpha": settings.scale * r, "targets": list(targets),
                                 "closest_to_lape": r == rank, "position": len(arms)}))
    return arms


ArmBuilder = Callable[[Context, str], list[Arm]]
ARM_BUILDERS: dict[str, ArmBuilder] = {"lape": build_lape, "plnd": build_plnd, "random": build_random,
                                       "full": build_full, "lora": build_lora}


# ---- training and scoring ----------------------------------------------------------------------------------
def train_config(settings: CompareSettings, target: str, arm: Arm, learning_rate: float):
    """The training engine's config for one run: same data order (seed), steps and batch for every arm."""
    import ml_collections

    from seallm_jax.train.config import base_config

    config = base_config()
    config.model.init_from = os.path.abspath(settings.model)
    config.data.update(source="corpus", languages=[target], tokenizer=settings.tokenizer or os.path.abspath(settings.model),
                       seed=settings.seed)
    config.train.update(steps=settings.steps, global_batch_size=settings.batch_size, seq_len=settings.seq_len,
                        seed=settings.seed, log_every=max(1, settings.steps // 5), eval_every=0,
                        progress_bar=settings.progress)
    config.optimizer.update(learning_rate=float(learning_rate), warmup_steps=min(settings.warmup_steps, settings.steps - 1),
                            schedule="cosine", weight_decay=0.0)
    config.checkpoint.update(every=int(settings.checkpoint_every), keep=1, async_save=False)
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    config.distributed.mode = "none"
    for section, fields in arm.overrides.items():
        config[section].update(fields)
    return ml_collections.ConfigDict(config.to_dict())


def _lean(config):
    import ml_collections

    lean = ml_collections.ConfigDict(config.to_dict())
    lean.lsn.lean = True
    return lean


def _optimizer_wrapper(config):
    """The wrapper an arm's config asks for: LSN's neuron mask, LoRA, or none (full fine-tuning)."""
    from seallm_jax import lora
    from seallm_jax.lsn import optim as lsn_optim
    from seallm_jax.train.optim import requested_wrapper

    return {"lsn": lsn_optim.WRAPPER, "lora": lora.WRAPPER}.get(requested_wrapper(config))


def optimizer_state_bytes(config, abstract_params) -> int:
    """Bytes of the optimizer state this run keeps (for LoRA it includes the adapters themselves)."""
    import jax

    from seallm_jax.train.optim import build_optimizer

    state = jax.eval_shape(build_optimizer(config, _optimizer_wrapper(config)).init, abstract_params)
    return int(sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)))


class Scorer:
    """Mean token cross-entropy of a model on fixed, pre-tokenized batches per (split, language)."""

    def __init__(self, settings: CompareSettings, tokenizer: Any):
        from seallm_jax.data.other_domain import other_domain_files
        from seallm_jax.lsn.inputs import batches_by_language, take_tokens

        def fixed(split: str | None, languages: Sequence[str], files: Mapping | None, max_tokens: int):
            streams = batches_by_language(languages, tokenizer=tokenizer, split=split, files=files,
                                          seq_len=settings.eval_seq_len, batch_size=settings.eval_batch_size)
            return {lang: list(take_tokens(streams[lang], max_tokens)) for lang in languages}

        files = other_domain_files(settings.languages)
        self.batches = {
            "test": fixed("test", settings.languages, None, settings.eval_tokens),
            "other_domain": fixed(None, list(files), files, settings.eval_tokens),
            "validation": fixed("validation", settings.targets, None, settings.sweep_eval_tokens),
        }
        self._evaluator = None
        self.tokens = {split: {lang: int(sum(np.count_nonzero(b["loss_mask"]) for b in batches))
                               for lang, batches in by_lang.items()} for split, by_lang in self.batches.items()}

    def loss(self, model_dir: str, splits: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
        from flax import nnx

        from seallm_jax import hf
        from seallm_jax.train.evaluate import Evaluator

        model = hf.load_model(model_dir)
        if self._evaluator is None:
            self._evaluator = Evaluator(model)
        else:  # every arm has the base model's architecture: one compiled program scores them all
            self._evaluator.params = nnx.split(model, nnx.Param)[1].to_pure_dict()
        evaluator = self._evaluator
        return {split: {lang: float(evaluator.loss(self.batches[split][lang])[0]) for lang in languages}
                for split, languages in splits.items()}


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, value: Any) -> None:
    with atomic_file(path) as staging, open(staging, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=False)


def _lr_name(learning_rate: float) -> str:
    return f"lr{learning_rate:.0e}".replace("+", "").replace("-0", "-")


def _run(settings: CompareSettings, scorer: Scorer, target: str, arm: Arm, learning_rate: float,
         run_dir: str) -> dict[str, Any]:
    """Train one run (resuming if interrupted) and score it on the target's validation split (cached)."""
    from seallm_jax.train.loop import train

    done = os.path.join(run_dir, "run.json")
    if os.path.exists(done):
        return _read_json(done)
    config = train_config(settings, target, arm, learning_rate)
    started = time.perf_counter()
    result = train(config, run_dir, optimizer_wrapper=_optimizer_wrapper(config))
    if result["status"] != "completed":
        raise KeyboardInterrupt(f"training of {run_dir} stopped at step {result['step']}; rerun to resume")
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    validation = scorer.loss(run_dir, {"validation": [target]})["validation"][target]
    record = {"learning_rate": learning_rate, "validation_loss": validation,
              "validation_perplexity": math.exp(validation), "train_seconds": round(train_seconds, 2),
              "validation_seconds": round(time.perf_counter() - started, 2),
              "final_train_loss": result["losses"].get(settings.steps), "workdir": run_dir}
    _write_json(done, record)
    return record


def _changes(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]) -> dict:
    """Perplexity change in percent per split and language (negative = better)."""
    return {split: {lang: 100.0 * (math.exp(after[split][lang] - before[split][lang]) - 1.0) for lang in after[split]}
            for split in after}


def _summary(changes: Mapping[str, Mapping[str, float]], target: str) -> dict[str, Any]:
    out = {}
    for split, by_lang in changes.items():
        others = {lang: v for lang, v in by_lang.items() if lang != target}
        worst = max(others, key=lambda lang: others[lang]) if others else None
        other_families = {lang: v for lang, v in others.items() if FAMILIES.get(lang) != FAMILIES.get(target)}
        moved = max(other_families, key=lambda lang: abs(other_families[lang])) if other_families else None
        out[split] = {"target_change": by_lang.get(target), "english_change": by_lang.get("en") if target != "en" else None,
                      "worst_other_language": worst, "worst_other_change": others.get(worst) if worst else None,
                      "mean_other_change": float(np.mean(list(others.values()))) if others else None,
                      "mean_abs_other_change": float(np.mean(np.abs(list(others.values())))) if others else None,
                      # the goal: target down >= 10%, English |change| < 1%, other families |change| < 2%
                      "most_moved_other_family_language": moved,
                      "most_moved_other_family_change": other_families.get(moved) if moved else None}
    return out


def compare(settings: CompareSettings) -> dict[str, Any]:
    """Run (or resume) the whole comparison into `settings.out`; returns what compare.json holds."""
    import jax

    from seallm_jax import hf
    from seallm_jax.lsn.inputs import batches_by_language
    from seallm_jax.lsn.select import LapeConfig, select_lape
    from seallm_jax.lsn.stats import NeuronStats, compute_statistics
    from seallm_jax.model import Qwen2Config
    from seallm_jax.tokenizer import tokenizer_for

    from seallm_jax.data import check_language

    for lang in settings.languages:
        check_language(lang)
    if not os.path.isdir(settings.model) or not os.path.exists(os.path.join(settings.model, "config.json")):
        raise MissingDataError(f"lsn compare: --model {settings.model} is not a model directory (config.json)")
    if settings.neurons and not os.path.exists(settings.neurons):
        raise MissingDataError(f"lsn compare: --neurons {settings.neurons} does not exist")
    out = os.path.abspath(settings.out)
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    tokenizer = tokenizer_for(settings.model, settings.tokenizer)
    model_config = Qwen2Config.from_hf(settings.model)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                   _abstract_params(model_config))

    stats_path = os.path.join(out, "stats.npz")
    if os.path.exists(stats_path):
        stats = NeuronStats.load(stats_path)
    else:
        _say(f"statistics on the train split of {','.join(settings.languages)} ({settings.stats_tokens} tokens each)")
        t = time.perf_counter()
        model = hf.load_model(settings.model)
        stats = compute_statistics(model, batches_by_language(settings.languages, tokenizer=tokenizer, split="train",
                                                              seq_len=settings.eval_seq_len,
                                                              batch_size=settings.eval_batch_size),
                                   max_tokens=settings.stats_tokens, progress=settings.progress,
                                   metadata={"model": os.path.abspath(settings.model)})
        stats.save(stats_path)
        del model
        timings["statistics"] = round(time.perf_counter() - t, 2)
    if settings.neurons:
        from seallm_jax.lsn.neurons import NeuronSet
        lape = NeuronSet.load(settings.neurons)
    else:
        lape = select_lape(stats, LapeConfig(top_rate=settings.top_rate, matrices=tuple(settings.matrices)))
    lape.check_compatible(model_config.num_hidden_layers, model_config.intermediate_size)
    context = Context(settings, stats, lape, abstract_params, model_config.num_parameters(),
                      model_config.hidden_size, out)

    _say("tokenizing the evaluation text (test, other-domain, validation)")
    scorer = Scorer(settings, tokenizer)
    splits = {"test": list(settings.languages), "other_domain": list(scorer.batches["other_domain"])}
    base_path = os.path.join(out, "base_eval.json")
    if os.path.exists(base_path):
        base = _read_json(base_path)
    else:
        t = time.perf_counter()
        base = scorer.loss(settings.model, {**splits, "validation": list(settings.targets)})
        _write_json(base_path, base)
        timings["base_evaluation"] = round(time.perf_counter() - t, 2)

    arms_by_target = {target: [arm for name in settings.arms for arm in ARM_BUILDERS[name](context, target)]
                      for target in settings.targets}
    sweep_targets = list(settings.sweep_targets or settings.targets)
    # Swept targets first: the others take the learning rates those chose.
    order = sweep_targets + [t for t in settings.targets if t not in sweep_targets]
    plans = {target: _sweep_plan(arms_by_target[target], settings, swept=target in sweep_targets) for target in order}
    total_runs = sum(len(grid or [None]) for plan in plans.values() for _, grid in plan)
    chosen: dict[str, float] = {}  # sweep key -> learning rate chosen on the first swept target
    results: dict[str, Any] = {target: {} for target in settings.targets}
    run_index = 0
    for target in order:
        for arm, grid in plans[target]:
            key = _sweep_key(arm)
            lr_source = "sweep" if grid else f"sweep of {sweep_targets[0] if target not in sweep_targets else arm.name + ' first seed'}"
            sweep = []
            for learning_rate in grid or [chosen[key]]:
                run_index += 1
                run_dir = os.path.join(out, "runs", target, arm.label, _lr_name(learning_rate))
                _say(f"run {run_index}/{total_runs}: target {target}, arm {arm.label}, lr {learning_rate:g}")
                sweep.append(_run(settings, scorer, target, arm, learning_rate, run_dir))
            best = min(sweep, key=lambda r: r["validation_loss"])
            chosen.setdefault(key, best["learning_rate"])
            final_path = os.path.join(out, "runs", target, arm.label, "final.json")
            if os.path.exists(final_path):
                final = _read_json(final_path)
            else:
                t = time.perf_counter()
                after = scorer.loss(best["workdir"], splits)
                final = {"loss": after, "eval_seconds": round(time.perf_counter() - t, 2)}
                _write_json(final_path, final)
            if not settings.keep_checkpoints:  # scored: the cached JSON is all a rerun needs
                for record in sweep:
                    shutil.rmtree(os.path.join(record["workdir"], "checkpoints"), ignore_errors=True)
            config = train_config(settings, target, arm, best["learning_rate"])
            changes = _changes({s: base[s] for s in splits}, final["loss"])
            results[target][arm.label] = {
                "arm": arm.name, "label": arm.label, "learning_rate": best["learning_rate"],
                "learning_rate_from": lr_source,
                "trainable_parameters": arm.trainable_parameters,
                "trainable_fraction": arm.trainable_parameters / context.num_parameters,
                "optimizer_state_bytes": optimizer_state_bytes(config, abstract_params),
                # Neuron arms train in dense mode (AdamW moments over the whole gate/up/down kernels, masked);
                # config.lsn.lean=True keeps them on the selected neurons only (same parameters to rounding).
                "optimizer_state_bytes_lean": (optimizer_state_bytes(_lean(config), abstract_params)
                                               if config.lsn.get("neurons") else None),
                "details": arm.details, "sweep": sweep, "loss": final["loss"],
                "perplexity": {s: {lang: math.exp(v) for lang, v in by.items()} for s, by in final["loss"].items()},
                "perplexity_change_percent": changes, "summary": _summary(changes, target),
                "train_seconds": best["train_seconds"], "sweep_train_seconds": round(sum(r["train_seconds"] for r in sweep), 2),
                "eval_seconds": final["eval_seconds"], "workdir": best["workdir"],
            }
            report = _report(settings, context, base, results, scorer, timings, started, complete=False)
            _write_json(os.path.join(out, "compare.json"), report)
    report = _report(settings, context, base, results, scorer, timings, started, complete=True)
    _write_json(os.path.join(out, "compare.json"), report)
    plot_tradeoff(report, os.path.join(out, "tradeoff.png"))
    print(format_table(report))
    _say(f"wrote {os.path.join(out, 'compare.json')} and {os.path.join(out, 'tradeoff.png')}")
    return report


def _sweep_key(arm: Arm) -> str:
    """Arms that share a learning rate: the random seeds share one; otherwise the arm's kind and position
    (e.g. the matched and the larger LoRA rank are 'lora#0' and 'lora#1' for every target)."""
    return arm.name if arm.name == "random" else f"{arm.name}#{arm.details.get('position', 0)}"


def _sweep_plan(arms: Sequence[Arm], settings: CompareSettings, swept: bool) -> list[tuple[Arm, list[float]]]:
    """(arm, learning rates to try); an empty list means: reuse the rate chosen for the arm's sweep key."""
    plan, seen = [], set()
    for arm in arms:
        key = _sweep_key(arm)
        plan.append((arm, list(settings.learning_rates[arm.lr_kind]) if swept and key not in seen else []))
        seen.add(key)
    return plan


def _abstract_params(model_config):
    from flax import nnx

    from seallm_jax.hf import abstract_model

    return nnx.split(abstract_model(model_config), nnx.Param)[1].to_pure_dict()


def _aggregate(results: Mapping[str, Any]) -> dict[str, Any]:
    """Per arm kind: mean and standard deviation over its runs (random seeds) of each summary number."""
    by_arm: dict[str, list] = {}
    for record in results.values():
        key = record["arm"] if record["arm"] == "random" else record["label"]
        by_arm.setdefault(key, []).append(record)
    out = {}
    for key, records in by_arm.items():
        entry = {"runs": [r["label"] for r in records], "trainable_parameters": records[0]["trainable_parameters"]}
        for split in EVAL_SPLITS:
            for field in ("target_change", "english_change", "worst_other_change", "mean_other_change",
                          "mean_abs_other_change", "most_moved_other_family_change"):
                values = [r["summary"].get(split, {}).get(field) for r in records]
                values = [v for v in values if v is not None]
                if values:
                    entry[f"{split}.{field}"] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                                 "min": float(np.min(values)), "max": float(np.max(values))}
        out[key] = entry
    return out


def _report(settings, context, base, results, scorer, timings, started, complete: bool) -> dict[str, Any]:
    import jax

    from seallm_jax.data.other_domain import other_domain_manifest

    config = dataclasses.asdict(settings)
    manifest = other_domain_manifest()["languages"]
    return {
        "schema_version": SCHEMA_VERSION, "complete": complete, "config": config,
        "model": {"path": os.path.abspath(settings.model), "num_parameters": context.num_parameters,
                  "hidden_size": context.hidden_size},
        "machine": {"backend": jax.default_backend(), "devices": jax.device_count(), "cpu_count": os.cpu_count(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "evaluation": {"tokens": scorer.tokens,
                       "other_domain_sources": {lang: {k: manifest[lang][k] for k in ("package", "version", "domain", "license")}
                                                for lang in scorer.batches["other_domain"]}},
        "neurons": {"lape_counts": context.lape.counts(), "statistics_tokens": dict(zip(context.stats.languages,
                                                                                        context.stats.token_count.tolist()))},
        "base": {"loss": base, "perplexity": {s: {lang: math.exp(v) for lang, v in by.items()} for s, by in base.items()}},
        "results": results,
        "aggregates": {target: _aggregate(by_label) for target, by_label in results.items()},
        "timings": {**timings, "total_seconds": round(time.perf_counter() - started, 2)},
    }


# ---- reporting ---------------------------------------------------------------------------------------------
def format_table(report: Mapping[str, Any]) -> str:
    """Per target and split: every language's perplexity change (%) per arm, plus budget and lr."""
    lines = []
    for target, by_label in report["results"].items():
        for split in EVAL_SPLITS:
            languages = list(report["base"]["loss"].get(split, {}))
            if not languages:
                continue
            lines.append(f"\ntarget {target}, {split}: perplexity change % (base ppl in the first row)")
            header = (f"{'arm':<14}{'params':>10}{'lr':>8}" + "".join(f"{lang:>8}" for lang in languages)
                      + f"{'worst other':>14}{'most moved other family':>26}")
            lines.append(header)
            lines.append(f"{'base ppl':<14}{'':>10}{'':>8}" + "".join(
                f"{report['base']['perplexity'][split][lang]:>8.1f}" for lang in languages))
            for label, record in by_label.items():
                changes = record["perplexity_change_percent"][split]
                summary = record["summary"][split]
                worst = (f"{summary['worst_other_language']} {summary['worst_other_change']:+.1f}"
                         if summary["worst_other_language"] else "-")
                moved = (f"{summary['most_moved_other_family_language']} {summary['most_moved_other_family_change']:+.1f}"
                         if summary["most_moved_other_family_language"] else "-")
                lines.append(f"{label:<14}{record['trainable_parameters']:>10,}{record['learning_rate']:>8.0e}" + "".join(
                    f"{changes[lang]:>+8.1f}" for lang in languages) + f"{worst:>14}{moved:>26}")
    return "\n".join(lines)


ARM_STYLE = {"lape": ("o", "tab:red"), "plnd": ("s", "tab:purple"), "random": ("x", "tab:gray"),
             "full": ("D", "tab:blue"), "lora": ("^", "tab:green")}


def plot_tradeoff(report: Mapping[str, Any], path: str) -> None:
    """One panel per (target, split): target gain (% perplexity reduction) against the worst other language's
    change (filled markers) and English's change (hollow markers at the same height); one point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(report["results"])
    fig, axes = plt.subplots(len(targets), len(EVAL_SPLITS), figsize=(6 * len(EVAL_SPLITS), 4.5 * len(targets)),
                             squeeze=False)
    for row, target in enumerate(targets):
        for col, split in enumerate(EVAL_SPLITS):
            ax = axes[row][col]
            for label, record in report["results"][target].items():
                summary = record["summary"].get(split)
                if not summary or summary["target_change"] is None:
                    continue
                marker, color = ARM_STYLE.get(record["arm"], ("*", "black"))
                gain = -summary["target_change"]
                ax.scatter(summary["worst_other_change"], gain, marker=marker, color=color, s=60,
                           label=record["arm"])
                ax.annotate(label, (summary["worst_other_change"], gain), fontsize=7, xytext=(4, 2),
                            textcoords="offset points")
                if summary["english_change"] is not None:
                    ax.scatter(summary["english_change"], gain, marker=marker, facecolors="none", edgecolors=color,
                               s=60)
                    ax.plot([summary["english_change"], summary["worst_other_change"]], [gain, gain], color=color,
                            alpha=0.3, lw=1)
            ax.axvline(0, color="black", lw=0.5)
            ax.set_xlabel("other languages' perplexity change % (filled: worst language, hollow: English)")
            ax.set_ylabel(f"{target} perplexity reduction %")
            ax.set_title(f"target {target}, {split.replace('_', '-')} text")
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles))
            ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line ------------------------------------------------------------------------------------------
def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}") from None


def register(commands: argparse._SubParsersAction) -> None:
    """Add `compare` to the `lsn` subcommands."""
    parser = commands.add_parser("compare", help="LSN vs random neurons, full fine-tuning and LoRA on one model",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face model directory (the start of every arm)")
    parser.add_argument("--targets", required=True, help="comma-separated target languages, e.g. vi,th")
    parser.add_argument("--languages", required=True, help="statistics and evaluation languages (targets included)")
    parser.add_argument("--out", required=True, help="output folder (compare.json, tradeoff.png, runs/)")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"arms (known: {','.join(ARM_BUILDERS)})")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--random-seeds", type=int, default=3)
    for kind, grid in DEFAULT_LEARNING_RATES.items():
        parser.add_argument(f"--lr-{kind}", default=",".join(f"{v:g}" for v in grid),
                            help=f"learning-rate sweep of the {kind} arm(s)")
    parser.add_argument("--top-rate", type=float, default=0.01, help="LAPE: share of all neurons selected")
    parser.add_argument("--neurons", default=None, help="a LAPE neuron-set JSON to use instead of selecting")
    parser.add_argument("--matrices", default="gate_proj,up_proj,down_proj", help="FFN matrices the neuron arms train")
    parser.add_argument("--lora-larger-factor", type=int, default=4, help="the larger LoRA rank = this x the matched one")
    parser.add_argument("--stats-tokens", type=int, default=20_000)
    parser.add_argument("--eval-tokens", type=int, default=4_096, help="tokens per language and split")
    parser.add_argument("--sweep-eval-tokens", type=int, default=2_048)
    parser.add_argument("--sweep-targets", default=None,
                        help="targets whose arms sweep the learning rate (default: all); others reuse their rates")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every run's final checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint interval within a run (0: end only)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run_compare)


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    def codes(text: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in text.split(",") if v.strip())

    return CompareSettings(
        model=args.model, out=args.out, targets=codes(args.targets), languages=codes(args.languages),
        arms=codes(args.arms), tokenizer=args.tokenizer, steps=args.steps, batch_size=args.batch_size,
        seq_len=args.seq_len, random_seeds=args.random_seeds,
        learning_rates={kind: _floats(getattr(args, f"lr_{kind}")) for kind in DEFAULT_LEARNING_RATES},
        top_rate=args.top_rate, neurons=args.neurons, matrices=codes(args.matrices),
        lora_larger_factor=args.lora_larger_factor, stats_tokens=args.stats_tokens, eval_tokens=args.eval_tokens,
        sweep_eval_tokens=args.sweep_eval_tokens, keep_checkpoints=args.keep_checkpoints,
        checkpoint_every=args.checkpoint_every,
        sweep_targets=codes(args.sweep_targets) if args.sweep_targets else None,
        progress=not args.no_progress)


def run_compare(args: argparse.Namespace) -> int:
    compare(settings_from_args(args))
    return 0
