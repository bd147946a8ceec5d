"""The one evaluator (`train.evaluate`): exact against the model's full logits on packed batches with
segments, padding and gate scales; chunking and a mesh change nothing; the trainer's held-out loss is it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seallm_jax import sharding as shd
from seallm_jax.errors import DataFormatError
from seallm_jax.eval.testing import tiny_model
from seallm_jax.train.evaluate import Evaluator, log_likelihood_sums


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


def packed_batch(rows=4, length=24, vocab=256, seed=0):
    """Rows holding two documents each and some padding (segment 0, loss_mask 0)."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, vocab, (rows, length)).astype(np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    for row in range(rows):
        first, second = 7 + row, 16 + row // 2
        segment_ids[row, :first], segment_ids[row, first:second] = 1, 2
    targets = np.roll(input_ids, -1, axis=1)
    loss_mask = ((segment_ids > 0) & (np.roll(segment_ids, -1, axis=1) == segment_ids)).astype(np.float32)
    return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask, "segment_ids": segment_ids}


def direct_sums(model, batch, gate_scale=None):
    logits = model(jnp.asarray(batch["input_ids"]), segment_ids=jnp.asarray(batch["segment_ids"]),
                   ffn_gate_scale=gate_scale)
    log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), np.float64)
    picked = np.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    greedy = np.argmax(log_probs, axis=-1) == batch["targets"]
    mask = batch["loss_mask"] > 0
    return (np.where(mask, picked, 0).sum(axis=1), mask.sum(axis=1), np.all(greedy | ~mask, axis=1))


@pytest.mark.parametrize("chunk_tokens", [7, 32, 4096])  # ragged chunks, several, one
def test_sums_equal_the_full_logits_whatever_the_chunking(model, chunk_tokens):
    batch = packed_batch()
    gate_scale = jnp.asarray(np.random.default_rng(1).random((model.config.num_hidden_layers,
                                                                model.config.intermediate_size)), jnp.float32)
    for scale in (None, gate_scale):
        sums = jax.jit(lambda b, s: log_likelihood_sums(model, b, gate_scale=s, chunk_tokens=chunk_tokens))(
            {k: jnp.asarray(v) for k, v in batch.items()}, scale)
        log_likelihood, tokens, greedy = direct_sums(model, batch, scale)
        np.testing.assert_allclose(sums["log_likelihood"], log_likelihood, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(sums["target_tokens"], tokens)
        np.testing.assert_array_equal(sums["all_greedy"], greedy)


def test_loss_is_the_token_mean_over_batches_and_a_mesh_changes_nothing(model):
    batches = [packed_batch(seed=0), packed_batch(seed=1)]
    direct = [direct_sums(model, batch) for batch in batches]
    expected = -sum(d[0].sum() for d in direct) / sum(d[1].sum() for d in direct)
    loss, tokens = Evaluator(model, chunk_tokens=16).loss(batches)
    assert tokens == sum(int(d[1].sum()) for d in direct)
    assert loss == pytest.approx(expected, rel=1e-5)

    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    sharded = Evaluator(model, mesh, chunk_tokens=16)
    up = sharded.params["model"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert up.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")  # placed as training does
    sharded_loss, sharded_tokens = sharded.loss(batches)
    assert sharded_tokens == tokens and sharded_loss == pytest.approx(loss, rel=1e-5)
    assert sharded.compile_count == 1  # one program for every batch of the same shape


def test_bad_batches_are_clear_errors(model):
    batch = packed_batch()
    with pytest.raises(DataFormatError, match="no target tokens"):
        Evaluator(model).loss([{**batch, "loss_mask": np.zeros_like(batch["loss_mask"])}])
    with pytest.raises(DataFormatError, match="lacks \\['segment_ids'\\]"):
        Evaluator(model).loss([{k: v for k, v in batch.items() if k != "segment_ids"}])
    mesh = shd.make_mesh({"data": 8, "fsdp": 1, "tensor": 1}, jax.devices()[:8])
    with pytest.raises(DataFormatError, match="does not split over the 8 devices"):
        Evaluator(model, mesh).loss([batch])
