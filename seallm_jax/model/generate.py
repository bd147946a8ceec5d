"""Jitted autoregressive decoding with the KV cache: greedy or sampled (temperature, top-k, top-p), with an
optional repetition penalty.

Prompts of different lengths are left-padded to a length bucket; prefill and the whole decode loop
(`jax.lax.while_loop`) run in one jitted call, compiled once per (batch, bucket, max_new_tokens).

Decoding. The prefill runs the layer scan over the stacked KV cache (keys [layers, batch, kv_heads,
head_dim, length], values [layers, batch, kv_heads, length, head_dim]: the layouts attention reads, so
no step transposes them), which rides in the scan's carry: each layer writes its new keys/values with a
`dynamic_update_slice`, in place. The decoding steps then run the layers unrolled over per-layer copies
of the weights and of the cache, made once before the `while_loop` (`Qwen2Model.unstack_layers`,
`unstack_cache`): the scan's dynamic slice of each stacked weight would copy the whole model at every
token, and slicing a layer's cache out of the stack copies it too. Each layer's cache is then written in
place (tests/test_decode_hlo.py checks the compiled program). That costs one extra copy of the decoder
weights (and of a tied LM head, stored [embed, vocab] for the decoding matmul) and of the cache for the
length of the call, and compiling the step grows with depth. `unroll_layers=False` (for a model that fills
the device) decodes through the layer scan instead: the stacked weights and cache are read where they are,
no copy is held, and each step is slower (the scan slices every layer's weights). `benchmarks/decode.py`
times both against the old path (cache as scan xs/ys) and `transformers.generate`.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seallm_jax.defaults import DEFAULT_MAX_NEW_TOKENS
from seallm_jax.errors import ConfigError
from seallm_jax.model.qwen2 import Qwen2ForCausalLM, unstack_cache

if TYPE_CHECKING:  # transformers is only needed for the text-level helper's type
    from transformers import PreTrainedTokenizerBase

Array = jax.Array
Float = Array  # float arrays (logits); the alias keeps signatures readable

# Prompts are left-padded to the next power of two at least this long, so that prompts of similar
# length share one compiled program.
MIN_PROMPT_BUCKET = 16
# Qwen2 chat models end a turn with <|im_end|> and a document with <|endoftext|>: stop at either.
QWEN2_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def prompt_bucket(length: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """The padded prompt length: the smallest power of two >= max(length, minimum)."""
    needed = max(int(length), int(minimum), 1)
    return 1 << (needed - 1).bit_length()


def left_pad(prompts: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask [batch, length], each prompt right-aligned (left padding)."""
    input_ids = np.zeros((len(prompts), length), np.int32)
    attention_mask = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            input_ids[row, length - len(prompt):] = prompt
            attention_mask[row, length - len(prompt):] = 1
    return input_ids, attention_mask


def _ordered_bits(x: Float) -> Array:
    """float32 -> uint32 in the same order (IEEE 754: set the sign bit of positives, flip every bit of
    negatives), so that a threshold can be found by bisecting integers. -0.0 maps to +0.0's key: they
    compare equal."""
    x = x.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.float32(0), x), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _smallest_true(predicate, low: Array, high: Array) -> Array:
    """Per row, the smallest uint32 u in (low, high] with `predicate(u)` [batch] true, for a predicate that is
    false at `low`, true at `high` and monotone in between: 32 halvings cover any uint32 interval."""
    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low) // 2
        true = predicate(middle)
        return jnp.where(true, low, middle), jnp.where(true, middle, high)

    return jax.lax.fori_loop(0, 32, halve, (low, high))[1]


