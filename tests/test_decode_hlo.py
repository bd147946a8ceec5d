"""The KV cache is updated in place: in the compiled program of a decoding step (cache donated) and
of the whole generate loop, nothing copies, zero-fills or rebuilds the stacked keys or values
([layers, ...] arrays) or, in the loop, a layer's own arrays (`unstack_cache`); they are only ever
written by in-place dynamic-update-slices.

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
# A layer's arrays may also come from a dynamic-slice of the stack (the layer scan reading its layer: a
# read of the cache, not a write; only a per-layer array can be produced that way).
FREE_OPCODES = {"parameter", "get-tuple-element", "bitcast", "dynamic-update-slice", "dynamic-slice"}
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
    """The opcode of a computation's root, looking through a bitcast (free) to what it reshapes."""
    root = INSTRUCTION.match(next(line for line in lines if line.strip().startswith("ROOT")))
    if root.group(3) != "bitcast":
        return root.group(3)
    operand = re.match(r"\s*%?([\w.\-]+)", root.group(4)).group(1)
    source = next((m for m in map(INSTRUCTION.match, lines) if m and m.group(1) == operand), None)
    return source.group(3) if source else "bitcast"


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
                root = root_opcode(comps[fused])
                opcode = root if root in ("dynamic-update-slice", "dynamic-slice") else "fusion"
            if opcode not in FREE_OPCODES:
                offenders.append(f"{name}: {line.strip()[:160]}")
    return offenders


@pytest.fixture(scope="module")
def model():
    return Qwen2ForCausalLM(CONFIG, rngs=nnx.Rngs(0))


def cache_types(model, length, per_layer=False):
    """The HLO types of the stacked keys and values (stored in different layouts), and with `per_layer`
    those of one layer's arrays (the decoding loop carries per-layer arrays, `unstack_cache`; in the
    layer scan a layer's slice is read out of the stack, which is not a write of the cache)."""
    cache = jax.eval_shape(lambda: model.init_cache(BATCH, length))
    shapes = [a.shape[start:] for a in (cache["k"], cache["v"]) for start in ((0, 1) if per_layer else (0,))]
    return {f"{cache['k'].dtype.name.replace('float', 'f')}[{','.join(map(str, shape))}]" for shape in shapes}


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
    args = (graphdef, state, input_ids, jnp.ones_like(input_ids), jnp.zeros((model.config.vocab_size,), bool),
            jnp.int32(0), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0), jax.random.key(0))
    hlo = generate_module._generate_jit.lower(*args, max_new_tokens=NEW_TOKENS, greedy=True).compile().as_text()
    assert full_cache_writers(hlo, cache_types(model, PROMPT + NEW_TOKENS, per_layer=True), loop_bodies_only=True) == []


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
