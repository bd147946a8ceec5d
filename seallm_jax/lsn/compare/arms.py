"""The arms of `lsn compare`: what each trains (LAPE, PLND or random neurons, full fine-tuning, LoRA) for a target.

`ARM_BUILDERS` maps an arm's name to a builder `(context, target, seed) -> [Arm]`; a new arm is one more entry.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from seallm_jax.errors import ConfigError
from seallm_jax.lsn.compare.settings import DEFAULT_ARMS, RANDOM_NEURON_SEED, CompareSettings


@dataclasses.dataclass
class Arm:
    """One arm for one seed: `name` (kind), `label` (unique within a target), `lr_kind` (its rate grid)."""

    name: str
    label: str
    lr_kind: str
    overrides: dict[str, Any]  # config section -> fields
    trainable_parameters: int
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def sweep_key(self) -> str:
        """Runs that share a learning rate: the arm's kind and position (e.g. the matched and the larger LoRA
        rank are 'lora#0' and 'lora#1' for every target and seed)."""
        return f"{self.name}#{self.details.get('position', 0)}"


@dataclasses.dataclass
class Context:
    """What the arms are built from: the statistics, LAPE's selection and the model's shapes."""

    settings: CompareSettings
    stats: Any  # NeuronStats
    lape: Any  # NeuronSet (all languages)
    abstract_params: Any
    num_parameters: int
    hidden_size: int
    out: str


def _neuron_arm(context: Context, name: str, label: str, neuron_set: Any, target: str, file_label: str,
                details: dict) -> Arm:
    path = os.path.join(context.out, "neurons", f"{target}_{file_label}.json")
    if not os.path.exists(path):  # the same set for every seed: written once
        os.makedirs(os.path.dirname(path), exist_ok=True)
        neuron_set.save(path)
    count = int(neuron_set.mask([target]).sum())
    per_layer = neuron_set.counts_per_layer([target])[0].tolist()
    return Arm(name, label, "neurons", {"lsn": {"neurons": path, "languages": [target],
                                                "matrices": list(context.settings.matrices),
                                                "lean": bool(context.settings.lean)}},
               trainable_parameters=count * len(context.settings.matrices) * context.hidden_size,
               details={"neurons": count, "neurons_per_layer": per_layer, "neuron_file": path, **details})


def build_lape(context: Context, target: str, seed: int) -> list[Arm]:
    lape = context.lape.restricted([target])
    if int(lape.mask([target]).sum()) == 0:
        raise ConfigError(f"lsn compare: LAPE selected no neuron for {target}; raise --top-rate")
    return [_neuron_arm(context, "lape", "lape", lape, target, "lape", {"top_rate": context.settings.top_rate})]


def build_plnd(context: Context, target: str, seed: int) -> list[Arm]:
    """PLND neurons, capped at LAPE's count (the same parameter budget); the membership fraction is relaxed
    from 1.0 in steps of 0.1 until PLND has at least that many candidates (recorded)."""
    from seallm_jax.lsn.select import PlndConfig, select_plnd

    wanted = int(context.lape.mask([target]).sum())
    # The budget (a parameter fraction) that buys exactly `wanted` neurons.
    budget = (wanted * len(context.settings.matrices) * context.hidden_size + 0.5) / context.num_parameters
    chosen, fraction = None, 1.0
    for fraction in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
        chosen = select_plnd(context.stats, PlndConfig(membership_fraction=fraction, budget=min(budget, 1.0),
                                                       matrices=tuple(context.settings.matrices)))
        if int(chosen.mask([target]).sum()) >= wanted:
            break
    plnd = chosen.restricted([target])
    return [_neuron_arm(context, "plnd", "plnd", plnd, target, "plnd",
                        {"membership_fraction": fraction, "lape_neurons": wanted})]


def random_neurons(lape_counts_per_layer: Sequence[int], intermediate_size: int, exclude: np.ndarray,
                   seed: int) -> np.ndarray:
    """`[L, I]` mask with LAPE's count in each layer, drawn uniformly from the neurons LAPE did not pick."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((len(lape_counts_per_layer), intermediate_size), bool)
    for layer, count in enumerate(lape_counts_per_layer):
        pool = np.flatnonzero(~exclude[layer])
        mask[layer, rng.choice(pool, size=int(count), replace=False)] = True
    return mask


def random_mask(context: Context, target: str, seed: int) -> np.ndarray:
    """Seed `seed`'s random draw for `target`: LAPE's count per layer, none of LAPE's neurons."""
    lape_mask = context.lape.mask([target])
    return random_neurons(lape_mask.sum(axis=1), lape_mask.shape[1], lape_mask, seed=RANDOM_NEURON_SEED + seed)


def build_random(context: Context, target: str, seed: int) -> list[Arm]:
    from seallm_jax.lsn.neurons import NeuronSet

    neuron_seed = RANDOM_NEURON_SEED + seed
    neuron_set = NeuronSet.from_masks("random", {target: random_mask(context, target, seed)},
                                      hidden_size=context.hidden_size, num_parameters=context.num_parameters,
                                      config={"seed": neuron_seed})
    return [_neuron_arm(context, "random", "random", neuron_set, target, f"random_s{seed}", {"seed": neuron_seed})]


def build_full(context: Context, target: str, seed: int) -> list[Arm]:
    return [Arm("full", "full", "full", {}, trainable_parameters=context.num_parameters)]


def build_lora(context: Context, target: str, seed: int) -> list[Arm]:
    """LoRA at the rank whose trainable count is closest to LAPE's, and at `lora_larger_factor` x that rank
    (a factor of 0 or 1: the matched rank only)."""
    from seallm_jax import lora

    targets = tuple(context.settings.lora_targets)
    budget = int(context.lape.mask([target]).sum()) * len(context.settings.matrices) * context.hidden_size
    rank = lora.rank_for_budget(context.abstract_params, budget, targets)
    arms = []
    factor = int(context.settings.lora_larger_factor)
    for r in dict.fromkeys((rank, rank * factor) if factor > 1 else (rank,)):
        settings = lora.LoraSettings(rank=r, targets=targets)
        arms.append(Arm("lora", f"lora_r{r}", "lora", {"lora": {"rank": r, "alpha": 0.0, "targets": list(targets)}},
                        trainable_parameters=lora.trainable_count(context.abstract_params, settings),
                        details={"rank": r, "alpha": settings.scale * r, "targets": list(targets),
                                 "closest_to_lape": r == rank, "position": len(arms)}))
    return arms


ArmBuilder = Callable[[Context, str, int], list[Arm]]
ARM_BUILDERS: dict[str, ArmBuilder] = {"lape": build_lape, "plnd": build_plnd, "random": build_random,
                                       "full": build_full, "lora": build_lora}
if tuple(ARM_BUILDERS) != DEFAULT_ARMS:  # settings checks arm names against DEFAULT_ARMS
    raise ImportError(f"ARM_BUILDERS {tuple(ARM_BUILDERS)} and settings.DEFAULT_ARMS {DEFAULT_ARMS} differ")
