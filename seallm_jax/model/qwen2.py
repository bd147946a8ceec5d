"""Qwen2 in Flax NNX, top to bottom: RMSNorm, rotary, attention (GQA), MLP, decoder, causal LM.

Numerically matches `transformers`' Qwen2ForCausalLM (and LlamaForCausalLM with
`attention_bias=False`). Decoder layers are stacked on a leading 'layers' axis and run with
`jax.lax.scan`, so compile time does not grow with depth.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from seallm_jax.model.attention import cached_attention, causal_attention, segment_causal_mask
from seallm_jax.model.axes import constrain
from seallm_jax.model.config import Qwen2Config

Array = jax.Array
# ffn_probe(gate_activation [B,T,I], hidden_mlp [B,T,I], down_kernel [I,E]) -> any pytree, per layer
FfnProbe = Callable[[Array, Array, Array], Any]
# Lean LSN training (`lsn.optim.NeuronView`): {"index": int32 [layers, units] (padding = intermediate_size),
# and any of "gate_proj" / "up_proj" / "down_proj": [layers, units, embed]}, the selected neurons' current
# weights. The forward pass is unchanged; the gradient flows to these slices instead of the kernels.
NeuronWeights = dict[str, Array]
# k: [layers, batch, kv_heads, head_dim, max_length]; v: [layers, batch, kv_heads, max_length, head_dim] (see
# `Qwen2ForCausalLM.init_cache`); segment: [batch, max_length]; index: []
KVCache = dict[str, Array]

# jax.checkpoint policy of each `Qwen2Config.remat` name (model.config.REMAT_POLICIES) but "none".
CHECKPOINT_POLICY = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# Logical axes of the activations `constrain` pins (names from `seallm_jax.sharding`'s rules table).
HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")
QUERY_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
KEY_AXES = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")
MLP_AXES = ("activation_batch", "activation_length", "activation_mlp")
LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")

class RMSNorm(nnx.Module):
    """x / rms(x) * scale, computed in float32 (as transformers does), cast back to the input dtype."""

    def __init__(self, size: int, eps: float, *, param_dtype: jnp.dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((size,), param_dtype))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale.value.astype(x.dtype) * normed.astype(x.dtype)


def rotary_embedding(x: Array, positions: Array, theta: float) -> Array:
    """Rotate-half rotary embedding. x: [batch, length, heads, head_dim]; positions: [batch, length]."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, length, head_dim/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-second, first], axis=-1) * sin


class Dense(nnx.Linear):
    """`nnx.Linear` over the tokens flattened to one axis: `[..., in] -> [..., out]` as one `[tokens, in]`
    matmul. The same forward; in the backward the weight gradient is then a plain `[in, tokens] x [tokens,
    out]` product. Left with two token axes (batch, length), XLA:CPU writes an activation transposed before
    that product (a copy of every `[tokens, intermediate]` MLP gradient): 30% of an MLP's backward."""

    def __call__(self, inputs: Array) -> Array:
        return _over_flat_tokens(super().__call__, inputs)


def token_matmul(x: Array, weight: Array) -> Array:
    """`x @ weight` for `x` [..., in], as `Dense` computes it: over the tokens flattened to one axis."""
    return _over_flat_tokens(lambda flat: flat @ weight, x)


def _over_flat_tokens(project: Callable[[Array], Array], x: Array) -> Array:
    """`project` ([tokens, in] -> [tokens, out]) applied to `x` [..., in], giving [..., out]."""
    flat = project(x.reshape(-1, x.shape[-1]))
    return flat.reshape(*x.shape[:-1], flat.shape[-1])


def _dense(in_features: int, out_features: int, config: Qwen2Config, rngs: nnx.Rngs, *, bias: bool = False) -> Dense:
    return Dense(
        in_features, out_features, use_bias=bias,
        dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=nnx.initializers.normal(config.initializer_range), rngs=rngs,
    )


class LMHead(NamedTuple):
    """The LM head's weight in the compute dtype and which way round it is stored: `[vocab, embed]`
    (`vocab_first`, the tied token embedding) or `[embed, vocab]` (the untied `lm_head` kernel)."""
    weight: Array
    vocab_first: bool

    def embed_first(self) -> "LMHead":
        """The same head stored `[embed, vocab]` (a transposed copy of a tied embedding): the layout a
        few-row matmul streams fastest on CPU (decoding: 14.6 vs 24.0 ms for Qwen2's head at batch 4)."""
        return LMHead(self.weight.T, vocab_first=False) if self.vocab_first else self


