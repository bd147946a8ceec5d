"""Running `lsn compare`: statistics, the deactivation check, then every arm × seed trained through
`train.loop.train` and scored along its training from its checkpoints. Everything is cached in OUT, so a
rerun of the same command continues where it stopped and never redoes a finished run or score.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seallm_jax.errors import ConfigError, MissingDataError
from seallm_jax.files import atomic_file
from seallm_jax.lsn.compare import report as reporting
from seallm_jax.lsn.compare import score
from seallm_jax.lsn.compare.arms import ARM_BUILDERS, Arm, Context, random_mask
from seallm_jax.lsn.compare.settings import CompareSettings


def _say(message: str) -> None:
    print(f"[compare] {message}", flush=True)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_file(path) as staging, open(staging, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=False)


def _lr_name(learning_rate: float) -> str:
    return f"lr{learning_rate:.0e}".replace("+", "").replace("-0", "-")


# ---- one run ------------------------------------------------------------------------------------------------
def train_config(settings: CompareSettings, target: str, arm: Arm, learning_rate: float, seed: int = 0):
    """The training engine's config for one run: every arm of a seed sees the same data order, steps, batch
    and schedule; checkpoints are kept at every step the curve is scored at."""
    import ml_collections

    from seallm_jax.train.config import base_config

    config = base_config()
    config.model.init_from = os.path.abspath(settings.model)
    config.data.update(source="corpus", languages=[target], seed=settings.seed + seed,
                       tokenizer=settings.tokenizer or os.path.abspath(settings.model))
    config.train.update(steps=settings.steps, global_batch_size=settings.batch_size, seq_len=settings.seq_len,
                        seed=settings.seed + seed, log_every=max(1, settings.steps // 5), eval_every=0,
                        progress_bar=settings.progress)
    config.optimizer.update(learning_rate=float(learning_rate), schedule="cosine", weight_decay=0.0,
                            warmup_steps=min(settings.warmup_steps, settings.steps - 1))
    config.checkpoint.update(every=int(settings.eval_every), keep=len(settings.curve_steps()), async_save=False)
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    config.distributed.mode = "none"
    for section, fields in arm.overrides.items():
        config[section].update(fields)
    return ml_collections.ConfigDict(config.to_dict())


def _optimizer_wrapper(config):
    """The wrapper an arm's config asks for: LSN's neuron mask, LoRA, or none (full fine-tuning)."""
    from seallm_jax import lora
    from seallm_jax.lsn import optim as lsn_optim
    from seallm_jax.train.optim import requested_wrapper

    return {"lsn": lsn_optim.WRAPPER, "lora": lora.WRAPPER}.get(requested_wrapper(config))


def optimizer_state_bytes(config, abstract_params, *, lean: bool | None = None) -> int:
    """Bytes of the optimizer state this run keeps (for LoRA it includes the adapters themselves); `lean`
    overrides config.lsn.lean."""
    import jax
    import ml_collections

    from seallm_jax.train.optim import build_optimizer

    if lean is not None:
        config = ml_collections.ConfigDict(config.to_dict())
        config.lsn.lean = lean
    state = jax.eval_shape(build_optimizer(config, _optimizer_wrapper(config)).init, abstract_params)
    return int(sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)))


def train_run(settings: CompareSettings, scorer: score.Scorer, target: str, arm: Arm, learning_rate: float,
              seed: int, run_dir: str) -> dict[str, Any]:
    """Train one run (resuming if interrupted) and score its last step on the target's validation split."""
    from seallm_jax.train.loop import train

    done = os.path.join(run_dir, "run.json")
    if os.path.exists(done):
        return _read_json(done)
    config = train_config(settings, target, arm, learning_rate, seed)
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


def score_curve(settings: CompareSettings, scorer: score.Scorer, run_dir: str, splits: Mapping[str, list],
                path: str) -> dict[str, Any]:
    """Losses of the run at every curve step, from its checkpoints; written after each step (resumable)."""
    cached = _read_json(path) if os.path.exists(path) else {"losses": {}, "seconds": 0.0}
    for step in settings.curve_steps():
        if str(step) in cached["losses"]:
            continue
        started = time.perf_counter()
        cached["losses"][str(step)] = scorer.loss(run_dir, splits, step=step)
        cached["seconds"] = round(cached["seconds"] + time.perf_counter() - started, 2)
        _write_json(path, cached)
    return cached