def filter_logits(logits: Float, temperature: Array, top_k: Array, top_p: Array) -> Array:
    """Logits [batch, vocab] scaled by 1/temperature with everything outside top-k and top-p at -inf.

    Applied in `transformers`' order: temperature, then top-k (0 = off; tokens tied with the k-th are
    kept), then top-p (nucleus: the smallest set of most likely tokens whose probability reaches `top_p`,
    with every token tied with its least likely one; 1.0 = off). The most likely token always survives.

    Without sorting the vocabulary: each threshold is found by bisecting the logits' bit patterns (32
    passes of a count or a masked sum over [batch, vocab]), and skipped when its filter is off. A sort of
    Qwen2's 152k vocabulary at batch 4 took 104 ms on a 2-core CPU, longer than a Qwen2-0.5B decoding step.
    """
    logits = logits.astype(jnp.float32) / temperature
    vocab = logits.shape[-1]
    keys = _ordered_bits(logits)
    lowest, highest = jnp.min(keys, axis=-1), jnp.max(keys, axis=-1)

    def top_k_filter(logits):
        k = jnp.minimum(top_k, vocab)
        # The smallest u that fewer than k tokens reach; the k-th largest key is u - 1.
        beyond = _smallest_true(lambda u: jnp.sum(keys >= u[:, None], axis=-1) < k, lowest, highest + 1)
        return jnp.where(keys >= (beyond - 1)[:, None], logits, -jnp.inf)

    logits = jax.lax.cond(top_k > 0, top_k_filter, lambda logits: logits, logits)

    def top_p_filter(logits):
        probs = jax.nn.softmax(logits, axis=-1)
        # The least likely kept token is the smallest key u whose strictly more likely tokens hold < top_p
        # (a token is kept when the mass before it is below top_p); the top token's u always qualifies.
        mass_above = lambda u: jnp.sum(jnp.where(keys > u[:, None], probs, 0.0), axis=-1)
        threshold = _smallest_true(lambda u: mass_above(u) < top_p, jnp.zeros_like(lowest), highest)
        return jnp.where(keys >= threshold[:, None], logits, -jnp.inf)

    return jax.lax.cond(top_p < 1.0, top_p_filter, lambda logits: logits, logits)


def greedy_token(logits: Float) -> Array:
    """The most likely token of each row [batch] (the first on ties, as `jnp.argmax`), as a maximum and a
    minimum over the vocabulary: XLA:CPU runs `argmax`'s paired value-and-index reduction several times
    slower (1.3 vs 0.3 ms a step for Qwen2's 152k vocabulary at batch 4). A row with a NaN gets the last id."""
    vocab = logits.shape[-1]
    best = jnp.max(logits, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(logits == best, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)
    return jnp.minimum(first, vocab - 1)


def penalize_repetitions(logits: Float, seen: Array, penalty: Array) -> Float:
    """`transformers`' repetition penalty on logits [batch, vocab]: where `seen` [batch, vocab] (the tokens of
    the prompt and those generated so far), a positive logit is divided by `penalty` and a negative one
    multiplied by it, making a repeat less likely for `penalty` > 1. 1.0 changes nothing."""
    logits = logits.astype(jnp.float32)
    return jnp.where(seen, jnp.where(logits < 0, logits * penalty, logits / penalty), logits)


def _next_token(logits: Float, key: Array, temperature: Array, top_k: Array, top_p: Array, greedy: bool) -> Array:
    if greedy:
        return greedy_token(logits)
    filtered = filter_logits(logits, temperature, top_k, top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "unroll_layers"))
