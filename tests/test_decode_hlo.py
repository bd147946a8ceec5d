"""The KV cache is updated in place: in the compiled program of a decoding step (cache donated) and
of the whole generate loop, nothing copies, zero-fills or rebuilds the stacked keys or values
([layers, ...] arrays); they are only ever written by in-place dynamic-update-slices.

(With the cache as the layer scan's xs/ys, as before issue 12, every step zero-filled a fresh stack,
wrote it layer by layer and copied it back into the cache's buffer.)"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seallm_jax import Qwen2Config, Qwen2ForCausalLM
from seallm_jax.model import generate as generate_module

CONFIG = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2)
BATCH, PROMPT, NEW_TOKENS = 2, 16, 8
STEP_CACHE_LENGTH = 2048  # long enough that the cache, not the per-layer weight slices, dominates temporaries
# What may produce a full-cache value: the cache coming in, read out of a tuple or reshaped for free,
# and dynamic-update-slice (which XLA performs in place on its operand's buffer).
FREE_OPCODES = {"parameter", "get-tuple-element", "bitcast", "dynamic-update-slice"}
CALLED = re.compile(r"(?:calls|body|condition|to_apply)=%?([\w.\-]+)")
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+?)(?:\{[^}]*\})?\s+([\w\-]+)\((.*)$")


def computations(hlo: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines (the ENTRY computation under 'ENTRY')."""
    found, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header:
            current = "ENTRY" if header.group(1) else header.group(2)
            found[current] = []
        elif current is not None and line.strip() and line.strip() != "}":
            found[current].append(line)
    return found


def root_opcode(lines: list[str]) -> str:
    root = next(line for line in lines if line.strip().startswith("ROOT"))
    return INSTRUCTION.match(root).group(3)


def reachable(comps: dict[str, list[str]], starts: list[str]) -> set[str]:
    seen, todo = set(), list(starts)
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        todo += [called for line in comps[name] for called in CALLED.findall(line)]
    return seen


def full_cache_writers(hlo: str, cache_types: set[str], *, loop_bodies_only: bool) -> list[str]:
    """Instructions (in loop bodies, or anywhere) that produce a whole cache other than in place."""
    comps = computations(hlo)
    if loop_bodies_only:
        bodies = [b for lines in comps.values() for line in lines for b in re.findall(r"body=%?([\w.\-]+)", line)]
        scope = reachable(comps, bodies)
    else:
        scope = reachable(comps, ["ENTRY"])
    offenders = []
    for name in scope:
        for line in comps[name]:
            match = INSTRUCTION.match(line)
            if not match or match.group(2) not in cache_types:
                continue
            opcode = match.group(3)
            if opcode == "fusion":  # a fusion is in place when its fused computation ends in the update
                fused = re.search(r"calls=%?([\w.\-]+)", line).group(1)
                opcode = "dynamic-update-slice" if root_opcode(comps[fused]) == "dynamic-update-slice" else "fusion"
            if opcode not in FREE_OPCODES:
                offenders.append(f"{name}: {line.strip()[:160]}")
    return offenders


@pytest.fixture(scope="module")
def model():
    return Qwen2ForCausalLM(CONFIG, rngs=nnx.Rngs(0))


def cache_types(model, length):
    """The HLO types of the stacked keys and values (stored in different layouts)."""
    cache = jax.eval_shape(lambda: model.init_cache(BATCH, length))
    return {f"{a.dtype.name.replace('float', 'f')}[{','.join(map(str, a.shape))}]" for a in (cache["k"], cache["v"])}


def test_a_decoding_step_updates_the_donated_cache_in_place(model):
    graphdef, state = nnx.split(model)
    length = STEP_CACHE_LENGTH

    def step(state, cache, token):
        logits, cache = nnx.merge(graphdef, state)(
            token, positions=jnp.broadcast_to(cache["index"], token.shape), attention_mask=jnp.ones_like(token),
            cache=cache)
        return logits, cache

    token = jnp.zeros((BATCH, 1), jnp.int32)
    compiled = jax.jit(step, donate_argnums=1).lower(state, model.init_cache(BATCH, length), token).compile()
    assert full_cache_writers(compiled.as_text(), cache_types(model, length), loop_bodies_only=False) == []
    cache_bytes = 2 * int(np.prod(model.init_cache(BATCH, length)["k"].shape)) * 4  # k and v, float32
    memory = compiled.memory_analysis()
    if memory is not None:  # the donated cache is the output cache: aliased, and no second one in temporaries
        assert memory.alias_size_in_bytes >= cache_bytes
        assert memory.temp_size_in_bytes < cache_bytes / 2


def test_the_generate_loop_never_copies_the_cache(model):
    graphdef, state = nnx.split(model)
    input_ids = jnp.zeros((BATCH, PROMPT), jnp.int32)
    args = (graphdef, state, input_ids, jnp.ones_like(input_ids), jnp.full((generate_module.MAX_STOP_TOKENS,), -1),
            jnp.int32(0), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0), jax.random.key(0))
    hlo = generate_module._generate_jit.lower(*args, max_new_tokens=NEW_TOKENS, greedy=True).compile().as_text()
    assert full_cache_writers(hlo, cache_types(model, PROMPT + NEW_TOKENS), loop_bodies_only=True) == []


def test_unrolled_layers_give_the_scan_s_logits_and_cache(model):
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(0, CONFIG.vocab_size, (BATCH, PROMPT)), jnp.int32)
    token = jnp.asarray(rng.integers(0, CONFIG.vocab_size, (BATCH, 1)), jnp.int32)
    _, cache = model(prompt, cache=model.init_cache(BATCH, PROMPT + 2))
    scanned, scanned_cache = model(token, cache=cache)
    unrolled, unrolled_cache = model(token, cache=cache, unrolled_layers=model.model.unstack_layers())
    np.testing.assert_allclose(unrolled, scanned, atol=1e-6)
    for name in ("k", "v", "segment", "index"):
        np.testing.assert_allclose(unrolled_cache[name], scanned_cache[name], atol=1e-6, err_msg=name)
