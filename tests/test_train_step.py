"""The jitted train step: identical losses on every mesh layout, real sharding of params and optimizer
state, micro-batching, masked-token normalisation, and the optimizer's schedule and decay mask."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from seallm_jax import sharding as shd
from seallm_jax.errors import ConfigError
from seallm_jax.train.config import load_config
from seallm_jax.train.data_source import SyntheticSource
from seallm_jax.train.optim import build_optimizer, build_schedule, weight_decay_mask
from seallm_jax.train.step import Trainer, cross_entropy_sums
from train_helpers import TINY

STEPS = 3


def tiny_config(**train):
    config = load_config(TINY)
    config.train.update(**train)
    return config


def make_trainer(config, data=1, fsdp=1, tensor=1):
    n = data * fsdp * tensor
    mesh = shd.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, jax.devices()[:n])
    return Trainer(config, mesh, build_optimizer(config), build_schedule(config))


def batches(config, n=STEPS):
    source = SyntheticSource(vocab_size=config.model.vocab_size, seq_len=config.train.seq_len,
                             global_batch_size=config.train.global_batch_size, row_start=0,
                             row_stop=config.train.global_batch_size, seed=0)
    return [next(source) for _ in range(n)]


def run_steps(trainer, data):
    state = trainer.init_state(0)
    losses = []
    for batch in data:
        state, metrics = trainer.train_step(state, trainer.put_batch(batch))
        losses.append(float(metrics["loss"]))
    return state, np.array(losses)


@pytest.fixture(scope="module")
def reference():
    config = tiny_config()
    data = batches(config)
    _, losses = run_steps(make_trainer(config), data)
    return config, data, losses


@pytest.mark.parametrize("layout", [dict(data=8), dict(fsdp=8), dict(data=2, fsdp=2, tensor=2), dict(tensor=2, fsdp=4)],
                         ids=["data8", "fsdp8", "data2-fsdp2-tensor2", "tensor2-fsdp4"])
def test_every_mesh_gives_the_single_device_losses(reference, layout):
    config, data, expected = reference
    trainer = make_trainer(config, **layout)
    state, losses = run_steps(trainer, data)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    assert losses[-1] < losses[0]  # it trains

    # Params and AdamW moments are really split as the rules say.
    for tree in (state.params, state.opt_state[1][0].mu, state.opt_state[1][0].nu):
        up = tree["model"]["layers"]["mlp"]["up_proj"]["kernel"]
        expected_spec = shd.logical_to_spec(("layers", "embed", "mlp"), up.shape, trainer.mesh)
        assert up.sharding.spec == expected_spec
        shard_elements = up.addressable_shards[0].data.size
        split = np.prod([trainer.mesh.shape[a] for a in ("fsdp", "tensor") if a in str(expected_spec)])
        assert shard_elements * split == up.size
    if layout.get("fsdp", 1) > 1:
        assert state.params["lm_head"]["kernel"].addressable_shards[0].data.size < state.params["lm_head"]["kernel"].size
    if layout.get("tensor", 1) > 1:
        down = state.params["model"]["layers"]["mlp"]["down_proj"]["kernel"]
        assert down.sharding.spec == P(None, "tensor", "fsdp")


def test_micro_batches_accumulate_to_the_full_batch_gradient(reference):
    config, data, expected = reference
    config = tiny_config(micro_batches=4)
    _, losses = run_steps(make_trainer(config, fsdp=2), data)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_loss_is_normalised_by_the_target_tokens_of_the_global_batch():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    targets = jnp.asarray([[1, 2, 3], [4, 0, 1]])
    mask = jnp.asarray([[1, 1, 0], [1, 0, 0]], jnp.float32)
    ce_sum, _ = cross_entropy_sums(logits, targets, mask)
    log_probs = jax.nn.log_softmax(logits)
    expected = -(log_probs[0, 0, 1] + log_probs[0, 1, 2] + log_probs[1, 0, 4])
    np.testing.assert_allclose(ce_sum, expected, rtol=1e-6)
    # Masked-out (padding) positions do not move the loss.
    trainer = make_trainer(tiny_config())
    batch = batches(trainer.config, 1)[0]
    state = trainer.init_state(0)
    loss = trainer.eval_step(state.params, trainer.put_batch(batch))
    batch["targets"] = np.where(batch["loss_mask"] > 0, batch["targets"], 7)
    changed = trainer.eval_step(state.params, trainer.put_batch(batch))
    np.testing.assert_allclose(changed["loss_sum"], loss["loss_sum"], rtol=1e-6)
    assert float(loss["target_tokens"]) == batch["loss_mask"].sum()


def test_weight_decay_skips_norms_and_biases():
    params = {"model": {"norm": {"scale": 1}, "layers": {"self_attn": {"q_proj": {"kernel": 1, "bias": 1}}},
                        "embed_tokens": {"embedding": 1}}}
    mask = weight_decay_mask(params)
    assert mask["model"]["norm"]["scale"] is False
    assert mask["model"]["layers"]["self_attn"]["q_proj"]["bias"] is False
    assert mask["model"]["layers"]["self_attn"]["q_proj"]["kernel"] is True
    assert mask["model"]["embed_tokens"]["embedding"] is True


def test_schedule_warms_up_then_decays_to_the_end_ratio():
    config = tiny_config(steps=100)
    config.optimizer.update(learning_rate=1.0, warmup_steps=10, end_lr_ratio=0.1)
    for kind in ("cosine", "linear"):
        config.optimizer.schedule = kind
        schedule = build_schedule(config)
        assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.5)
        assert float(schedule(10)) == pytest.approx(1.0)
        assert float(schedule(100)) == pytest.approx(0.1, abs=1e-6)


def test_optimizer_wrapper_hook_wraps_the_whole_chain():
    config = tiny_config()
    seen = []

    def wrapper(optimizer, cfg):
        seen.append(cfg)
        return optax.chain(optimizer, optax.scale(0.0))  # e.g. a mask that freezes everything

    optimizer = build_optimizer(config, wrapper)
    params = {"w": jnp.ones((3, 3))}
    updates, _ = optimizer.update({"w": jnp.ones((3, 3))}, optimizer.init(params), params)
    assert seen == [config] and float(jnp.abs(updates["w"]).max()) == 0.0


@pytest.mark.parametrize("section, value", [("lsn.neurons", "neurons.json"), ("lora.rank", 4)])
def test_a_config_asking_for_lsn_or_lora_never_silently_trains_the_whole_model(section, value):
    config = tiny_config()
    name, field = section.split(".")
    config[name][field] = value
    with pytest.raises(ConfigError, match=f"config.{name} asks for .*WRAPPER"):
        build_optimizer(config)
