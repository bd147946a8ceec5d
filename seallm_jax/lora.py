"""LoRA as an optimizer: low-rank adapters trained through the full-weight gradient, always merged.

`W = W0 + (alpha / rank) * A @ B` for each target kernel (`A: [in, rank]`, `B: [rank, out]`, Flax `[in, out]`
layout). The adapters live in the optimizer state; the model's parameters are the merged weights at every
step, so training, checkpoints, resume and the Hugging Face export need nothing LoRA-specific (the export is
the merged model). Given the gradient G of a target kernel, the chain rule gives the adapters' gradients
exactly (`dA = s G B^T`, `dB = s A^T G`), so this is LoRA, not an approximation of it; only the target
kernels change, by `s (A' B' - A B)`, and every other parameter is bit-identical to the start.

It joins the training engine from outside, as the LSN mask does: `train(config, workdir,
optimizer_wrapper=lora.WRAPPER)` with `config.lora.rank > 0` (the `seallm-jax train` command passes it).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from seallm_jax.errors import ConfigError
from seallm_jax.train.optim import OptimizerWrapper
from seallm_jax.trees import Path, get_path, path_names

Params = Mapping[str, Any]

# Projection name -> its kernel's path in the stacked parameter tree ([layers, in, out]).
TARGET_PATHS: dict[str, Path] = {
    "q_proj": ("model", "layers", "self_attn", "q_proj", "kernel"),
    "k_proj": ("model", "layers", "self_attn", "k_proj", "kernel"),
    "v_proj": ("model", "layers", "self_attn", "v_proj", "kernel"),
    "o_proj": ("model", "layers", "self_attn", "o_proj", "kernel"),
    "gate_proj": ("model", "layers", "mlp", "gate_proj", "kernel"),
    "up_proj": ("model", "layers", "mlp", "up_proj", "kernel"),
    "down_proj": ("model", "layers", "mlp", "down_proj", "kernel"),
}
DEFAULT_TARGETS = tuple(TARGET_PATHS)  # every linear layer of the decoder ("all-linear")
FROZEN_UPDATE = -0.0  # x + -0.0 == x bit for bit (also for x = -0.0)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float = 0.0  # 0: 2 x rank (scale 2)
    targets: tuple[str, ...] = DEFAULT_TARGETS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"config.lora.rank={self.rank}: must be a positive integer")
        unknown = [t for t in self.targets if t not in TARGET_PATHS]
        if unknown or not self.targets:
            raise ConfigError(f"config.lora.targets={list(self.targets)}: expected a non-empty subset of "
                              f"{list(TARGET_PATHS)}")

    @property
    def scale(self) -> float:
        return float(self.alpha or 2.0 * self.rank) / float(self.rank)

    @classmethod
    def from_config(cls, config: Any) -> "LoraSettings":
        lora = config.lora
        targets = lora.get("targets") or DEFAULT_TARGETS
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        return cls(rank=int(lora.rank), alpha=float(lora.get("alpha") or 0.0), targets=tuple(targets), seed=int(config.train.seed))


class LoraState(NamedTuple):
    adapters: Any  # {projection: {"a": [L, in, r], "b": [L, r, out]}}
    inner: Any     # the wrapped optimizer's state, over the adapters


def _check(params: Params, settings: LoraSettings) -> None:
    for target in settings.targets:
        try:
            shape = get_path(params, TARGET_PATHS[target]).shape
        except (KeyError, TypeError):
            raise ConfigError(f"config.lora.targets: the model has no {'/'.join(TARGET_PATHS[target])}") from None
        if len(shape) != 3:
            raise ConfigError(f"LoRA: {'/'.join(TARGET_PATHS[target])} has shape {tuple(shape)}, expected "
                              "[layers, in, out]")


def init_adapters(params: Params, settings: LoraSettings) -> dict[str, dict[str, jax.Array]]:
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default), B = 0: the merged model starts as the base model."""
    _check(params, settings)
    key = jax.random.PRNGKey(settings.seed)
    adapters = {}
    for index, target in enumerate(settings.targets):
        kernel = get_path(params, TARGET_PATHS[target])
        layers, fan_in, fan_out = kernel.shape
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(jax.random.fold_in(key, index), (layers, fan_in, settings.rank), jnp.float32,
                               -bound, bound)
        adapters[target] = {"a": a.astype(kernel.dtype), "b": jnp.zeros((layers, settings.rank, fan_out), kernel.dtype)}
    return adapters


