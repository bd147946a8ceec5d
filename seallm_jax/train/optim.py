"""The optimizer: AdamW with warmup + cosine/linear decay and global-norm clipping, all optax.

`build_optimizer(config)` is the one place an optimizer is made; LSN training wraps it (see below).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import optax

from seallm_jax.errors import ConfigError

# Parameters whose last path element is one of these get no weight decay: norms' scales and biases
# are few, not matrices, and decaying them pulls the model towards zero activations / no offset
# instead of regularising (the GPT-3/Llama convention). Embeddings and kernels are decayed.
NO_DECAY_LEAF_NAMES = frozenset({"scale", "bias"})

OptimizerWrapper = Callable[[optax.GradientTransformation, ml_collections.ConfigDict], optax.GradientTransformation]


def build_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate by step: linear warmup from 0, then cosine or linear decay to `end_lr_ratio` x peak.

    Reads `config.optimizer.{learning_rate, warmup_steps, schedule, end_lr_ratio}` and, for the decay
    length, `config.optimizer.decay_steps` (0: `config.train.steps`).
    """
    opt = config.optimizer
    peak = float(opt.learning_rate)
    warmup = int(opt.warmup_steps)
    total = int(opt.get("decay_steps", 0) or config.train.steps)
    end = peak * float(opt.end_lr_ratio)
    kind = opt.schedule
    if kind == "constant":
        decay = optax.constant_schedule(peak)
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(peak, max(total - warmup, 1), alpha=float(opt.end_lr_ratio))
    elif kind == "linear":
        decay = optax.linear_schedule(peak, end, max(total - warmup, 1))
    else:
        raise ConfigError(f"config.optimizer.schedule={kind!r}: expected 'cosine', 'linear' or 'constant'")
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(params: Mapping[str, Any]) -> Any:
    """True where weight decay applies: every parameter except norm scales and biases."""
    def decays(path: tuple[Any, ...], _leaf: Any) -> bool:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", last))
        return str(name) not in NO_DECAY_LEAF_NAMES
    return jax.tree_util.tree_map_with_path(decays, params)


def build_optimizer(config: ml_collections.ConfigDict,
                    wrapper: OptimizerWrapper | None = None) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(schedule), then the LSN mask when `config.lsn.neurons` is set.

    Hooks, applied to the finished chain (so masking also covers weight decay):
      * `config.lsn.neurons` non-empty: `seallm_jax.lsn.optim.masked(optimizer, config)`.
      * `config.lora.rank` > 0: `seallm_jax.lora.wrap(optimizer, config)` (adapters in the optimizer state).
      * `wrapper(optimizer, config)`: any caller-supplied wrapper (applied last).
    """
    opt = config.optimizer
    if opt.name != "adamw":
        raise ConfigError(f"config.optimizer.name={opt.name!r}: only 'adamw' is implemented")
    chain = []
    if float(opt.max_grad_norm) > 0:
        chain.append(optax.clip_by_global_norm(float(opt.max_grad_norm)))
    chain.append(optax.adamw(build_schedule(config), b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps),
                             weight_decay=float(opt.weight_decay), mask=weight_decay_mask))
    optimizer = optax.chain(*chain)
    lsn = config.get("lsn")
    if lsn is not None and lsn.get("neurons"):
        lsn_optim = importlib.import_module("seallm_jax.lsn.optim")
        optimizer = lsn_optim.masked(optimizer, config)
    lora = config.get("lora")
    if lora is not None and int(lora.get("rank", 0) or 0) > 0:
        optimizer = importlib.import_module("seallm_jax.lora").wrap(optimizer, config)
    if wrapper is not None:
        optimizer = wrapper(optimizer, config)
    return optimizer
