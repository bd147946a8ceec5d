"""Train state, loss and the jitted, sharded train/eval steps.

The loss is next-token cross-entropy normalised by the number of target tokens in the global batch,
so it does not depend on the mesh, the number of processes or the micro-batch split.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from seallm_jax import sharding as shd
from seallm_jax.errors import ConfigError
from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM, attention
from seallm_jax.train.evaluate import log_likelihood_sums
from seallm_jax.train.loss import DEFAULT_CHUNK_TOKENS, chunked_cross_entropy_loss, cross_entropy_sums
from seallm_jax.train.optim import TrainableView

__all__ = ["BATCH_KEYS", "StepSettings", "TrainState", "Trainer", "cross_entropy_sums", "model_config_from"]

Batch = Mapping[str, jax.Array]
BATCH_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: optimizer steps taken
    params: Any              # nested dict of arrays (fp32 master weights)
    opt_state: Any           # optax state (mu/nu mirror params)
    rng: jax.Array           # uint32[2] raw key, folded with the step where randomness is needed


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What the step needs from config, as plain values (hashable: part of the jit closure).

    `loss_chunk_tokens` (`config.train.loss_chunk_tokens`): tokens whose float32 logits the loss
    holds at once (`chunked_cross_entropy_loss`); 0 computes the full [batch, length, vocab] logits.
    """
    micro_batches: int = 1
    z_loss_weight: float = 0.0
    loss_chunk_tokens: int = DEFAULT_CHUNK_TOKENS

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "StepSettings":
        chunk_tokens = config.train.get("loss_chunk_tokens", DEFAULT_CHUNK_TOKENS)
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 0:
            raise ConfigError(f"config.train.loss_chunk_tokens={chunk_tokens!r}: expected an integer >= 0 "
                              f"(0: full logits)")
        return cls(micro_batches=int(config.train.micro_batches), z_loss_weight=float(config.train.z_loss_weight),
                   loss_chunk_tokens=chunk_tokens)


def model_config_from(config: ml_collections.ConfigDict) -> Qwen2Config:
    """Qwen2Config from `config.model`; with `init_from` the architecture comes from its config.json."""
    fields = {k: v for k, v in config.model.to_dict().items() if k != "init_from"}
    init_from = config.model.get("init_from")
    if init_from:
        compute = {k: fields[k] for k in ("dtype", "param_dtype", "remat", "attention_impl", "attention_block_q",
                                          "attention_block_k", "scan_unroll") if k in fields}
        return Qwen2Config.from_hf(init_from, **compute)
    known = {f.name for f in dataclasses.fields(Qwen2Config)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"config.model has unknown fields {unknown}; Qwen2Config fields are {sorted(known)}")
    return Qwen2Config(**fields)


