"""Next-token cross-entropy and z-loss, whole or one chunk of positions at a time.

`chunked_cross_entropy_sums` computes the LM head, the log-sum-exp and the target logit for one
chunk of positions at a time under `jax.checkpoint`, so neither the forward nor the backward ever
holds float32 logits for more than `chunk_tokens` tokens; the result equals `cross_entropy_sums` on
the full logits up to float32 summation order.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
# Tokens whose float32 logits exist at once in the chunked loss: 1024 x 151936 x 4 B = 0.6 GB for
# the Qwen2 vocabulary (global; split over the devices the batch is split over).
DEFAULT_CHUNK_TOKENS = 1024


def cross_entropy_sums(logits: Array, targets: Array, loss_mask: Array) -> tuple[Array, Array]:
    """Masked sums of token cross-entropy and of log(Z)^2 (z-loss), both float32 scalars.

    logits: float [batch, length, vocab]; targets: int32 [batch, length]; loss_mask: [batch, length].
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    mask = loss_mask.astype(jnp.float32)
    return jnp.sum((log_z - target_logit) * mask), jnp.sum(jnp.square(log_z) * mask)


def chunked_cross_entropy_sums(
    hidden: Array, logits_fn: Callable[[Array], Array], targets: Array, loss_mask: Array,
    *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[Array, Array]:
    """`cross_entropy_sums(logits_fn(hidden), targets, loss_mask)` without the full logits.

    hidden: [batch, length, embed] (the final-norm output); logits_fn: the LM head, [batch, chunk,
    embed] -> float32 [batch, chunk, vocab] (`Qwen2ForCausalLM.logits`: tied or untied, whatever
    the model is). Chunks run along the length axis over every row, so each chunk keeps the batch's
    sharding; a chunk is `ceil(chunk_tokens / batch)` positions, and a length that is not a multiple
    is padded with masked-out positions. The backward recomputes each chunk's logits.
    """
    batch, length, _ = hidden.shape
    chunk_length = min(length, max(1, -(-chunk_tokens // batch)))
    padded = -(-length // chunk_length) * chunk_length
    if padded != length:
        extra = padded - length
        hidden = jnp.pad(hidden, ((0, 0), (0, extra), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, extra)))
        loss_mask = jnp.pad(loss_mask, ((0, 0), (0, extra)))
    num_chunks = padded // chunk_length

    def by_chunk(x: Array) -> Array:  # [batch, length, ...] -> [chunks, batch, chunk_length, ...]
        return jnp.moveaxis(x.reshape(batch, num_chunks, chunk_length, *x.shape[2:]), 1, 0)

    @jax.checkpoint  # save only the chunk's inputs; its logits are recomputed in the backward
    def chunk_sums(hidden_chunk: Array, targets_chunk: Array, mask_chunk: Array) -> tuple[Array, Array]:
        return cross_entropy_sums(logits_fn(hidden_chunk), targets_chunk, mask_chunk)

    def accumulate(totals, chunk):
        ce, z = chunk_sums(*chunk)
        return (totals[0] + ce, totals[1] + z), None

    zero = jnp.zeros((), jnp.float32)
    (ce_sum, z_sum), _ = jax.lax.scan(accumulate, (zero, zero), (by_chunk(hidden), by_chunk(targets), by_chunk(loss_mask)))
    return ce_sum, z_sum
