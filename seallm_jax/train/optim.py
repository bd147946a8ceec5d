"""The optimizer: AdamW with warmup + cosine/linear decay and global-norm clipping, all optax.

`build_optimizer(config, wrapper)` is the one place an optimizer is made. Training methods that change
what trains (LSN's neuron mask, LoRA) join from outside through an `OptimizerWrapper`, the way
levanter's LoRA joins its trainer: the engine knows neither. The `seallm-jax train` command picks the
wrapper `config.lsn` / `config.lora` ask for (`train.cli.optimizer_wrapper_for`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import ml_collections
import optax

from seallm_jax.errors import ConfigError
from seallm_jax.trees import path_names

# Parameters whose last path element is one of these get no weight decay: norms' scales and biases
# are few, not matrices, and decaying them pulls the model towards zero activations / no offset
# instead of regularising (the GPT-3/Llama convention). Embeddings and kernels are decayed.
NO_DECAY_LEAF_NAMES = frozenset({"scale", "bias"})


@dataclasses.dataclass(frozen=True)
class OptimizerWrapper:
    """A training method joining the engine from outside: `wrap(optimizer, config)` returns the
    optimizer to train with (it sees the finished chain, so its mask also covers weight decay and
    clipping); `describe(config, abstract_params)`, if given, is the line the loop prints at the start;
    `check(config)`, if given, checks the method's inputs before a run starts (`check_run_inputs`);
    `trainable(config)`, if given, may return a `TrainableView`: the train step then differentiates only
    that part of the parameters."""

    wrap: Callable[[optax.GradientTransformation, ml_collections.ConfigDict], optax.GradientTransformation]
    describe: Callable[[ml_collections.ConfigDict, Any], str] | None = None
    check: Callable[[ml_collections.ConfigDict], None] | None = None
    trainable: Callable[[ml_collections.ConfigDict], "TrainableView | None"] | None = None

    def __call__(self, optimizer: optax.GradientTransformation,
                 config: ml_collections.ConfigDict) -> optax.GradientTransformation:
        return self.wrap(optimizer, config)


class TrainableView(Protocol):
    """The part of the parameters a method trains, for a step that differentiates only that part (e.g. the
    selected neurons of lean LSN training): no gradient, optimizer state or weight-gradient matmul of the
    frozen rest. `gather(params)` is the trainable tree; `model_kwargs(trainable)` are the extra model
    arguments through which it enters the forward pass (the forward pass must be unchanged by them);
    `scatter(params, trainable)` writes it back. The optimizer's `update` is then called with the trainable
    tree's gradients and values and `trainable_only=True`."""

    def gather(self, params: Any) -> Any: ...

    def scatter(self, params: Any, trainable: Any) -> Any: ...

    def model_kwargs(self, trainable: Any) -> dict[str, Any]: ...


def requested_wrapper(config: ml_collections.ConfigDict) -> str | None:
    """The config section that asks for an optimizer wrapper ('lsn' or 'lora'), or None."""
    lsn, lora = config.get("lsn"), config.get("lora")
    use_lsn = lsn is not None and bool(lsn.get("neurons"))
    use_lora = lora is not None and int(lora.get("rank", 0) or 0) > 0
    if use_lsn and use_lora:
        raise ConfigError("config.lora.rank and config.lsn.neurons are both set: train LoRA adapters or "
                          "language-specific neurons, not both")
    return "lsn" if use_lsn else "lora" if use_lora else None


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
    def decays(key_path: tuple[Any, ...], _leaf: Any) -> bool:
        return path_names(key_path)[-1] not in NO_DECAY_LEAF_NAMES
    return jax.tree_util.tree_map_with_path(decays, params)


def build_optimizer(config: ml_collections.ConfigDict, wrapper: OptimizerWrapper | Callable | None = None
                    ) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(schedule), then `wrapper(optimizer, config)` if given.

    `wrapper` is an `OptimizerWrapper` (`seallm_jax.lsn.optim.WRAPPER` trains only the neurons of
    `config.lsn`, `seallm_jax.lora.WRAPPER` the adapters of `config.lora`) or any such callable.
    """
    asked = requested_wrapper(config)
    if asked and wrapper is None:  # never train the whole model when the config asks for less
        module = {"lsn": "seallm_jax.lsn.optim", "lora": "seallm_jax.lora"}[asked]
        raise ConfigError(f"config.{asked} asks for {asked.upper()} training, which joins the engine through its "
                          f"optimizer wrapper: pass {module}.WRAPPER (as `train(config, workdir, "
                          f"optimizer_wrapper=...)`; the `seallm-jax train` command does this)")
    opt = config.optimizer
    if opt.name != "adamw":
        raise ConfigError(f"config.optimizer.name={opt.name!r}: only 'adamw' is implemented")
    chain = []
    if float(opt.max_grad_norm) > 0:
        chain.append(optax.clip_by_global_norm(float(opt.max_grad_norm)))
    chain.append(optax.adamw(build_schedule(config), b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps),
                             weight_decay=float(opt.weight_decay), mask=weight_decay_mask))
    optimizer = optax.chain(*chain)
    if wrapper is not None:
        optimizer = wrapper(optimizer, config)
    return optimizer