# ---- before training: does zeroing the target's neurons hurt the target most? -----------------------------
def deactivation_check(settings: CompareSettings, context: Context, scorer: score.Scorer,
                       base: Mapping[str, Mapping[str, float]], targets: Sequence[str]) -> dict[str, Any]:
    """LAPE's own test, per target: every language's change on the test split when the target's LAPE neurons
    are zeroed, against random neurons of the same count per layer (the random arm's draws, one per seed)."""
    out = {}
    languages = list(settings.languages)
    for target in targets:
        lape_mask = context.lape.mask([target])
        lape = score.log_ratios(base, scorer.loss(settings.model, {"test": languages},
                                                  gate_scale=np.where(lape_mask, 0.0, 1.0).astype(np.float32)))["test"]
        draws = [score.log_ratios(base, scorer.loss(settings.model, {"test": languages}, gate_scale=np.where(
            random_mask(context, target, seed), 0.0, 1.0).astype(np.float32)))["test"]
            for seed in range(settings.seeds)]
        out[target] = {
            "split": "test", "neurons": int(lape_mask.sum()),
            "lape": lape,
            "random": {lang: score.t_interval([d[lang] for d in draws]) for lang in languages},
            "lape_minus_random": {lang: score.t_interval([lape[lang] - d[lang] for d in draws]) for lang in languages},
        }
    return out


# ---- the whole comparison -----------------------------------------------------------------------------------
def _check_inputs(settings: CompareSettings) -> None:
    """The languages, the model and a given neuron set exist (before anything is written)."""
    from seallm_jax.data import check_language

    for lang in settings.languages:
        check_language(lang)
    if not os.path.isdir(settings.model) or not os.path.exists(os.path.join(settings.model, "config.json")):
        raise MissingDataError(f"lsn compare: --model {settings.model} is not a model directory (config.json)")
    if settings.neurons and not os.path.exists(settings.neurons):
        raise MissingDataError(f"lsn compare: --neurons {settings.neurons} does not exist")


CACHE_SETTINGS = "cache_settings.json"


def _check_cache_settings(settings: CompareSettings, out: str) -> None:
    """OUT's caches were made with these settings, or OUT is new: never mix runs made two ways. The first run
    (or one from before this file existed) records them."""
    path = os.path.join(out, CACHE_SETTINGS)
    wanted = settings.cache_key()
    if not os.path.exists(path):
        if not settings.report_only:
            _write_json(path, wanted)
        return
    recorded = _read_json(path)
    changed = [f"{name}={recorded.get(name)!r} (now {value!r})" for name, value in wanted.items()
               if recorded.get(name) != value]
    if changed:
        raise ConfigError(f"lsn compare: {out} holds runs made with {', '.join(changed)}; rerun with those "
                          f"settings to continue them, or give another --out")


def _prepare(settings: CompareSettings, out: str, timings: dict[str, float]):
    """Statistics (train split) and LAPE's selection, cached in OUT/stats.npz."""
    import jax
    from flax import nnx

    from seallm_jax import hf
    from seallm_jax.lsn.inputs import batches_by_language
    from seallm_jax.lsn.neurons import NeuronSet
    from seallm_jax.lsn.select import LapeConfig, select_lape
    from seallm_jax.lsn.stats import NeuronStats, compute_statistics
    from seallm_jax.model import Qwen2Config
    from seallm_jax.tokenizer import tokenizer_for

    tokenizer = tokenizer_for(settings.model, settings.tokenizer)
    model_config = Qwen2Config.from_hf(settings.model)
    abstract = nnx.split(hf.abstract_model(model_config), nnx.Param)[1].to_pure_dict()
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
    stats_path = os.path.join(out, "stats.npz")
    if os.path.exists(stats_path):
        stats = NeuronStats.load(stats_path)
    elif settings.report_only:
        raise MissingDataError(f"lsn compare --report-only: {out} has no statistics yet (stats.npz): nothing to "
                               "report; run without --report-only first")
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
        lape = NeuronSet.load(settings.neurons)
    else:
        lape = select_lape(stats, LapeConfig(top_rate=settings.top_rate, matrices=tuple(settings.matrices)))
    lape.check_compatible(model_config.num_hidden_layers, model_config.intermediate_size)
    context = Context(settings, stats, lape, abstract_params, model_config.num_parameters(),
                      model_config.hidden_size, out)
    return context, tokenizer