def head_logits(hidden: Array, head: LMHead) -> Array:
    """float32 logits [batch, length, vocab] of the final-norm `hidden` [batch, length, embed].

    The tied embedding is used as stored, `[vocab, embed]`: the dot contracts its minor dimension directly
    (no transposed copy in the program, on CPU or GPU). The dot runs in the compute dtype and its result is
    cast: asking it for float32 output instead (`preferred_element_type`) would save bf16's convert pass
    over the logits, but JAX's transpose of such a dot takes the float32 cotangent, so a differentiated
    full-logits loss would run its head-gradient matmuls in float32 and its bf16 gradients would change."""
    spec = "ble,ve->blv" if head.vocab_first else "ble,ev->blv"
    logits = jnp.einsum(spec, hidden.astype(head.weight.dtype), head.weight)
    return constrain(logits, LOGITS_AXES).astype(jnp.float32)


class CacheSlot(NamedTuple):
    """What one decoder layer needs of the KV cache and the position where this call's first token goes.
    With a `layer`, k/v are the stacked arrays of *every* layer (carried through the layer scan, so that
    each layer's write updates them in place instead of building a new stack) and `layer` is this layer's
    row in them; with `layer=None` they are this layer's own arrays (a per-layer cache, `unstack_cache`:
    decoding reads them without slicing a copy out of a stack)."""

    k: Array  # [layers, batch, kv_heads, head_dim, max_length], or without the layers axis
    v: Array  # [layers, batch, kv_heads, max_length, head_dim], or without the layers axis
    layer: Array | int | None  # [] int32, a Python int in the unrolled layer loop, or None (per-layer arrays)
    index: Array  # [] int32