class Trainer:
    """Builds the sharded train state and the jitted train/eval steps for one config and mesh.

    With a `trainable` view (`train.optim.TrainableView`, e.g. lean LSN's `NeuronView`), the step
    differentiates only the view's part of the parameters and the optimizer updates only that part.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, optimizer: optax.GradientTransformation,
                 schedule: optax.Schedule, model_config: Qwen2Config | None = None,
                 trainable: TrainableView | None = None):
        self.trainable = trainable
        self.config = config
        self.mesh = mesh
        self.optimizer = optimizer
        self.schedule = schedule
        self.model_config = model_config or model_config_from(config)
        attention.check_platform(self.model_config.attention_impl, mesh.devices.flat[0].platform)
        self.settings = StepSettings.from_config(config)
        self.rules = tuple(tuple(rule) for rule in config.sharding.logical_axis_rules)
        self.global_batch_size = int(config.train.global_batch_size)
        if self.global_batch_size % self.settings.micro_batches:
            raise ConfigError(f"config.train.global_batch_size={self.global_batch_size} is not divisible by "
                             f"config.train.micro_batches={self.settings.micro_batches}")
        batch_shards = shd.batch_shard_count(mesh, self.rules)
        if self.global_batch_size % (batch_shards * self.settings.micro_batches):
            raise ConfigError(f"config.train.global_batch_size={self.global_batch_size} must be a multiple of "
                             f"micro_batches ({self.settings.micro_batches}) x the {batch_shards} devices the "
                             f"batch is split over (mesh {dict(mesh.shape)})")
        model = nnx.eval_shape(lambda: Qwen2ForCausalLM(self.model_config, rngs=nnx.Rngs(0)))
        self.graphdef, abstract_state = nnx.split(model, nnx.Param)
        self.abstract_params = abstract_state.to_pure_dict()
        self.param_shardings = shd.param_shardings(self.abstract_params, mesh, self.rules)
        abstract_opt = jax.eval_shape(optimizer.init, self.abstract_params)
        self.opt_shardings = shd.follow_param_shardings(abstract_opt, self.abstract_params,
                                                        self.param_shardings, mesh)
        rep = shd.replicated(mesh)
        self.state_shardings = TrainState(step=rep, params=self.param_shardings, opt_state=self.opt_shardings, rng=rep)
        self.abstract_state = TrainState(
            step=jax.ShapeDtypeStruct((), jnp.int32), params=self.abstract_params, opt_state=abstract_opt,
            rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
        self.batch_shardings = {key: shd.batch_sharding(mesh, self.rules, batch_size=self.global_batch_size)
                                for key in BATCH_KEYS}
        self._train_step = jax.jit(self._step, in_shardings=(self.state_shardings, self.batch_shardings),
                                   out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
        self._eval_step = jax.jit(self._eval, in_shardings=(self.param_shardings, self.batch_shardings),
                                  out_shardings=rep)

    # ---- state ----------------------------------------------------------------------------------------
    def init_state(self, seed: int, params: Any | None = None) -> TrainState:
        """Fresh state straight into its sharding; `params` (already on the mesh) replaces the random init."""
        def fresh(p: Any) -> TrainState:
            return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=self.optimizer.init(p),
                              rng=jax.random.PRNGKey(seed))

        if params is None:
            def init() -> TrainState:
                model = Qwen2ForCausalLM(self.model_config, rngs=nnx.Rngs(seed))
                return fresh(nnx.state(model, nnx.Param).to_pure_dict())
            return shd.init_sharded(init, lambda _abstract: self.state_shardings)
        return jax.jit(fresh, in_shardings=(self.param_shardings,), out_shardings=self.state_shardings)(params)

    # ---- loss -----------------------------------------------------------------------------------------
    def _loss_sums(self, params: Any, batch: Batch, model_kwargs: Mapping[str, Any] | None = None
                   ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """`(ce_sum + z_loss_weight * z_sum, (ce_sum, z_sum))` over `batch`'s target tokens; the
        first is what is differentiated."""
        model = nnx.merge(self.graphdef, params)
        kwargs = dict(model_kwargs or {})
        z_weight = self.settings.z_loss_weight
        if not self.settings.loss_chunk_tokens:
            logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"], **kwargs)
            ce_sum, z_sum = cross_entropy_sums(logits, batch["targets"], batch["loss_mask"])
            return ce_sum + z_weight * z_sum, (ce_sum, z_sum)
        hidden, _ = model.hidden_states(batch["input_ids"], positions=batch["positions"],
                                        segment_ids=batch["segment_ids"], **kwargs)
        return chunked_cross_entropy_loss(hidden, model.head(), batch["targets"], batch["loss_mask"],
                                          z_loss_weight=z_weight, chunk_tokens=self.settings.loss_chunk_tokens)

    def _loss_and_grads(self, params: Any, batch: Batch) -> tuple[dict[str, jax.Array], Any]:
        """Metrics and the gradient of the global-batch mean loss with respect to what trains: all of
        `params`, or the trainable view's tree (`params` then stay constants of the forward pass)."""
        num_tokens = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
        view, full_params = self.trainable, params

        def objective(p: Any, micro: Batch) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            if view is None:
                objective_sum, sums = self._loss_sums(p, micro)
            else:
                objective_sum, sums = self._loss_sums(full_params, micro, view.model_kwargs(p))
            # Divide by the global target-token count (not the micro-batch's): the accumulated
            # gradient is then exactly the gradient of the global-batch mean loss.
            return objective_sum / num_tokens, sums

        grad_fn = jax.grad(objective, has_aux=True)
        params = params if view is None else view.gather(params)  # what is differentiated (objective's p)
        n = self.settings.micro_batches
        if n == 1:
            grads, (ce_sum, z_sum) = grad_fn(params, batch)
        else:
            # Micro-batch i takes rows i, i+n, ... so every device keeps working on its own rows.
            def split(x: jax.Array) -> jax.Array:
                x = x.reshape(x.shape[0] // n, n, *x.shape[1:])
                return jnp.moveaxis(x, 1, 0)
            micro_batches = {k: split(v) for k, v in batch.items()}

            def accumulate(carry, micro):
                grads_sum, ce_acc, z_acc = carry
                g, (ce, z) = grad_fn(params, micro)
                grads_sum = jax.tree.map(lambda a, b: a + b.astype(a.dtype), grads_sum, g)
                return (grads_sum, ce_acc + ce, z_acc + z), None
            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            (grads, ce_sum, z_sum), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), jnp.float32(0)),
                                                      micro_batches)
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        metrics = {"loss": ce_sum / num_tokens, "z_loss": z_sum / num_tokens, "target_tokens": num_tokens}
        return metrics, grads

    def _step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        with shd.activation_sharding(self.mesh, self.rules):
            metrics, grads = self._loss_and_grads(state.params, batch)
        if self.trainable is None:
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        else:
            trained = self.trainable.gather(state.params)
            updates, opt_state = self.optimizer.update(grads, state.opt_state, trained, trainable_only=True)
            params = self.trainable.scatter(state.params, optax.apply_updates(trained, updates))
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["learning_rate"] = jnp.asarray(self.schedule(state.step), jnp.float32)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
        return new_state, metrics

    def _eval(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        chunk_tokens = self.settings.loss_chunk_tokens or batch["input_ids"].size
        with shd.activation_sharding(self.mesh, self.rules):
            sums = log_likelihood_sums(nnx.merge(self.graphdef, params), batch, chunk_tokens=chunk_tokens)
        return {"loss_sum": -jnp.sum(sums["log_likelihood"]), "target_tokens": jnp.sum(sums["target_tokens"])}

    # ---- public steps ---------------------------------------------------------------------------------
    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step on a global batch (donates `state`)."""
        return self._train_step(state, batch)

    def eval_step(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        """Summed cross-entropy and target-token count of one global batch (no update)."""
        return self._eval_step(params, batch)

    def lower_train_step(self, seq_len: int | None = None) -> jax.stages.Lowered:
        """The train step lowered for abstract inputs (`jax.ShapeDtypeStruct` with this mesh's
        shardings; nothing is allocated): `.compile().memory_analysis()` gives its memory, `.as_text()`
        the program. `seq_len` defaults to `config.train.seq_len`."""
        seq_len = int(seq_len or self.config.train.seq_len)
        def abstract(leaf: jax.ShapeDtypeStruct, sharding: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
        state = jax.tree.map(abstract, self.abstract_state, self.state_shardings)
        dtypes = {"loss_mask": jnp.float32}
        batch = {key: jax.ShapeDtypeStruct((self.global_batch_size, seq_len), dtypes.get(key, jnp.int32),
                                           sharding=self.batch_shardings[key]) for key in BATCH_KEYS}
        return self._train_step.lower(state, batch)

    def put_batch(self, local_batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """This process's rows (numpy) -> the global batch on the mesh."""
        missing = [k for k in BATCH_KEYS if k not in local_batch]
        if missing:
            raise KeyError(f"batch is missing {missing}; a batch needs {list(BATCH_KEYS)}")
        return shd.shard_batch({k: local_batch[k] for k in BATCH_KEYS}, self.mesh, self.global_batch_size,
                               self.rules)
