"""Causal self-attention kernels behind one dispatch: `causal_attention(q, k, v, segment_ids, ...)`.

`auto` (the default) picks `flash` for sequences longer than one key block, `xla` otherwise (one tile:
nothing to skip, and the dense kernel compiles faster); `xla` is the dense reference
(`jax.nn.dot_product_attention` with a [T, T] mask); `flash` is the blockwise kernel written here
(online softmax over key blocks, O(T) memory, forward and backward);
`cudnn` is cuDNN's fused kernel through `jax.nn.dot_product_attention` (GPU, bf16/fp16 only);
`splash` is the Pallas TPU splash-attention kernel (off TPU it runs in Pallas interpret mode, for tests).

Masking is the same everywhere: a token attends to earlier tokens of its own segment (packed
documents), and segment 0 (padding) attends only to padding, so every row has at least its own key.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from seallm_jax.errors import ConfigError
from seallm_jax.model.axes import active_mesh_specs
from seallm_jax.model.config import ATTENTION_IMPLEMENTATIONS

Array = jax.Array

# Finite "minus infinity": masked scores never produce inf - inf = NaN in the online softmax.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# Keys and queries added to round T up to a block multiple get this segment: no real token sees them.
_PAD_SEGMENT = -1


# The platform each kernel needs to run for real (`splash` runs elsewhere only in interpret mode).
REQUIRED_PLATFORM = {"cudnn": "gpu", "splash": "tpu"}


def check_platform(implementation: str, platform: str) -> None:
    """A `ConfigError` when `implementation` cannot run on `platform` ('cpu', 'gpu', 'tpu')."""
    needed = REQUIRED_PLATFORM.get(implementation)
    if needed is not None and platform != needed:
        raise ConfigError(f"model.attention_impl={implementation!r} runs on {needed.upper()} only, and this run's "
                          f"devices are {platform.upper()}: use attention_impl='flash' (any backend, packed "
                          f"segments, O(T) memory) or 'xla'")


def segment_causal_mask(query_segments: Array, key_segments: Array, query_offset: Array | int = 0) -> Array:
    """Boolean [batch, 1, queries, keys]: key j visible to query i iff j <= i + offset and same segment."""
    num_queries, num_keys = query_segments.shape[1], key_segments.shape[1]
    query_slot = query_offset + jnp.arange(num_queries)
    causal = jnp.arange(num_keys)[None, :] <= query_slot[:, None]
    same_segment = query_segments[:, :, None] == key_segments[:, None, :]
    return (causal[None] & same_segment)[:, None]


def resolve_implementation(implementation: str, length: int, block_k: int = 128) -> str:
    """The kernel `implementation` runs for a sequence of `length` tokens: `auto` is `flash` when the keys
    span more than one block of `block_k` (measured faster than `xla` on CPU from 256 tokens on, for
    training and inference, and O(T) in memory; docs/long_context.md), else `xla`."""
    if implementation == "auto":
        return "flash" if length > block_k else "xla"
    return implementation


def causal_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, *, implementation: str = "auto",
    block_q: int = 128, block_k: int = 128,
) -> Array:
    """Causal GQA self-attention within segments.

    q: [batch, length, heads, head_dim]; k, v: [batch, length, kv_heads, head_dim] (heads a multiple
    of kv_heads; query head n reads KV head n // (heads // kv_heads), as `transformers`' repeat_kv);
    segment_ids: int [batch, length], 0 = padding. Returns [batch, length, heads, head_dim].
    `block_q` / `block_k` are the tile sizes of `flash` and `splash` (ignored by the dense kernels).
    """
    scale = q.shape[-1] ** -0.5
    implementation = resolve_implementation(implementation, k.shape[1], block_k)
    if implementation == "flash":
        return flash_attention(q, k, v, segment_ids, block_q=block_q, block_k=block_k)
    if implementation == "splash":
        return splash_attention(q, k, v, segment_ids, block_q=block_q, block_k=block_k)
    mask = segment_causal_mask(segment_ids, segment_ids)
    if implementation == "xla":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
    if implementation == "cudnn":
        # cuDNN's own causal mask lets it skip the upper triangle; the segment mask is passed as a
        # dense bias (jax.nn.dot_product_attention has no segment-id argument), so packed segments
        # are honoured at the price of a [batch, 1, T, T] bias.
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=True, implementation="cudnn")
    raise ValueError(f"attention implementation {implementation!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")


def cached_attention(q: Array, k: Array, v: Array, mask: Array, *, implementation: str = "xla") -> Array:
    """Attention of new queries over the whole KV cache under `mask` [batch, 1, queries, max_length].
    q: [batch, queries, heads, head_dim]; k and v: one layer of the cache in its stored layouts, k [batch,
    kv_heads, head_dim, max_length] and v [batch, kv_heads, max_length, head_dim]
    (`Qwen2ForCausalLM.init_cache`). Dense: the scores are only queries x cache long.

    A decoding step (one query per row) multiplies per (batch, kv head) the query groups [groups, head_dim]
    by the stored keys [head_dim, max_length], and the float32 probabilities [groups, max_length] by the
    stored values [max_length, head_dim]: row-major products, nothing transposed. The orientation is
    spelled out with `dot_general` because XLA:CPU (YNNPACK) runs it ~2x faster than the transposed one
    that `einsum` led it to ([max_length, groups] products with 7 columns; a Qwen2-0.5B decoding step at
    batch 4 and a 1,280-token cache: 69-73 vs 75-79 ms). More queries (a prompt's prefill) go through
    `jax.nn.dot_product_attention` on token-major views, which XLA:CPU runs faster there; cuDNN when that is
    the configured kernel."""
    batch, queries, heads, head_dim = q.shape
    if queries > 1 or implementation == "cudnn":
        k, v = k.transpose(0, 3, 1, 2), v.transpose(0, 2, 1, 3)  # [batch, max_length, kv_heads, head_dim]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim ** -0.5,
                                            implementation="cudnn" if implementation == "cudnn" else "xla")
    kv_heads = k.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)  # GQA: no repeated K/V
    batch_dims = ((0, 1), (0, 1))
    scores = jax.lax.dot_general(grouped, k, (((3,), (2,)), batch_dims), preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores * head_dim ** -0.5, MASK_VALUE)  # [batch, kv_heads, groups, max_length]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jax.lax.dot_general(probs, v, (((3,), (2,)), batch_dims))  # [batch, kv_heads, groups, head_dim]
    return out.reshape(batch, queries, heads, head_dim)


# ---- flash: blockwise attention with online softmax -------------------------------------------------
#
# Layout inside the kernel: queries as [q_blocks, batch, kv_heads, groups, block_q, head_dim] and keys /
# values as [k_blocks, batch, kv_heads, block_k, head_dim], so each tile is one batched matmul over
# (batch, kv_heads) with the query groups folded into its rows: GQA without repeating K/V.
#
# Causal skipping: query block i visits key blocks 0 .. last_key_block(i) only and key block j is
# visited by query blocks first_query_block(j) .. end, so the tiles above the diagonal are never
# computed (about half of them at large T). The loop bounds are arithmetic on the block index, so
# the program has one loop nest whatever T is (compile time does not grow with the length).


def _num_key_blocks_needed(query_block: Array, block_q: int, block_k: int, num_key_blocks: int) -> Array:
    """How many key blocks query block `query_block` can see under the causal mask."""
    last_query = (query_block + 1) * block_q - 1
    return jnp.minimum(num_key_blocks, last_query // block_k + 1)


def _first_query_block_needing(key_block: Array, block_q: int, block_k: int) -> Array:
    """The first query block that can see key block `key_block` under the causal mask."""
    return (key_block * block_k) // block_q


def _to_blocks(x: Array, block: int, groups: int | None) -> Array:
    """[batch, T, heads, head_dim] -> [T/block, batch, kv_heads, (groups,) block, head_dim]."""
    batch, length, heads, head_dim = x.shape
    if groups is None:
        x = x.reshape(batch, length // block, block, heads, head_dim)
        return x.transpose(1, 0, 3, 2, 4)
    x = x.reshape(batch, length // block, block, heads // groups, groups, head_dim)
    return x.transpose(1, 0, 3, 4, 2, 5)


def _segment_blocks(segment_ids: Array, block: int) -> Array:
    """[batch, T] -> [T/block, batch, block]."""
    batch, length = segment_ids.shape
    return segment_ids.reshape(batch, length // block, block).transpose(1, 0, 2)


def _from_query_blocks(x: Array) -> Array:
    """[q_blocks, batch, kv_heads, groups, block_q, head_dim] -> [batch, T, heads, head_dim]."""
    num_blocks, batch, kv_heads, groups, block, head_dim = x.shape
    return x.transpose(1, 0, 4, 2, 3, 5).reshape(batch, num_blocks * block, kv_heads * groups, head_dim)


def _from_key_blocks(x: Array) -> Array:
    """[k_blocks, batch, kv_heads, block_k, head_dim] -> [batch, T, kv_heads, head_dim]."""
    num_blocks, batch, kv_heads, block, head_dim = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(batch, num_blocks * block, kv_heads, head_dim)


def _tile_mask(query_block: Array, key_block: Array, query_segments: Array, key_segments: Array,
               block_q: int, block_k: int) -> Array:
    """Boolean [batch, 1, 1, block_q, block_k]: causal within the two blocks' positions and same segment.

    query_segments: [batch, block_q]; key_segments: [batch, block_k].
    """
    query_position = query_block * block_q + jnp.arange(block_q)
    key_position = key_block * block_k + jnp.arange(block_k)
    causal = key_position[None, :] <= query_position[:, None]
    same_segment = query_segments[:, :, None] == key_segments[:, None, :]
    return (causal[None] & same_segment)[:, None, None]


def _tile_scores(q_tile: Array, k_tile: Array, scale: float) -> Array:
    """float32 [batch, kv_heads, groups, block_q, block_k] = scale * q k^T for one tile."""
    return jnp.einsum("bkgqh,bkch->bkgqc", q_tile, k_tile, preferred_element_type=jnp.float32) * scale


def _flash_forward(q, k, v, segment_ids, block_q, block_k):
    """Output blocks and the log-sum-exp of each query row (the only softmax statistic kept)."""
    groups = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5
    q_blocks = _to_blocks(q, block_q, groups)
    k_blocks, v_blocks = _to_blocks(k, block_k, None), _to_blocks(v, block_k, None)
    query_segments, key_segments = _segment_blocks(segment_ids, block_q), _segment_blocks(segment_ids, block_k)
    num_query_blocks, num_key_blocks = q_blocks.shape[0], k_blocks.shape[0]
    row_shape = q_blocks.shape[1:-1]  # [batch, kv_heads, groups, block_q]

    def visit_query_block(i, outputs):
        out_blocks, log_sum_exp = outputs
        q_tile, q_segments = q_blocks[i], query_segments[i]

        def visit_key_block(j, carry):
            row_max, row_sum, accumulator = carry
            visible = _tile_mask(i, j, q_segments, key_segments[j], block_q, block_k)
            scores = jnp.where(visible, _tile_scores(q_tile, k_blocks[j], scale), MASK_VALUE)
            new_max = jnp.maximum(row_max, scores.max(axis=-1))
            probabilities = jnp.where(visible, jnp.exp(scores - new_max[..., None]), 0.0)
            correction = jnp.exp(row_max - new_max)
            row_sum = row_sum * correction + probabilities.sum(axis=-1)
            accumulator = accumulator * correction[..., None] + jnp.einsum(
                "bkgqc,bkch->bkgqh", probabilities.astype(v_blocks.dtype), v_blocks[j],
                preferred_element_type=jnp.float32)
            return new_max, row_sum, accumulator

        init = (jnp.full(row_shape, MASK_VALUE, jnp.float32), jnp.zeros(row_shape, jnp.float32),
                jnp.zeros(q_tile.shape, jnp.float32))
        needed = _num_key_blocks_needed(i, block_q, block_k, num_key_blocks)
        row_max, row_sum, accumulator = jax.lax.fori_loop(0, needed, visit_key_block, init)
        safe_sum = jnp.where(row_sum > 0, row_sum, 1.0)  # only rows of the block-rounding padding are empty
        out_blocks = out_blocks.at[i].set((accumulator / safe_sum[..., None]).astype(q.dtype))
        log_sum_exp = log_sum_exp.at[i].set(row_max + jnp.log(safe_sum))
        return out_blocks, log_sum_exp

    outputs = (jnp.zeros(q_blocks.shape, q.dtype), jnp.zeros((num_query_blocks, *row_shape), jnp.float32))
    return jax.lax.fori_loop(0, num_query_blocks, visit_query_block, outputs)


def _flash_backward(q, k, v, segment_ids, out_blocks, log_sum_exp, d_out, block_q, block_k):
    """dq, dk, dv recomputed tile by tile from the saved log-sum-exp (FlashAttention-2's backward).

    Outer loop over key blocks, inner loop over the query blocks that see the key block; dk/dv of
    the key block accumulate in the inner carry, dq in a [q_blocks, ...] buffer updated in place.
    """
    groups = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5
    q_blocks, d_out_blocks = _to_blocks(q, block_q, groups), _to_blocks(d_out, block_q, groups)
    k_blocks, v_blocks = _to_blocks(k, block_k, None), _to_blocks(v, block_k, None)
    query_segments, key_segments = _segment_blocks(segment_ids, block_q), _segment_blocks(segment_ids, block_k)
    num_query_blocks, num_key_blocks = q_blocks.shape[0], k_blocks.shape[0]
    # D_i = rowsum(dO_i * O_i): the softmax-backward term shared by every key of row i.
    d_out_dot_out = jnp.sum(d_out_blocks.astype(jnp.float32) * out_blocks.astype(jnp.float32), axis=-1)

    def visit_key_block(j, grads):
        d_query, d_keys, d_values = grads
        k_tile, v_tile, k_segments = k_blocks[j], v_blocks[j], key_segments[j]

        def visit_query_block(i, carry):
            d_query, d_key, d_value = carry
            q_tile, d_out_tile = q_blocks[i], d_out_blocks[i]
            visible = _tile_mask(i, j, query_segments[i], k_segments, block_q, block_k)
            scores = jnp.where(visible, _tile_scores(q_tile, k_tile, scale), MASK_VALUE)
            probabilities = jnp.where(visible, jnp.exp(scores - log_sum_exp[i][..., None]), 0.0)
            d_value = d_value + jnp.einsum("bkgqc,bkgqh->bkch", probabilities.astype(d_out_tile.dtype), d_out_tile,
                                           preferred_element_type=jnp.float32)
            d_probabilities = jnp.einsum("bkgqh,bkch->bkgqc", d_out_tile, v_tile, preferred_element_type=jnp.float32)
            d_scores = (probabilities * (d_probabilities - d_out_dot_out[i][..., None]) * scale).astype(q_tile.dtype)
            d_key = d_key + jnp.einsum("bkgqc,bkgqh->bkch", d_scores, q_tile, preferred_element_type=jnp.float32)
            d_query = d_query.at[i].add(jnp.einsum("bkgqc,bkch->bkgqh", d_scores, k_tile,
                                                   preferred_element_type=jnp.float32))
            return d_query, d_key, d_value

        zeros = jnp.zeros(k_tile.shape, jnp.float32)
        first = _first_query_block_needing(j, block_q, block_k)
        d_query, d_key, d_value = jax.lax.fori_loop(first, num_query_blocks, visit_query_block, (d_query, zeros, zeros))
        return d_query, d_keys.at[j].set(d_key), d_values.at[j].set(d_value)

    grads = (jnp.zeros(q_blocks.shape, jnp.float32), jnp.zeros(k_blocks.shape, jnp.float32),
             jnp.zeros(v_blocks.shape, jnp.float32))
    d_query, d_keys, d_values = jax.lax.fori_loop(0, num_key_blocks, visit_key_block, grads)
    d_q = _from_query_blocks(d_query).astype(q.dtype)
    return d_q, _from_key_blocks(d_keys).astype(k.dtype), _from_key_blocks(d_values).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, segment_ids, block_q, block_k):
    out_blocks, _ = _flash_forward(q, k, v, segment_ids, block_q, block_k)
    return _from_query_blocks(out_blocks)


def _flash_fwd(q, k, v, segment_ids, block_q, block_k):
    out_blocks, log_sum_exp = _flash_forward(q, k, v, segment_ids, block_q, block_k)
    # Saved for the backward: the inputs, the output and one float per query row -- O(T), no T x T.
    return _from_query_blocks(out_blocks), (q, k, v, segment_ids, out_blocks, log_sum_exp)


def _flash_bwd(block_q, block_k, residuals, d_out):
    q, k, v, segment_ids, out_blocks, log_sum_exp = residuals
    d_q, d_k, d_v = _flash_backward(q, k, v, segment_ids, out_blocks, log_sum_exp, d_out, block_q, block_k)
    return d_q, d_k, d_v, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def flash_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, block_q: int = 128,
                    block_k: int = 128) -> Array:
    """Blockwise causal attention within segments, O(T) memory forward and backward.

    Same arguments and result as `causal_attention`. Tiles are `block_q` queries x `block_k` keys
    (each clipped to the sequence); a length that is not a block multiple is padded with keys and
    queries of their own segment, which no real token sees, and the padding is cut off again.
    """
    length = q.shape[1]
    block_q, block_k = min(block_q, length), min(block_k, length)
    q, k, v, segment_ids = _pad_length(q, k, v, segment_ids, math.lcm(block_q, block_k))
    out = _flash(q, k, v, segment_ids.astype(jnp.int32), block_q, block_k)
    return out[:, :length]


def _pad_length(q: Array, k: Array, v: Array, segment_ids: Array, multiple: int):
    """Round the length up to `multiple` with keys/queries of a segment no real token has."""
    extra = _round_up(q.shape[1], multiple) - q.shape[1]
    if not extra:
        return q, k, v, segment_ids
    pad = lambda x: jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0)))  # noqa: E731
    return pad(q), pad(k), pad(v), jnp.pad(segment_ids, ((0, 0), (0, extra)), constant_values=_PAD_SEGMENT)


# ---- splash: the Pallas TPU kernel ---------------------------------------------------------------
#
# GQA: one MQA kernel (a [groups, T, T] causal mask) per KV head, vmapped over batch and KV heads.
# The kernel is a pallas_call, which XLA cannot partition, so under `activation_sharding` it runs in
# `shard_map` over the mesh axes that the batch and the heads are sharded over (each device gets
# whole rows and whole KV-head groups; the length must not be sharded).

SPLASH_LANES = 128  # splash tiles are multiples of the TPU's 128 lanes


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, block_q: int = 128, block_k: int = 128,
                     interpret: bool | None = None) -> Array:
    """Causal attention within segments by `jax.experimental.pallas.ops.tpu.splash_attention`.

    Same arguments and result as `causal_attention`. Block sizes are rounded up to multiples of 128
    and clipped to the (padded) length; `interpret` (default: off TPU) runs the kernel in Pallas
    interpret mode, which is how it is tested on CPU.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    length = q.shape[1]
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    padded_length = _round_up(length, SPLASH_LANES)
    block_q = min(_round_up(block_q, SPLASH_LANES), padded_length)
    block_k = min(_round_up(block_k, SPLASH_LANES), padded_length)
    q, k, v, segment_ids = _pad_length(q, k, v, segment_ids, math.lcm(block_q, block_k))
    padded_length = q.shape[1]
    groups = q.shape[2] // k.shape[2]
    blocks = splash.BlockSizes(block_q=block_q, block_kv=block_k, block_kv_compute=block_k,
                               block_q_dkv=block_q, block_kv_dkv=block_k, block_kv_dkv_compute=block_k,
                               block_q_dq=block_q, block_kv_dq=block_k)
    mask = splash.MultiHeadMask([splash.CausalMask((padded_length, padded_length))] * groups)
    kernel = splash.make_splash_mqa_single_device(mask=mask, block_sizes=blocks, interpret=interpret)

    def attend(q, k, v, segment_ids):  # local shapes: [b, T, n, H], [b, T, kv, H], [b, T]
        batch, _, heads, head_dim = q.shape
        kv_heads = k.shape[2]
        # splash does not scale the scores: fold 1/sqrt(head_dim) into the queries.
        q = (q * head_dim**-0.5).reshape(batch, padded_length, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, kv, T, H]

        def one_kv_head(q_group, k_head, v_head, segments):
            return kernel(q_group, k_head, v_head, splash.SegmentIds(q=segments, kv=segments))

        per_row = jax.vmap(one_kv_head, in_axes=(0, 0, 0, None))
        out = jax.vmap(per_row)(q, k, v, segment_ids.astype(jnp.int32))  # [b, kv, groups, T, H]
        return out.transpose(0, 3, 1, 2, 4).reshape(batch, padded_length, heads, head_dim)

    sharded = active_mesh_specs((("activation_batch", None, "activation_heads", None), q.shape),
                                (("activation_batch", None, "activation_kv_heads", None), k.shape),
                                (("activation_batch", None), segment_ids.shape))
    if sharded is not None:
        mesh, (q_spec, kv_spec, segment_spec) = sharded
        if q_spec[2] != kv_spec[2]:  # heads and KV heads must split alike, or the groups break apart
            kv_spec = PartitionSpec(kv_spec[0], None, None, None)
            q_spec = PartitionSpec(q_spec[0], None, None, None)
        attend = jax.shard_map(attend, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, segment_spec),
                               out_specs=q_spec, check_vma=False)
    return attend(q, k, v, segment_ids)[:, :length]

