"""The backward pass needs no transposed copy of an activation: in the compiled gradient of the model's
loss, no instruction writes a `[intermediate, tokens]` (or `[hidden, tokens]`) array.

A weight gradient is a product contracting the token axes of both operands. With the tokens as two axes
(batch, length) XLA:CPU laid one operand out transposed before that product: a copy of every MLP
activation gradient, 18-19% of a small training step's op time (issue 26). `model.qwen2.Dense` multiplies
over the tokens flattened to one axis, and the copies are gone."""
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seallm_jax import Qwen2Config, Qwen2ForCausalLM

CONFIG = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
BATCH, LENGTH = 4, 32


def compiled_gradient_hlo() -> str:
    graphdef, params = nnx.split(Qwen2ForCausalLM(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)

    def loss(params, ids):
        return jnp.mean(jnp.square(nnx.merge(graphdef, params)(ids)))

    ids = jnp.asarray(np.random.default_rng(0).integers(0, CONFIG.vocab_size, (BATCH, LENGTH)), jnp.int32)
    return jax.jit(jax.grad(loss)).lower(params, ids).compile().as_text()


def test_weight_gradients_read_the_activations_as_they_are():
    tokens = BATCH * LENGTH
    transposed = [rf"f32\[{width},{tokens}\]" for width in (CONFIG.intermediate_size, CONFIG.hidden_size)]
    transposed += [rf"f32\[{width},{BATCH},{LENGTH}\]" for width in (CONFIG.intermediate_size, CONFIG.hidden_size)]
    offenders = [line.strip()[:160] for line in compiled_gradient_hlo().splitlines()
                 if re.search(r"=\s*(" + "|".join(transposed) + r")\{", line)]
    assert not offenders, "transposed activation copies:\n" + "\n".join(offenders)