def _generate_jit(
    graphdef: nnx.GraphDef, state: nnx.State, input_ids: Array, attention_mask: Array, stop_mask: Array,
    pad_id: Array, temperature: Array, top_k: Array, top_p: Array, key: Array, *,
    max_new_tokens: int, greedy: bool, unroll_layers: bool = True, repetition_penalty: Array = 1.0,
    line_masks: tuple[Array, Array] | None = None,
) -> Array:
    """Prefill the left-padded prompts, then decode until every row emitted a stop token (`stop_mask`
    [vocab], bool: any number of them, one compiled program) or `max_new_tokens`. With `line_masks`
    (newline, text: [vocab] bool each, `first_line_masks`), a row also stops at a newline token once it has
    emitted a text token: its first non-empty line is complete."""
    model = nnx.merge(graphdef, state)
    batch, prompt_length = input_ids.shape
    cache = model.init_cache(batch, prompt_length + max_new_tokens)
    # Positions count real tokens only (as transformers' generate does), so padding does not shift them.
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0).astype(jnp.int32)
    # Prefill with the LM head on the last position only: full prompt logits would be
    # [batch, bucket, vocab] (GBs for Qwen2's 152k vocabulary). The cache is empty, so the prompt attends
    # within itself by the model's attention_impl (flash for a long prompt: no [bucket, cache] scores).
    logits, cache = model(input_ids, positions=positions, attention_mask=attention_mask, cache=cache,
                          last_position_only=True, fresh_cache=True)

    def emit(output, step, token, finished, armed):
        token = jnp.where(finished, pad_id, token)  # a finished row emits padding
        output = jax.lax.dynamic_update_slice(output, token[:, None], (0, step))
        finished = finished | stop_mask[token]
        if line_masks is not None:  # armed: the row has emitted text, so a newline ends its first line
            newline, text = line_masks
            finished, armed = finished | (armed & newline[token]), armed | text[token]
        return output, token, finished, armed

    # The decoding steps run the layers unrolled over per-layer copies of the weights, made once here,
    # outside the loop: the scan would slice (copy) every stacked weight at every token. A tied LM head
    # is copied [embed, vocab] once too: a few rows' matmul streams that layout ~1.6x faster on CPU.
    decode_layers, decode_head = None, None  # without unrolling: the layer scan over the stacked weights
    if unroll_layers:
        decode_layers = model.model.unstack_layers()
        decode_head = model.head().embed_first()
        cache = unstack_cache(cache)  # each layer's own cache arrays: read without slicing a copy out of a stack
    output = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    rows = jnp.arange(batch)
    # The tokens each row has seen, for the repetition penalty: its prompt (not the padding), then its output.
    seen = jnp.zeros((batch, logits.shape[-1]), jnp.int32).at[rows[:, None], input_ids].add(attention_mask) > 0
    logits = penalize_repetitions(logits[:, -1], seen, repetition_penalty)
    token = _next_token(logits, jax.random.fold_in(key, 0), temperature, top_k, top_p, greedy)
    output, token, finished, armed = emit(output, 0, token, jnp.zeros((batch,), bool), jnp.zeros((batch,), bool))

    def keep_going(carry):
        step, _, _, _, finished, _, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(finished)

    def decode_step(carry):
        step, cache, token, position, finished, armed, output, seen = carry
        seen = seen.at[rows, token].set(True)
        step_model = nnx.merge(graphdef, state)
        logits, cache = step_model(
            token[:, None], positions=position[:, None], attention_mask=jnp.ones((batch, 1), jnp.int32), cache=cache,
            unrolled_layers=decode_layers, head=decode_head,
        )
        logits = penalize_repetitions(logits[:, -1], seen, repetition_penalty)
        token = _next_token(logits, jax.random.fold_in(key, step), temperature, top_k, top_p, greedy)
        output, token, finished, armed = emit(output, step, token, finished, armed)
        return step + 1, cache, token, position + 1, finished, armed, output, seen

    carry = (jnp.int32(1), cache, token, positions[:, -1] + 1, finished, armed, output, seen)
    return jax.lax.while_loop(keep_going, decode_step, carry)[-2]


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                   repetition_penalty: float = 1.0) -> None:
    """A `ConfigError` naming the first decoding setting out of range (checked before any work)."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    if not repetition_penalty > 0:
        raise ConfigError(f"repetition_penalty must be > 0 (1.0 = off), got {repetition_penalty}")


def generate(
    model: Qwen2ForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_ids: int | Sequence[int] = (),
    pad_token_id: int = 0,
    seed: int = 0,
    min_prompt_bucket: int = MIN_PROMPT_BUCKET,
    unroll_layers: bool = True,
    repetition_penalty: float = 1.0,
    first_line_masks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """New tokens [batch, max_new_tokens] for a batch of token-id prompts of any lengths.

    `temperature=0` decodes greedily; otherwise tokens are sampled from the temperature-scaled
    distribution restricted by `top_k` (0 = off) and `top_p` (1.0 = off). A row stops after emitting
    one of `eos_token_ids` (the token is kept) and shows `pad_token_id` afterwards; there may be any number
    of them (e.g. every token whose text holds a stop string: `tokens_containing`), ids outside the
    vocabulary are never emitted and so never stop a row. `first_line_masks` (`first_line_masks(tokenizer,
    ...)`) also stops a row once its first non-empty line is complete, for callers that keep only that line.
    `repetition_penalty` > 1 makes tokens of the prompt and of the output so far less likely
    (`penalize_repetitions`, as `transformers`; 1.0 = off; before temperature and the filters).
    `unroll_layers=False` holds no second copy of the decoder weights during the call, at some speed
    (see the module docstring): for a model that fills the device's memory. The tokens are the same.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    if len(prompts) == 0:
        raise ConfigError("no prompts given")
    vocab_size = model.config.vocab_size
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ConfigError(f"prompt {row} is empty: every prompt needs at least one token")
        bad = [int(t) for t in prompt if not 0 <= int(t) < vocab_size]
        if bad:
            raise ConfigError(f"prompt {row} has token ids outside the model's vocabulary [0, {vocab_size}): {bad[:5]}")
    stop_mask = token_mask(eos_token_ids, vocab_size)
    line_masks = None
    if first_line_masks is not None:
        ends, newline, text = (np.asarray(m, bool).reshape(vocab_size) for m in first_line_masks)
        stop_mask, line_masks = stop_mask | ends, (jnp.asarray(newline), jnp.asarray(text))

    length = prompt_bucket(max(len(p) for p in prompts), min_prompt_bucket)
    input_ids, attention_mask = left_pad(prompts, length)
    graphdef, state = nnx.split(model)
    greedy = temperature == 0.0
    tokens = _generate_jit(
        graphdef, state, input_ids, attention_mask, jnp.asarray(stop_mask), jnp.int32(pad_token_id),
        jnp.float32(temperature if not greedy else 1.0), jnp.int32(top_k), jnp.float32(top_p),
        jax.random.key(seed), max_new_tokens=max_new_tokens, greedy=greedy, unroll_layers=bool(unroll_layers),
        repetition_penalty=jnp.float32(repetition_penalty), line_masks=line_masks,
    )
    if not tokens.is_fully_addressable:  # rows split over a multi-process mesh: every process gets them all
        from jax.experimental import multihost_utils

        tokens = multihost_utils.process_allgather(tokens, tiled=True)
    return np.asarray(jax.device_get(tokens))


