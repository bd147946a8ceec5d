"""Next-token cross-entropy and z-loss, whole or one chunk of positions at a time.

`chunked_cross_entropy_loss` is the training loss without full logits: for one chunk of positions
at a time it computes the LM head, the log-sum-exp, the target logit *and already the chunk's
gradients* (with respect to the hidden states and to the head's weight), under one
`jax.custom_vjp`. Neither pass ever holds float32 logits for more than `chunk_tokens` tokens, and
the head costs three matmuls per token (logits, hidden gradient, weight gradient) -- the same as
full logits, where recomputing each chunk's logits in the backward (`jax.checkpoint`) would cost
four. The result equals `cross_entropy_sums` on the full logits up to float32 summation order.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seallm_jax.model.qwen2 import LMHead, head_logits

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


def chunked_cross_entropy_loss(
    hidden: Array, head: LMHead, targets: Array, loss_mask: Array,
    *, z_loss_weight: float = 0.0, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[Array, tuple[Array, Array]]:
    """`(ce_sum + z_loss_weight * z_sum, (ce_sum, z_sum))` of
    `cross_entropy_sums(head_logits(hidden, head), targets, loss_mask)` without the full logits.

    hidden: [batch, length, embed] (the final-norm output); head: `Qwen2ForCausalLM.head()` (tied or
    untied; its weight receives its gradient). Only the first result is differentiable;
    `(ce_sum, z_sum)` are metrics (their gradient is zero). Chunks run along the length axis over
    every row, so each chunk keeps the batch's sharding; a chunk is `ceil(chunk_tokens / batch)`
    positions, and a length that is not a multiple is padded with masked-out positions.
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

    objective, ce_sum, z_sum = _fused_loss(float(z_loss_weight), head.vocab_first, by_chunk(hidden),
                                           by_chunk(targets), by_chunk(loss_mask.astype(jnp.float32)), head.weight)
    return objective, (jax.lax.stop_gradient(ce_sum), jax.lax.stop_gradient(z_sum))


def _chunk_terms(logits: Array, targets: Array, mask: Array) -> tuple[Array, Array, Array]:
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z, jnp.sum((log_z - target_logit) * mask), jnp.sum(jnp.square(log_z) * mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_loss(z_loss_weight, vocab_first, hidden_chunks, target_chunks, mask_chunks, weight):
    head = LMHead(weight, vocab_first)

    def one_chunk(totals, chunk):
        hidden, targets, mask = chunk
        _, ce, z = _chunk_terms(head_logits(hidden, head), targets, mask)
        return (totals[0] + ce, totals[1] + z), None

    zero = jnp.zeros((), jnp.float32)
    (ce_sum, z_sum), _ = jax.lax.scan(one_chunk, (zero, zero), (hidden_chunks, target_chunks, mask_chunks))
    return ce_sum + z_loss_weight * z_sum, ce_sum, z_sum


def _fused_loss_forward(z_loss_weight, vocab_first, hidden_chunks, target_chunks, mask_chunks, weight):
    """The loss and, chunk by chunk, its gradient: d objective / d logits = mask * (softmax * (1 + 2 w
    log Z) - onehot(target)), then d hidden = d logits @ head^T per chunk and d head = hidden^T @
    d logits summed over chunks in float32. Written out rather than through `jax.vjp` of the head:
    the transposed dot of the VJP materialised a transposed copy of each chunk's d logits (25 s
    against 20 s for the loss of 4096 tokens at Qwen2's vocabulary on CPU)."""
    head = LMHead(weight, vocab_first)
    dtype = weight.dtype

    def one_chunk(carry, chunk):
        ce_total, z_total, weight_grad = carry
        hidden, targets, mask = chunk
        logits = head_logits(hidden, head)
        log_z, ce, z = _chunk_terms(logits, targets, mask)
        scale = mask * (1.0 + 2.0 * z_loss_weight * log_z)
        is_target = jnp.arange(logits.shape[-1]) == targets[..., None]
        d_logits = jnp.exp(logits - log_z[..., None]) * scale[..., None] - jnp.where(is_target, mask[..., None], 0.0)
        d_logits, hidden = d_logits.astype(dtype), hidden.astype(dtype)
        if vocab_first:
            d_hidden = jnp.einsum("blv,ve->ble", d_logits, weight)
            d_weight = jnp.einsum("blv,ble->ve", d_logits, hidden, preferred_element_type=jnp.float32)
        else:
            d_hidden = jnp.einsum("blv,ev->ble", d_logits, weight)
            d_weight = jnp.einsum("ble,blv->ev", hidden, d_logits, preferred_element_type=jnp.float32)
        return (ce_total + ce, z_total + z, weight_grad + d_weight), d_hidden

    zero = jnp.zeros((), jnp.float32)
    (ce_sum, z_sum, weight_grad), hidden_grads = jax.lax.scan(
        one_chunk, (zero, zero, jnp.zeros(weight.shape, jnp.float32)), (hidden_chunks, target_chunks, mask_chunks))
    objective = ce_sum + z_loss_weight * z_sum
    return (objective, ce_sum, z_sum), (hidden_grads.astype(hidden_chunks.dtype), weight_grad.astype(dtype))


def _fused_loss_backward(z_loss_weight, vocab_first, residuals, cotangents):
    hidden_grads, weight_grad = residuals
    d_objective = cotangents[0]  # ce_sum and z_sum leave through stop_gradient: their cotangents are zero
    return ((d_objective * hidden_grads).astype(hidden_grads.dtype), None, None,
            (d_objective * weight_grad).astype(weight_grad.dtype))


_fused_loss.defvjp(_fused_loss_forward, _fused_loss_backward)