def compare(settings: CompareSettings, *, scorer: score.Scorer | None = None) -> dict[str, Any]:
    """Run (or resume) the whole comparison into `settings.out`; returns what compare.json holds.

    `scorer`: evaluation batches read some other way (default: `Scorer.from_corpus`)."""
    _check_inputs(settings)
    out = os.path.abspath(settings.out)
    if settings.report_only and not os.path.isdir(out):
        raise MissingDataError(f"lsn compare --report-only: {out} does not exist: nothing to report")
    os.makedirs(out, exist_ok=True)
    _check_cache_settings(settings, out)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    context, tokenizer = _prepare(settings, out, timings)
    if scorer is None:
        _say("tokenizing the evaluation text (test, other-domain, validation)")
        scorer = score.Scorer.from_corpus(settings, tokenizer)
    splits = {"test": list(settings.languages), "other_domain": list(scorer.batches["other_domain"])}
    splits = {split: languages for split, languages in splits.items() if languages}
    # The start model's scores; a rerun that adds targets or languages scores only what is missing.
    wanted = {**splits, "validation": list(settings.targets)}
    path = os.path.join(out, "base_eval.json")
    base = _read_json(path) if os.path.exists(path) else {}
    missing = {split: [lang for lang in languages if lang not in base.get(split, {})]
               for split, languages in wanted.items()}
    missing = {split: languages for split, languages in missing.items() if languages}
    if missing and settings.report_only:
        raise MissingDataError(f"lsn compare --report-only: {out} has no scores of the start model for {missing} "
                               "yet: nothing to report; run without --report-only first")
    if missing:
        t = time.perf_counter()
        for split, by_lang in scorer.loss(settings.model, missing).items():
            base.setdefault(split, {}).update(by_lang)
        _write_json(path, base)
        timings["base_evaluation"] = round(time.perf_counter() - t, 2)
    # Cached per target: a rerun that adds targets checks only the new ones (a report-only one reports the rest).
    path = os.path.join(out, "deactivation.json")
    deactivation = _read_json(path) if os.path.exists(path) else {}
    missing = [t for t in settings.targets if t not in deactivation or deactivation[t]["random"][
        settings.languages[0]]["n"] != settings.seeds or set(deactivation[t]["lape"]) != set(settings.languages)]
    if missing and not settings.report_only:
        _say("deactivation check: the targets' LAPE neurons zeroed vs random neurons of the same count per layer")
        t = time.perf_counter()
        deactivation.update(deactivation_check(settings, context, scorer, base, missing))
        _write_json(path, deactivation)
        timings["deactivation"] = round(time.perf_counter() - t, 2)
        missing = []
    deactivation = {t: deactivation[t] for t in settings.targets if t not in missing}

    # arms[target][seed] -> [Arm]; labels keep the order of the first seed's arms.
    arms = {target: [[arm for name in settings.arms for arm in ARM_BUILDERS[name](context, target, seed)]
                     for seed in range(settings.seeds)] for target in settings.targets}
    sweep_targets = list(settings.sweep_targets or settings.targets)
    order = sweep_targets + [t for t in settings.targets if t not in sweep_targets]
    total_runs = sum(len(settings.learning_rates[arm.lr_kind]) if target in sweep_targets else 1
                     for target in order for arm in arms[target][0]) + sum(
        len(arms[target][0]) * (settings.seeds - 1) for target in order)
    chosen: dict[tuple[str, str], float] = {}  # (target, sweep key) -> learning rate chosen on seed 0
    results: dict[str, Any] = {target: {} for target in settings.targets}
    unfinished = []  # report-only: "target/label" of the arms whose runs or curves OUT does not hold yet
    state = {"run": 0}
    for target in order:
        for position, first in enumerate(arms[target][0]):
            record = _run_arm(
                settings, context, scorer, base, splits, target,
                [arms[target][s][position] for s in range(settings.seeds)],
                sweep_target=target if target in sweep_targets else sweep_targets[0], chosen=chosen,
                progress=(state, total_runs))
            if record is None:
                unfinished.append(f"{target}/{first.label}")
                continue
            results[target][first.label] = record
            if not settings.report_only:
                report = reporting.build_report(settings, context, base, deactivation, results, scorer, timings,
                                                started, complete=False)
                _write_json(os.path.join(out, "compare.json"), report)
    if settings.report_only and not any(results.values()):
        raise MissingDataError(f"lsn compare --report-only: no arm in {out} has finished its runs yet "
                               f"({len(unfinished)} unfinished): nothing to report")
    report = reporting.build_report(settings, context, base, deactivation, results, scorer, timings, started,
                                    complete=not unfinished, unfinished=unfinished)
    _write_json(os.path.join(out, "compare.json"), report)
    reporting.plot_curves(report, os.path.join(out, "curves.png"))
    with atomic_file(os.path.join(out, "compare.md")) as staging, open(staging, "w", encoding="utf-8") as f:
        f.write(reporting.format_markdown(report))
    print(reporting.format_table(report))
    _say(f"wrote {os.path.join(out, 'compare.json')}, compare.md (the tables) and curves.png"
         + (f"; left out, not finished yet: {', '.join(unfinished)}" if unfinished else ""))
    return report