def token_mask(token_ids: int | Sequence[int], vocab_size: int) -> np.ndarray:
    """[vocab_size] bool, True at `token_ids` (ids outside the vocabulary are left out)."""
    ids = np.atleast_1d(np.asarray(token_ids, np.int64)).reshape(-1)
    mask = np.zeros((vocab_size,), bool)
    mask[ids[(ids >= 0) & (ids < vocab_size)]] = True
    return mask


def tokens_containing(tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str], vocab_size: int) -> list[int]:
    """Ids of the tokens whose own text holds one of `stop_strings`. A sequence that emits one holds that
    string from there on, so decoding can stop after it and the text cut at the string's first occurrence
    is the text that decoding on would give (greedy decoding is causal). A string split over two tokens
    is not caught here, nor is a token that is part of a multi-byte character (alone it decodes to U+FFFD,
    not to its text in context): decoding then simply goes on to its limit."""
    stop_strings = [s for s in stop_strings if s]
    if not stop_strings:
        return []
    return [i for i, text in enumerate(_token_texts(tokenizer, vocab_size))
            if "\ufffd" not in text and any(s in text for s in stop_strings)]


def first_line_masks(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks [vocab_size] for stopping once a completion's first non-empty line is complete, i.e. for a
    caller that keeps `text.strip().split("\\n")[0]`: `ends` — tokens whose own text has a non-space
    character and then a newline (they complete it at once); `newline` — tokens with a newline (they complete
    it after some text); `text` — tokens with a non-space character (they are that text). Special tokens
    (dropped when decoding) and pieces of a multi-byte character (U+FFFD alone) are in none, so a row
    never stops before its first line is complete; at worst it decodes on."""
    special = set(tokenizer.all_special_ids)
    ends, newline, text = (np.zeros((vocab_size,), bool) for _ in range(3))
    for i, piece in enumerate(_token_texts(tokenizer, vocab_size)):
        if i in special:
            continue
        newline[i] = "\n" in piece
        if "\ufffd" in piece:
            continue
        text[i] = any(not ch.isspace() for ch in piece)
        before = piece.split("\n")[0]
        ends[i] = newline[i] and any(not ch.isspace() for ch in before)
    return ends, newline, text


def _token_texts(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str]:
    """Each token id's own text (the model's ids the tokenizer has: `min(vocab_size, len(tokenizer))`)."""
    size = min(vocab_size, len(tokenizer))
    return tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS plus Qwen2's end-of-turn / end-of-text tokens where the vocabulary has them."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    vocab = tokenizer.get_vocab()
    ids += [vocab[token] for token in QWEN2_STOP_TOKENS if token in vocab and vocab[token] not in ids]
    return ids


def generate_text(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    chat: bool = False,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_ids: Sequence[int] | None = None,
    unroll_layers: bool = True,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Completions of text prompts. `chat=True` wraps each prompt as a user turn in the tokenizer's chat
    template (ChatML for Qwen2) and asks for the assistant's reply. The returned text stops before EOS.
    `unroll_layers`, `repetition_penalty`: see `generate`.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if chat:
        encoded = [
            list(tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True, return_dict=False
            ))
            for prompt in prompts
        ]
    else:
        encoded = [tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]
    stops = list(eos_token_ids) if eos_token_ids is not None else stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    tokens = generate(
        model, encoded, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_token_ids=stops, pad_token_id=pad, seed=seed, unroll_layers=unroll_layers,
        repetition_penalty=repetition_penalty,
    )
    texts = []
    for row in tokens.tolist():
        end = next((i for i, token in enumerate(row) if token in stops), len(row))
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return texts
