"""Chunked cross-entropy: the same loss, z-loss and gradients as the full-logits loss (tied and
untied heads, ragged chunks, masks, bfloat16), no full [tokens, vocab] residual, three head matmuls
per token (not four), and the same train step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seallm_jax import Qwen2Config, Qwen2ForCausalLM
from seallm_jax.model.qwen2 import LMHead
from seallm_jax.train.loss import chunked_cross_entropy_loss, cross_entropy_sums

VOCAB = 97


def tiny_model(tied: bool) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))


def batch(rows=3, length=11, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, VOCAB, (rows, length + 1)).astype(np.int32)
    mask = (rng.rand(rows, length) > 0.3).astype(np.float32)
    return jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:]), jnp.asarray(mask)


def loss_terms(model, input_ids, targets, mask, chunk_tokens):
    """(ce_sum, z_sum) and the gradients of ce_sum + 0.1 z_sum w.r.t. every parameter."""
    graphdef, params = nnx.split(model, nnx.Param)

    def objective(params):
        m = nnx.merge(graphdef, params)
        if chunk_tokens is None:
            ce, z = cross_entropy_sums(m(input_ids), targets, mask)
            return ce + 0.1 * z, (ce, z)
        hidden, _ = m.hidden_states(input_ids)
        return chunked_cross_entropy_loss(hidden, m.head(), targets, mask, z_loss_weight=0.1,
                                          chunk_tokens=chunk_tokens)

    grads, (ce, z) = jax.jit(jax.grad(objective, has_aux=True))(params)
    return ce, z, grads


@functools.lru_cache(maxsize=None)
def full_logits_reference(tied: bool) -> tuple:
    """The model, batch and full-logits (ce, z, gradients) every chunk size is compared with: compiled
    once per head, not once per chunk size."""
    model = tiny_model(tied)
    input_ids, targets, mask = batch()
    return model, (input_ids, targets, mask), loss_terms(model, input_ids, targets, mask, None)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("chunk_tokens", [3, 12, 10_000], ids=["one_position", "ragged", "one_chunk"])
def test_chunked_equals_full_values_and_gradients(tied, chunk_tokens):
    model, (input_ids, targets, mask), (full_ce, full_z, full_grads) = full_logits_reference(tied)
    ce, z, grads = loss_terms(model, input_ids, targets, mask, chunk_tokens)
    np.testing.assert_allclose(ce, full_ce, rtol=1e-6)
    np.testing.assert_allclose(z, full_z, rtol=1e-6)
    for (path, ours), theirs in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(full_grads)):
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))


def ones_loss(rows, length, embed, vocab):
    """All-ones hidden states and untied head [embed, vocab], and the chunked loss of them (16-token chunks)."""
    targets, mask = jnp.zeros((rows, length), jnp.int32), jnp.ones((rows, length))

    def loss(hidden, head):
        return chunked_cross_entropy_loss(hidden, LMHead(head, vocab_first=False), targets, mask, chunk_tokens=16)[0]
    return jnp.ones((rows, length, embed)), jnp.ones((embed, vocab)), loss


def test_chunked_loss_saves_no_full_logits():
    rows, length, embed, vocab = 4, 64, 8, 1000
    hidden, head, loss = ones_loss(rows, length, embed, vocab)

    residuals = jax.eval_shape(lambda h, w: jax.vjp(loss, h, w)[1], hidden, head)
    largest = max(leaf.size for leaf in jax.tree.leaves(residuals))
    assert largest < rows * length * vocab / 4  # the full logits would be rows * length * vocab


def test_train_step_chunked_equals_full_logits():
    from seallm_jax import sharding as shd
    from seallm_jax.train.config import base_config
    from seallm_jax.train.optim import build_optimizer, build_schedule
    from seallm_jax.train.step import Trainer

    def run(chunk_tokens):
        config = base_config()
        config.model.update(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
        config.train.update(global_batch_size=2, seq_len=16, z_loss_weight=1e-3)
        config.train.loss_chunk_tokens = chunk_tokens
        mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        trainer = Trainer(config, mesh, build_optimizer(config), build_schedule(config))
        rng = np.random.RandomState(0)
        ids = rng.randint(0, VOCAB, (2, 17)).astype(np.int32)
        local = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((2, 16), np.float32),
                 "segment_ids": np.ones((2, 16), np.int32),
                 "positions": np.tile(np.arange(16, dtype=np.int32), (2, 1))}
        state, metrics = trainer.train_step(trainer.init_state(0), trainer.put_batch(local))
        return metrics, state.params

    full_metrics, full_params = run(0)
    chunked_metrics, chunked_params = run(5)
    for key in ("loss", "z_loss", "grad_norm"):
        np.testing.assert_allclose(chunked_metrics[key], full_metrics[key], rtol=1e-5, err_msg=key)
    for ours, theirs in zip(jax.tree.leaves(chunked_params), jax.tree.leaves(full_params)):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_chunked_loss_lowers_the_compiled_steps_temporaries():
    """Trainer.lower_train_step compiles for abstract inputs; the chunked loss needs less scratch."""
    from seallm_jax import sharding as shd
    from seallm_jax.train.config import base_config
    from seallm_jax.train.optim import build_optimizer, build_schedule
    from seallm_jax.train.step import Trainer

    def temporaries(chunk_tokens):
        config = base_config()
        config.model.update(vocab_size=8192, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
        config.train.update(global_batch_size=4, seq_len=64)
        config.train.loss_chunk_tokens = chunk_tokens
        mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        trainer = Trainer(config, mesh, build_optimizer(config), build_schedule(config))
        return trainer.lower_train_step().compile().memory_analysis().temp_size_in_bytes

    full_logits = 4 * 64 * 8192 * 4  # bytes of the float32 logits alone
    assert temporaries(0) - temporaries(32) > full_logits  # at least the logits and their gradient saved


def head_matmuls(jaxpr, vocab: int) -> int:
    """dot_generals with an operand or result of `vocab` columns, in `jaxpr` and every jaxpr inside it."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes = [v.aval.shape for v in (*eqn.invars, *eqn.outvars)]
            count += any(vocab in shape for shape in shapes)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += head_matmuls(inner, vocab)
    return count


