"""The one evaluator: summed next-token log-likelihood of packed, sharded batches.

Everything that scores text uses it — training's held-out loss (`Trainer.eval_step`), `lsn ablate` and
the demo (perplexity with some neurons switched off through `ffn_gate_scale`), `lsn compare`, and the
eval harness's scorers (`eval.scoring.LoglikelihoodScorer`, per-request sums on top of it):

    log_likelihood_sums(model, batch)   # traced: per-row sums, inside any jit
    Evaluator(model, mesh).loss(batches, gate_scale)   # host side: placement, one compile per shape

A batch is the training batch format: `input_ids`, `targets`, `loss_mask` and `segment_ids` [rows,
length] (`positions` optional: they restart in every segment). The LM head runs `chunk_tokens` tokens at
a time, so float32 logits never exist for the whole batch.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from seallm_jax import sharding as shd
from seallm_jax.errors import DataFormatError
from seallm_jax.train.loss import DEFAULT_CHUNK_TOKENS

Array = jax.Array
Batch = Mapping[str, Any]
BATCH_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids")


def log_likelihood_sums(model: nnx.Module, batch: Batch, *, gate_scale: Array | None = None,
                        chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> dict[str, Array]:
    """Per row of `batch`: `log_likelihood` (float32 sum of log p(target) where `loss_mask` is 1),
    `target_tokens` (that mask's sum) and `all_greedy` (every masked target is its position's argmax).

    `gate_scale` [layers, intermediate] multiplies silu(gate) (0 switches a neuron off, for ablation).
    """
    hidden, _ = model.hidden_states(batch["input_ids"], positions=batch.get("positions"),
                                    segment_ids=batch["segment_ids"], ffn_gate_scale=gate_scale)
    rows, length, _ = hidden.shape
    chunk = min(length, max(1, -(-chunk_tokens // rows)))
    padded = -(-length // chunk) * chunk
    mask = batch["loss_mask"].astype(jnp.float32)
    targets = batch["targets"]
    if padded != length:
        extra = ((0, 0), (0, padded - length))
        hidden = jnp.pad(hidden, extra + ((0, 0),))
        targets, mask = jnp.pad(targets, extra), jnp.pad(mask, extra)

    def by_chunk(x: Array) -> Array:  # [rows, padded, ...] -> [chunks, rows, chunk, ...]
        return jnp.moveaxis(x.reshape(rows, padded // chunk, chunk, *x.shape[2:]), 1, 0)

    def one_chunk(inputs: tuple[Array, Array, Array]) -> tuple[Array, Array]:
        hidden_chunk, target_chunk, mask_chunk = inputs
        logits = model.logits(hidden_chunk)  # float32 [rows, chunk, vocab]
        target_logit = jnp.take_along_axis(logits, target_chunk[..., None], axis=-1)[..., 0]
        log_p = target_logit - jax.nn.logsumexp(logits, axis=-1)
        missed = (jnp.argmax(logits, axis=-1) != target_chunk) & (mask_chunk > 0)
        return jnp.sum(log_p * mask_chunk, axis=1), jnp.any(missed, axis=1)

    log_likelihood, missed = jax.lax.map(one_chunk, (by_chunk(hidden), by_chunk(targets), by_chunk(mask)))
    return {"log_likelihood": jnp.sum(log_likelihood, axis=0), "target_tokens": jnp.sum(mask, axis=1),
            "all_greedy": ~jnp.any(missed, axis=0)}


class Evaluator:
    """`log_likelihood_sums` of host (numpy) batches for one model, jitted once per batch shape.

    With a `mesh`, the parameters are placed as training places them (`sharding.place_params`: FSDP /
    tensor by their logical axes) and each batch's rows are split over the batch axes; every process
    passes its own rows. `compile_count` counts the programs traced so far.
    """

    def __init__(self, model: nnx.Module, mesh: Mesh | None = None, *,
                 rules: shd.Rules = shd.DEFAULT_LOGICAL_AXIS_RULES, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
        self.config = model.config
        self.mesh, self.rules, self.chunk_tokens = mesh, rules, int(chunk_tokens)
        self.graphdef, params = nnx.split(model, nnx.Param)
        params = params.to_pure_dict()
        self.params = shd.place_params(params, mesh, rules) if mesh is not None else params
        # Rows of a global batch must be a multiple of this (the devices the batch is split over).
        self.batch_divisor = shd.batch_shard_count(mesh, rules) if mesh is not None else 1
        self.compile_count = 0
        out_shardings = shd.replicated(mesh) if mesh is not None else None
        self._sums = jax.jit(self._traced_sums, out_shardings=out_shardings)

    def _traced_sums(self, params: Any, batch: Batch, gate_scale: Array | None) -> dict[str, Array]:
        self.compile_count += 1  # runs only while tracing
        model = nnx.merge(self.graphdef, params)
        if self.mesh is None:
            return log_likelihood_sums(model, batch, gate_scale=gate_scale, chunk_tokens=self.chunk_tokens)
        with shd.activation_sharding(self.mesh, self.rules):
            return log_likelihood_sums(model, batch, gate_scale=gate_scale, chunk_tokens=self.chunk_tokens)

    def put(self, batch: Batch) -> dict[str, Array]:
        """This process's rows of a batch onto the devices (the global batch, with a mesh)."""
        dtypes = {"loss_mask": np.float32}
        keys = BATCH_KEYS + (("positions",) if "positions" in batch else ())
        missing = [key for key in BATCH_KEYS if key not in batch]
        if missing:
            raise DataFormatError(f"an evaluation batch needs {list(BATCH_KEYS)}; this one lacks {missing}")
        arrays = {key: np.asarray(batch[key], dtypes.get(key, np.int32)) for key in keys}
        if self.mesh is None:
            return {key: jnp.asarray(value) for key, value in arrays.items()}
        rows = arrays["input_ids"].shape[0] * jax.process_count()
        if rows % self.batch_divisor:
            raise DataFormatError(f"a global batch of {rows} rows does not split over the {self.batch_divisor} "
                                  f"devices the batch is sharded over (mesh {dict(self.mesh.shape)}); "
                                  f"use a multiple of {self.batch_divisor} rows")
        return shd.shard_batch(arrays, self.mesh, rows, self.rules)

    def row_sums(self, batch: Batch, gate_scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """`log_likelihood_sums` of one batch, as host arrays (every row of the global batch)."""
        scale = None if gate_scale is None else jnp.asarray(gate_scale, jnp.float32)
        return jax.device_get(self._sums(self.params, self.put(batch), scale))

    def loss(self, batches: Sequence[Batch], gate_scale: np.ndarray | None = None) -> tuple[float, int]:
        """(mean token cross-entropy, target tokens) over `batches`; exp of the first is the perplexity."""
        scale = None if gate_scale is None else jnp.asarray(gate_scale, jnp.float32)
        results = [self._sums(self.params, self.put(batch), scale) for batch in batches]  # dispatched async
        log_likelihood = sum(float(np.sum(r["log_likelihood"])) for r in results)
        tokens = int(sum(float(np.sum(r["target_tokens"])) for r in results))
        if tokens == 0:
            raise DataFormatError("no target tokens to evaluate (all loss_mask entries are 0): the text is empty")
        return -log_likelihood / tokens, tokens