class Attention(nnx.Module):
    """Grouped-query attention with rotary positions, q/k/v bias (Qwen2) and an optional KV cache."""

    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs):
        self.config = config
        e, h = config.hidden_size, config.head_size
        self.q_proj = _dense(e, config.num_attention_heads * h, config, rngs, bias=config.attention_bias)
        self.k_proj = _dense(e, config.num_key_value_heads * h, config, rngs, bias=config.attention_bias)
        self.v_proj = _dense(e, config.num_key_value_heads * h, config, rngs, bias=config.attention_bias)
        self.o_proj = _dense(config.num_attention_heads * h, e, config, rngs)

    def __call__(
        self, x: Array, positions: Array, segment_ids: Array, cache_mask: Array | None, cache: CacheSlot | None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """Without a cache: causal attention within `segment_ids` by `config.attention_impl`. With one:
        this step's keys/values are written into the stacked cache at (`cache.layer`, `cache.index`) and
        the queries attend over this layer's whole cache under `cache_mask` [batch, 1, length, max_length]
        (or, with `cache_mask=None`, a fresh cache's prefill, among this call's tokens only, as without a
        cache: no [length, max_length] scores); the updated stacked (k, v) are returned."""
        c = self.config
        batch, length, _ = x.shape
        q = self.q_proj(x).reshape(batch, length, c.num_attention_heads, c.head_size)
        k = self.k_proj(x).reshape(batch, length, c.num_key_value_heads, c.head_size)
        v = self.v_proj(x).reshape(batch, length, c.num_key_value_heads, c.head_size)
        q = constrain(rotary_embedding(q, positions, c.rope_theta), QUERY_AXES)
        k = constrain(rotary_embedding(k, positions, c.rope_theta), KEY_AXES)
        if cache is None or cache_mask is None:
            out = causal_attention(q, k, v, segment_ids, implementation=c.attention_impl,
                                   block_q=c.attention_block_q, block_k=c.attention_block_k)
        updated = None
        if cache is not None:
            # A dynamic_update_slice of the carried stack: XLA writes only the new positions, in place.
            # The cache is stored in the layouts attention reads (`init_cache`): no step transposes it.
            k_new, v_new = k.transpose(0, 2, 3, 1).astype(cache.k.dtype), v.transpose(0, 2, 1, 3).astype(cache.v.dtype)
            if cache.layer is None:  # this layer's own arrays
                k_all = jax.lax.dynamic_update_slice(cache.k, k_new, (0, 0, 0, cache.index))
                v_all = jax.lax.dynamic_update_slice(cache.v, v_new, (0, 0, cache.index, 0))
            else:
                k_all = jax.lax.dynamic_update_slice(cache.k, k_new[None], (cache.layer, 0, 0, 0, cache.index))
                v_all = jax.lax.dynamic_update_slice(cache.v, v_new[None], (cache.layer, 0, 0, cache.index, 0))
            updated = (k_all, v_all)
            if cache_mask is not None:  # read this layer's whole cache
                k_layer, v_layer = (k_all, v_all) if cache.layer is None else (k_all[cache.layer], v_all[cache.layer])
                out = cached_attention(q, k_layer.astype(q.dtype), v_layer.astype(q.dtype), cache_mask,
                                       implementation=c.attention_impl)
        out = out.reshape(batch, length, c.num_attention_heads * c.head_size)
        return self.o_proj(out), updated


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Neuron j = gate/up column j = down row j."""

    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs):
        e, i = config.hidden_size, config.intermediate_size
        self.gate_proj = _dense(e, i, config, rngs)
        self.up_proj = _dense(e, i, config, rngs)
        self.down_proj = _dense(i, e, config, rngs)

    def __call__(self, x: Array, gate_scale: Array | None, probe: FfnProbe | None,
                 neuron_slices: NeuronWeights | None = None) -> tuple[Array, Any]:
        gate, up = self.gate_proj(x), self.up_proj(x)
        if neuron_slices is not None:  # lean LSN training: the gradient reaches these neurons' slices only
            index = neuron_slices["index"]
            if "gate_proj" in neuron_slices:
                gate = gate.at[..., index].add(_zero_with_gradient(x, neuron_slices["gate_proj"]), mode="drop")
            if "up_proj" in neuron_slices:
                up = up.at[..., index].add(_zero_with_gradient(x, neuron_slices["up_proj"]), mode="drop")
        gate_activation = jax.nn.silu(gate)
        if gate_scale is not None:  # neuron deactivation (LSN ablation)
            gate_activation = gate_activation * gate_scale.astype(gate_activation.dtype)
        hidden = constrain(gate_activation * up, MLP_AXES)
        probed = probe(gate_activation, hidden, self.down_proj.kernel.value) if probe is not None else None
        out = self.down_proj(hidden)
        if neuron_slices is not None and "down_proj" in neuron_slices:
            selected = jnp.take(hidden, neuron_slices["index"], axis=-1, mode="fill", fill_value=0)
            rows = neuron_slices["down_proj"].astype(selected.dtype)  # [units, embed]
            out = out + token_matmul(selected, rows - jax.lax.stop_gradient(rows))
        return out, probed


def _zero_with_gradient(x: Array, columns: Array) -> Array:
    """`x @ (c - stop_gradient(c)).T`: zero in the forward pass, `x`'s gradient to the columns `c`
    [units, embed] in the backward pass (so the frozen kernel needs no weight gradient)."""
    columns = columns.astype(x.dtype)
    return token_matmul(x, (columns - jax.lax.stop_gradient(columns)).T)


class DecoderLayer(nnx.Module):
    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs):
        param_dtype = jnp.dtype(config.param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(config, rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(config, rngs)

    def __call__(self, x, positions, segment_ids, cache_mask, cache, gate_scale, probe, neuron_slices=None):
        attended, kv_cache = self.self_attn(self.input_layernorm(x), positions, segment_ids, cache_mask, cache)
        x = x + attended
        mlp_out, probed = self.mlp(self.post_attention_layernorm(x), gate_scale, probe, neuron_slices)
        x = constrain(x + mlp_out, HIDDEN_AXES)
        return x, kv_cache, probed


def segment_positions(segment_ids: Array) -> Array:
    """Positions that restart at 0 at the start of every segment (packed documents)."""
    index = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
    is_start = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=-1
    )
    start = jax.lax.cummax(jnp.where(is_start, index, 0), axis=1)
    return index - start


class Qwen2Model(nnx.Module):
    """Embedding, the scanned stack of decoder layers, final norm."""

    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = nnx.Embed(
            config.vocab_size, config.hidden_size,
            dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
            embedding_init=nnx.initializers.normal(config.initializer_range), rngs=rngs,
        )

        @nnx.split_rngs(splits=config.num_hidden_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def stacked_layers(rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(config, rngs)

        self.layers = stacked_layers(rngs)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=jnp.dtype(config.param_dtype))

    def __call__(
        self, input_ids: Array, positions: Array, segment_ids: Array,
        cache: KVCache | None, gate_scale: Array | None, probe: FfnProbe | None,
        unrolled_layers: Sequence[nnx.State] | None = None, neuron_slices: NeuronWeights | None = None,
        fresh_cache: bool = False,
    ) -> tuple[Array, KVCache | None, Any]:
        """`unrolled_layers` (from `unstack_layers`) runs the layers as a Python loop over separate
        per-layer weights instead of the scan: for decoding, where the scan's dynamic slice of every
        stacked weight would copy the whole model once per token (XLA hoists no slice out of a loop).
        `fresh_cache`: the cache holds nothing yet (a prompt's prefill), so attention runs among this
        call's tokens by `config.attention_impl` (flash for long prompts) and only writes the cache."""
        config = self.config
        x = constrain(self.embed_tokens(input_ids), HIDDEN_AXES)
        length = input_ids.shape[1]
        if cache is None:
            # Attention masks by segment_ids itself (a token sees earlier tokens of its own segment;
            # padding is segment 0 and sees only padding): no [T, T] mask is built here.
            cache_mask, cache_index, kv, new_cache = None, None, None, None
        else:
            cache_index = cache["index"]
            cache_segments = jax.lax.dynamic_update_slice(cache["segment"], segment_ids, (0, cache_index))
            cache_mask = None if fresh_cache else segment_causal_mask(segment_ids, cache_segments,
                                                                      query_offset=cache_index)
            # The stacked cache rides in the scan *carry*, not in xs/ys: as xs/ys every call would
            # build a fresh [layers, ...] stack and copy it (twice the cache per decoding step).
            kv = (cache["k"], cache["v"])
            new_cache = {"segment": cache_segments, "index": cache_index + length}

        graphdef, layer_state = nnx.split(self.layers)
        layer_indices = jnp.arange(config.num_hidden_layers, dtype=jnp.int32)

        def layer_step(carry, xs):
            x, kv = carry
            state, layer_index, scale, slices = xs
            layer = nnx.merge(graphdef, state)
            slot = None if kv is None else CacheSlot(kv[0], kv[1], layer_index, cache_index)
            x, kv, probed = layer(x, positions, segment_ids, cache_mask, slot, scale, probe, slices)
            return (x, kv), probed

        if config.remat != "none":
            layer_step = jax.checkpoint(layer_step, policy=CHECKPOINT_POLICY[config.remat], prevent_cse=False)
        per_layer_cache = kv is not None and isinstance(kv[0], (list, tuple))
        if unrolled_layers is None:
            if per_layer_cache:
                raise ValueError("a per-layer KV cache (unstack_cache) runs with unrolled_layers only")
            xs = (layer_state, layer_indices, gate_scale, neuron_slices)
            (x, kv), probes = jax.lax.scan(layer_step, (x, kv), xs, unroll=config.scan_unroll)
        else:
            per_layer = []
            keys, values = (list(kv[0]), list(kv[1])) if per_layer_cache else (None, None)
            for index, state in enumerate(unrolled_layers):  # a static layer index: static slices of the cache
                scale = None if gate_scale is None else gate_scale[index]
                slices = None if neuron_slices is None else jax.tree.map(lambda a, i=index: a[i], neuron_slices)
                if per_layer_cache:
                    (x, (keys[index], values[index])), probed = layer_step(
                        (x, (keys[index], values[index])), (state, None, scale, slices))
                else:
                    (x, kv), probed = layer_step((x, kv), (state, index, scale, slices))
                per_layer.append(probed)
            if per_layer_cache:
                kv = (tuple(keys), tuple(values))
            probes = None if probe is None else jax.tree.map(lambda *p: jnp.stack(p), *per_layer)
        if new_cache is not None:
            new_cache.update(k=kv[0], v=kv[1])
        return self.norm(x), new_cache, probes

    def unstack_layers(self) -> list[nnx.State]:
        """Each decoder layer's parameters as arrays of its own (a copy of the stacked weights), for
        `unrolled_layers`."""
        _, layer_state = nnx.split(self.layers)
        return [jax.tree.map(lambda a, i=i: a[i], layer_state) for i in range(self.config.num_hidden_layers)]


def unstack_cache(cache: KVCache) -> KVCache:
    """`cache` with each layer's keys and values as arrays of their own (a copy; tuples of `layers` arrays),
    for decoding with `unrolled_layers`: a layer then reads its cache without slicing it out of the stack,
    which XLA:CPU does by copying (48 copies of a layer's cache per Qwen2-0.5B decoding step)."""
    layers = cache["k"].shape[0]
    return {**cache, "k": tuple(cache["k"][i] for i in range(layers)), "v": tuple(cache["v"][i] for i in range(layers))}


class Qwen2ForCausalLM(nnx.Module):
    """The causal LM: `model(input_ids) -> logits [batch, length, vocab]` (float32)."""

    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Qwen2Model(config, rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _dense(config.hidden_size, config.vocab_size, config, rngs)

    def _inputs(self, input_ids, positions, segment_ids, attention_mask, cache):
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if segment_ids is None:
            segment_ids = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
            if positions is None:  # as transformers: positions count from the cache index, padding or not
                start = 0 if cache is None else cache["index"]
                positions = jnp.broadcast_to(start + jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
        elif positions is None:
            positions = segment_positions(segment_ids)
        return input_ids, jnp.asarray(positions, jnp.int32), jnp.asarray(segment_ids, jnp.int32)

    def hidden_states(
        self, input_ids: Array, *, positions: Array | None = None, segment_ids: Array | None = None,
        attention_mask: Array | None = None, ffn_gate_scale: Array | None = None,
        ffn_probe: FfnProbe | None = None, ffn_neuron_slices: NeuronWeights | None = None,
    ) -> tuple[Array, Any]:
        """Final-norm hidden states [batch, length, embed] and the per-layer stacked `ffn_probe` outputs."""
        input_ids, positions, segment_ids = self._inputs(input_ids, positions, segment_ids, attention_mask, None)
        hidden, _, probes = self.model(input_ids, positions, segment_ids, None, ffn_gate_scale, ffn_probe,
                                       neuron_slices=ffn_neuron_slices)
        return hidden, probes

    def head(self) -> LMHead:
        """The LM head (tied: the token embedding) in the compute dtype."""
        dtype = jnp.dtype(self.config.dtype)
        if self.config.tie_word_embeddings:
            return LMHead(self.model.embed_tokens.embedding.value.astype(dtype), vocab_first=True)
        return LMHead(self.lm_head.kernel.value.astype(dtype), vocab_first=False)

    def logits(self, hidden: Array) -> Array:
        """float32 logits [batch, length, vocab] of the final-norm `hidden` (`head_logits`)."""
        return head_logits(hidden, self.head())

    def __call__(
        self, input_ids: Array, *, positions: Array | None = None, segment_ids: Array | None = None,
        attention_mask: Array | None = None, ffn_gate_scale: Array | None = None, cache: KVCache | None = None,
        last_position_only: bool = False, unrolled_layers: Sequence[nnx.State] | None = None,
        ffn_neuron_slices: NeuronWeights | None = None, head: LMHead | None = None, fresh_cache: bool = False,
    ) -> Array | tuple[Array, KVCache]:
        """Logits [batch, length, vocab]; with a `cache`, `(logits, updated cache)`.

        `segment_ids` (0 = padding) packs documents: positions restart per segment and tokens attend
        only within theirs. `attention_mask` (1 = token, 0 = padding) is the Hugging Face form.
        `last_position_only` gives logits [batch, 1, vocab] for the last position (a prompt's prefill).
        `unrolled_layers` (`model.model.unstack_layers()`) unrolls the layer loop (see `Qwen2Model`).
        `ffn_neuron_slices` (lean LSN training, see `NeuronWeights`) leaves the logits unchanged and routes
        the gradient to the given neurons' slices. `head` replaces `self.head()` (the same weights, e.g.
        `model.head().embed_first()` copied once before a decoding loop). `fresh_cache=True` says the cache
        holds nothing before this call (a prompt's prefill): attention then runs among the call's tokens by
        `config.attention_impl` — O(length) memory with flash — instead of over the whole cache.
        """
        input_ids, positions, segment_ids = self._inputs(input_ids, positions, segment_ids, attention_mask, cache)
        hidden, new_cache, _ = self.model(input_ids, positions, segment_ids, cache, ffn_gate_scale, None,
                                          unrolled_layers, neuron_slices=ffn_neuron_slices,
                                          fresh_cache=fresh_cache and cache is not None)
        logits = head_logits(hidden[:, -1:] if last_position_only else hidden, self.head() if head is None else head)
        return logits if cache is None else (logits, new_cache)

    def init_cache(self, batch_size: int, max_length: int, dtype: jnp.dtype | str | None = None) -> KVCache:
        """An empty KV cache for `max_length` positions (prompt + generated tokens).

        Keys are stored `[layers, batch, kv_heads, head_dim, max_length]` and values `[layers, batch, kv_heads,
        max_length, head_dim]`: the layouts in which both attention matmuls of a decoding step are plain
        row-major products with the query groups as rows (`cached_attention`), so no step transposes the
        cache (the token-major layout made XLA:CPU transpose every layer's cache at every step)."""
        c = self.config
        dtype = jnp.dtype(dtype or c.dtype)
        layers, heads = (c.num_hidden_layers, batch_size, c.num_key_value_heads), c.head_size
        return {
            "k": jnp.zeros((*layers, heads, max_length), dtype), "v": jnp.zeros((*layers, max_length, heads), dtype),
            "segment": jnp.zeros((batch_size, max_length), jnp.int32),
            "index": jnp.zeros((), jnp.int32),
        }