def test_chunked_loss_gradient_costs_three_head_matmuls():
    """Logits, hidden gradient and head gradient: the backward does not recompute the logits (one
    scan body per pass, so each matmul is counted once)."""
    rows, length, embed, vocab = 2, 32, 8, 1000
    hidden, head, loss = ones_loss(rows, length, embed, vocab)

    assert head_matmuls(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(hidden, head).jaxpr, vocab) == 3


def test_chunked_loss_metrics_carry_no_gradient():
    hidden = jnp.ones((1, 8, 4))
    head = jnp.ones((4, 16))
    targets, mask = jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8))
    grad = jax.grad(lambda h: chunked_cross_entropy_loss(h, LMHead(head, vocab_first=False), targets, mask)[1][0])(hidden)
    assert not np.any(np.asarray(grad))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_chunked_equals_full_in_bfloat16_compute(tied):
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied, dtype="bfloat16")
    model = Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))
    input_ids, targets, mask = batch()
    full_ce, full_z, full_grads = loss_terms(model, input_ids, targets, mask, None)
    ce, z, grads = loss_terms(model, input_ids, targets, mask, 12)
    np.testing.assert_allclose(ce, full_ce, rtol=1e-2)
    np.testing.assert_allclose(z, full_z, rtol=1e-2)
    for (path, ours), theirs in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(full_grads)):
        assert ours.dtype == theirs.dtype == jnp.float32, jax.tree_util.keystr(path)
        np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=5e-2, err_msg=jax.tree_util.keystr(path))