def delta(adapters: Mapping[str, Mapping[str, jax.Array]], scale: float) -> dict[str, jax.Array]:
    """{projection: s * A @ B} per layer, `[L, in, out]`."""
    return {t: scale * jnp.einsum("lir,lro->lio", ab["a"], ab["b"]) for t, ab in adapters.items()}


def merge(base_params: Params, adapters: Mapping[str, Mapping[str, jax.Array]], settings: LoraSettings) -> Any:
    """`base_params` with `s A B` added to each target kernel (what training keeps in its parameters)."""
    by_path = {TARGET_PATHS[t]: d for t, d in delta(adapters, settings.scale).items()}

    def one(key_path, leaf):
        d = by_path.get(path_names(key_path))
        return leaf if d is None else leaf + d.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(one, base_params)


def lora(inner: optax.GradientTransformation, settings: LoraSettings) -> optax.GradientTransformation:
    """Train rank-`settings.rank` adapters of the target kernels with `inner`; updates are parameter-shaped."""
    paths = {TARGET_PATHS[t]: t for t in settings.targets}
    scale = settings.scale

    def init(params):
        adapters = init_adapters(params, settings)
        return LoraState(adapters=adapters, inner=inner.init(adapters))

    def update(updates, state, params=None, **extra):
        adapters = state.adapters
        grads = {}
        for target, ab in adapters.items():
            g = get_path(updates, TARGET_PATHS[target]).astype(ab["a"].dtype)  # dL/dW, [L, in, out]
            grads[target] = {"a": scale * jnp.einsum("lio,lro->lir", g, ab["b"]),
                             "b": scale * jnp.einsum("lir,lio->lro", ab["a"], g)}
        adapter_updates, inner_state = inner.update(grads, state.inner, adapters, **extra)
        new_adapters = optax.apply_updates(adapters, adapter_updates)
        old, new = delta(adapters, scale), delta(new_adapters, scale)

        def one(key_path, leaf):
            target = paths.get(path_names(key_path))
            if target is None:
                return jnp.full(leaf.shape, FROZEN_UPDATE, leaf.dtype)
            return (new[target] - old[target]).astype(leaf.dtype)

        return jax.tree_util.tree_map_with_path(one, updates), LoraState(new_adapters, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def wrap(optimizer: optax.GradientTransformation, config: Any) -> optax.GradientTransformation:
    """LoRA per `config.lora` (rank, alpha, targets) around `optimizer` (`WRAPPER` joins it to training)."""
    return lora(optimizer, LoraSettings.from_config(config))


def describe(config: Any, params: Params) -> str:
    """The line the training loop prints at the start of LoRA training."""
    settings = LoraSettings.from_config(config)
    trainable, total = trainable_count(params, settings), sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return (f"LoRA: training {trainable:,} adapter parameters (rank {settings.rank}, {'/'.join(settings.targets)}), "
            f"{100 * trainable / total:.4f}% of the model's {total:,}; the other parameters stay bit-identical")


def adapters_of(opt_state: Any) -> Any:
    """The adapters inside a (possibly nested) optimizer state built by `lora` (e.g. a restored checkpoint)."""
    found = []

    def visit(node):
        if isinstance(node, LoraState):
            found.append(node.adapters)
        elif isinstance(node, (tuple, list)):
            for child in node:
                visit(child)
        elif isinstance(node, Mapping):
            if "adapters" in node and "inner" in node:
                found.append(node["adapters"])
            else:
                for child in node.values():
                    visit(child)

    visit(opt_state)
    if not found:
        raise ValueError("the optimizer state holds no LoRA adapters")
    return found[0]


def trainable_count(params: Params, settings: LoraSettings) -> int:
    """Trainable elements: `rank * (in + out)` per target kernel and layer."""
    total = 0
    for target in settings.targets:
        layers, fan_in, fan_out = get_path(params, TARGET_PATHS[target]).shape
        total += layers * settings.rank * (fan_in + fan_out)
    return total


def rank_for_budget(params: Params, budget: int, targets: Sequence[str] = DEFAULT_TARGETS) -> int:
    """The rank whose trainable count is closest to `budget` elements (at least 1)."""
    per_rank = trainable_count(params, LoraSettings(rank=1, targets=tuple(targets)))
    return max(1, int(round(budget / per_rank)))


# How LoRA joins the training engine: `train(config, workdir, optimizer_wrapper=WRAPPER)`.
WRAPPER = OptimizerWrapper(wrap=wrap, describe=describe)