def _run_arm(settings: CompareSettings, context: Context, scorer: score.Scorer, base: Mapping, splits: Mapping,
             target: str, seed_arms: Sequence[Arm], *, sweep_target: str, chosen: dict,
             progress) -> dict[str, Any] | None:
    """Every seed of one arm: seed 0 sweeps the learning rate on the target's validation split (unless the
    target reuses another's rates), the others reuse it; each chosen run is scored along its training.
    With `settings.report_only`, None unless OUT holds every run and curve of the arm (nothing is trained)."""
    out = os.path.abspath(settings.out)
    first = seed_arms[0]
    key = (sweep_target, first.sweep_key)
    runs, sweep = [], []
    for seed, arm in enumerate(seed_arms):
        arm_dir = os.path.join(out, "runs", target, arm.label, f"seed{seed}")
        grid = list(settings.learning_rates[arm.lr_kind]) if key not in chosen else [chosen[key]]
        records = []
        for learning_rate in grid:
            run_dir = os.path.join(arm_dir, _lr_name(learning_rate))
            if settings.report_only:
                if not os.path.exists(os.path.join(run_dir, "run.json")):
                    return None
            else:
                progress[0]["run"] += 1
                _say(f"run {progress[0]['run']}/{progress[1]}: target {target}, arm {arm.label}, seed {seed}, "
                     f"lr {learning_rate:g}")
            records.append(train_run(settings, scorer, target, arm, learning_rate, seed, run_dir))
        best = min(records, key=lambda r: r["validation_loss"])
        chosen.setdefault(key, best["learning_rate"])
        if seed == 0:
            sweep = records
        curve_path = os.path.join(arm_dir, "curve.json")
        if settings.report_only and not (os.path.exists(curve_path) and set(map(str, settings.curve_steps()))
                                         <= set(_read_json(curve_path)["losses"])):
            return None
        scored = score_curve(settings, scorer, best["workdir"], splits, curve_path)
        if not settings.keep_checkpoints and not settings.report_only:  # scored: the JSON is all a rerun needs
            for record in records:
                shutil.rmtree(os.path.join(record["workdir"], "checkpoints"), ignore_errors=True)
        losses = {int(step): value for step, value in scored["losses"].items()}
        runs.append({"seed": seed, "data_seed": settings.seed + seed, "learning_rate": best["learning_rate"],
                     "details": arm.details, "workdir": best["workdir"], "train_seconds": best["train_seconds"],
                     "curve_seconds": scored["seconds"], "losses": {str(s): losses[s] for s in sorted(losses)},
                     "curve": score.curve({s: base[s] for s in splits}, losses, target)})
    finals = [score.log_ratios({s: base[s] for s in splits}, r["losses"][str(settings.steps)]) for r in runs]
    summary = score.summarize_arm([r["curve"] for r in runs], finals, target, settings.target_gains)
    config = train_config(settings, target, first, chosen[key])
    lsn = bool(config.lsn.get("neurons"))
    return {
        "arm": first.name, "label": first.label, "learning_rate": chosen[key],
        "learning_rate_from": "sweep" if sweep_target == target else f"sweep of {sweep_target}",
        "trainable_parameters": first.trainable_parameters,
        "trainable_fraction": first.trainable_parameters / context.num_parameters,
        # Neuron arms: dense masked AdamW keeps moments over the whole gate/up/down kernels; lean keeps them on
        # the selected neurons only (the same parameters to rounding).
        "optimizer_state_bytes": optimizer_state_bytes(config, context.abstract_params),
        "optimizer_state_bytes_dense": (optimizer_state_bytes(config, context.abstract_params, lean=False)
                                        if lsn else None),
        "optimizer_state_bytes_lean": (optimizer_state_bytes(config, context.abstract_params, lean=True)
                                       if lsn else None),
        "details": first.details, "sweep": sweep, "runs": runs, **summary,
        "train_seconds": round(sum(r["train_seconds"] for r in runs), 2),
        "sweep_train_seconds": round(sum(r["train_seconds"] for r in sweep), 2),
        "curve_seconds": round(sum(r["curve_seconds"] for r in runs), 2),
    }

