"""Lean LSN training end to end: with `config.lsn.lean` the train step differentiates only the selected
neurons' slices (`lsn.optim.NeuronView`). It gives the dense step's parameters to float32 rounding, keeps
every other element bit-identical, holds gradients and optimizer state of the slices' size only, and
computes no weight gradient of a frozen parameter."""
import jax
import numpy as np
import pytest

from seallm_jax import sharding as shd
from seallm_jax.lsn import optim as lsn_optim
from seallm_jax.lsn.neurons import NeuronSet
from seallm_jax.train.config import load_config
from seallm_jax.train.data_source import SyntheticSource
from seallm_jax.train.optim import build_optimizer, build_schedule
from seallm_jax.train.step import Trainer

STEPS = 3


@pytest.fixture(scope="module")
def neuron_file(tmp_path_factory):
    config = load_config("configs/tiny.py")
    layers, intermediate = config.model.num_hidden_layers, config.model.intermediate_size
    rng = np.random.default_rng(0)
    masks = np.zeros((layers, intermediate), bool)
    for layer in range(layers):  # a different count per layer: the slices are padded
        masks[layer, rng.choice(intermediate, size=3 + 2 * layer, replace=False)] = True
    path = tmp_path_factory.mktemp("neurons") / "neurons.json"
    NeuronSet.from_masks("lape", {"th": masks}, hidden_size=config.model.hidden_size,
                         num_parameters=1).save(path)
    return str(path), masks


def lsn_config(neurons, lean, matrices=("gate_proj", "up_proj", "down_proj")):
    config = load_config("configs/tiny.py")
    config.lsn.neurons, config.lsn.languages, config.lsn.lean = neurons, ["th"], lean
    config.lsn.matrices = list(matrices)
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 0
    return config


def make_trainer(config, devices=1):
    mesh = shd.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, jax.devices()[:devices])
    wrapper = lsn_optim.WRAPPER
    return Trainer(config, mesh, build_optimizer(config, wrapper), build_schedule(config),
                   trainable=wrapper.trainable(config))


def run(trainer, steps=STEPS):
    config = trainer.config
    source = SyntheticSource(vocab_size=config.model.vocab_size, seq_len=config.train.seq_len,
                             global_batch_size=config.train.global_batch_size, row_start=0,
                             row_stop=config.train.global_batch_size, seed=0)
    state = trainer.init_state(0)
    start = jax.device_get(state.params)
    batch = next(source)  # the same batch every step: the loss on it must fall
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, trainer.put_batch(batch))
        losses.append(float(metrics["loss"]))
    return start, state, losses


def nbytes(tree):
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("matrices", [("gate_proj", "up_proj", "down_proj"), ("up_proj", "down_proj")],
                         ids=["gate-up-down", "up-down"])
def test_lean_equals_dense_and_changes_only_the_neurons(neuron_file, matrices):
    path, masks = neuron_file
    dense_trainer = make_trainer(lsn_config(path, lean=False, matrices=matrices))
    lean_trainer = make_trainer(lsn_config(path, lean=True, matrices=matrices))
    assert dense_trainer.trainable is None and isinstance(lean_trainer.trainable, lsn_optim.NeuronView)
    start, dense, dense_losses = run(dense_trainer)
    _, lean, lean_losses = run(lean_trainer)
    np.testing.assert_allclose(lean_losses, dense_losses, rtol=1e-5)
    assert lean_losses[-1] < lean_losses[0]

    lean_params, dense_params = jax.device_get(lean.params), jax.device_get(dense.params)
    for (key_path, value), dense_value, before in zip(jax.tree_util.tree_flatten_with_path(lean_params)[0],
                                                      jax.tree.leaves(dense_params), jax.tree.leaves(start)):
        # AdamW normalises each step: float32 rounding of the gradient shows up as ~1e-6 absolute
        np.testing.assert_allclose(value, dense_value, rtol=1e-4, atol=2e-6)
        names = [getattr(k, "key", "") for k in key_path]
        if names[-2] in matrices:  # only the neurons' columns (gate/up) or rows (down) moved
            neuron_axis = 1 if names[-2] == "down_proj" else 2
            shape = [1, 1, 1]
            shape[0], shape[neuron_axis] = masks.shape
            inside = np.broadcast_to(masks.reshape(shape), value.shape)
            np.testing.assert_array_equal(value[~inside], before[~inside])  # bit-identical
            assert np.any(value[inside] != before[inside])
        else:
            np.testing.assert_array_equal(value, before)

    # Optimizer state: only the slices' moments (AdamW mu and nu), padded to the fullest layer.
    slices = lean_trainer.trainable.gather(start)
    assert nbytes(lean.opt_state) <= 2 * nbytes(slices) + 64
    assert nbytes(lean.opt_state) < nbytes(dense.opt_state) / 5


def test_lean_with_bfloat16_weights_keeps_float32_masters(neuron_file):
    """`config.model.param_dtype='bfloat16'` (frozen weights at half the memory): the optimizer steps
    float32 masters of the slices, the stored slices are the masters' rounding, every other element is
    bit-identical, and updates smaller than a bfloat16 step accumulate instead of rounding away: the
    masters move as the float32 run's parameters do from the same start."""
    import jax.numpy as jnp

    path, masks = neuron_file

    def config(param_dtype):
        config = lsn_config(path, lean=True)
        config.model.param_dtype = param_dtype
        config.optimizer.learning_rate = 1e-5  # AdamW steps of ~1e-5: under half a bfloat16 step of most weights
        return config

    narrow, wide = make_trainer(config("bfloat16")), make_trainer(config("float32"))
    start = narrow.init_state(0)
    start_params = jax.device_get(start.params)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(start_params))
    assert isinstance(start.opt_state, lsn_optim.LeanMasterState)
    as_float32 = jax.tree.map(lambda leaf: leaf.astype(np.float32), start_params)
    wide_state = wide.init_state(0, params=jax.device_put(as_float32, wide.param_shardings))
    assert not isinstance(wide_state.opt_state, lsn_optim.LeanMasterState)  # float32: no second copy

    batch = next(SyntheticSource(vocab_size=narrow.config.model.vocab_size, seq_len=narrow.config.train.seq_len,
                                 global_batch_size=narrow.config.train.global_batch_size, row_start=0,
                                 row_stop=narrow.config.train.global_batch_size, seed=0))
    state = start
    for _ in range(STEPS):
        state, _ = narrow.train_step(state, narrow.put_batch(batch))
        wide_state, _ = wide.train_step(wide_state, wide.put_batch(batch))

    view = narrow.trainable
    master = jax.device_get(state.opt_state.master)
    stored = view.gather(jax.device_get(state.params))
    for m, s in zip(jax.tree.leaves(master), jax.tree.leaves(stored)):
        assert m.dtype == np.float32
        np.testing.assert_array_equal(m.astype(jnp.bfloat16), s)  # the stored slice is the master's rounding

    master_moved = jax.tree.map(lambda m, s: m - s, master, view.gather(as_float32))
    wide_moved = jax.tree.map(lambda w, s: w - s, view.gather(jax.device_get(wide_state.params)),
                              view.gather(as_float32))
    for m, w in zip(jax.tree.leaves(master_moved), jax.tree.leaves(wide_moved)):
        # moves of ~3e-5 (3 steps of 1e-5). The forward passes see weights rounded differently, and AdamW's
        # normalisation magnifies that where a gradient is near zero: a few elements differ more.
        close = np.abs(m - w) <= 3e-6 + 1e-3 * np.abs(w)
        assert close.mean() > 0.98, f"{close.mean():.1%} of the masters moved as the float32 weights did"
    # Most trained weights moved less than their bfloat16 rounding step: without masters they would not move.
    stored_moved = [np.asarray(s, np.float32) != np.asarray(b, np.float32)
                    for s, b in zip(jax.tree.leaves(stored), jax.tree.leaves(view.gather(start_params)))]
    real = [np.abs(np.asarray(w)) > 0 for w in jax.tree.leaves(wide_moved)]  # not the padding units
    assert sum(int(np.sum(m & r)) for m, r in zip(stored_moved, real)) < 0.5 * sum(int(np.sum(r)) for r in real)

    final = jax.device_get(state.params)
    for (key_path, value), before in zip(jax.tree_util.tree_flatten_with_path(final)[0], jax.tree.leaves(start_params)):
        assert value.dtype == jnp.bfloat16
        names = [getattr(k, "key", "") for k in key_path]
        if names[-2] in ("gate_proj", "up_proj", "down_proj"):
            neuron_axis = 1 if names[-2] == "down_proj" else 2
            shape = [1, 1, 1]
            shape[0], shape[neuron_axis] = masks.shape
            inside = np.broadcast_to(masks.reshape(shape), value.shape)
            np.testing.assert_array_equal(value[~inside], before[~inside])
        else:
            np.testing.assert_array_equal(value, before)


def test_lean_step_computes_no_weight_gradient_of_a_frozen_parameter(neuron_file):
    """A weight gradient is a dot product that contracts the token axes (batch and length, or the two
    flattened) of both operands: the dense step's program has one for every kernel, the lean one only the
    slices' `[units, embed]`."""
    import re

    path, masks = neuron_file

    def weight_gradients(trainer):
        text = trainer.lower_train_step().as_text()
        token_axes = r"\[0(?:, 1)?\]"
        found = re.findall(rf"dot_general %[^,]+, %[^,]+, contracting_dims = {token_axes} x {token_axes}, "
                           r".*-> tensor<([0-9x]+f32)>", text)
        return {tuple(int(d) for d in shape.split("x")[:-1]) for shape in found}

    config = load_config("configs/tiny.py").model
    embed, intermediate, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    dense = weight_gradients(make_trainer(lsn_config(path, lean=False)))
    assert {(embed, intermediate), (intermediate, embed)} <= dense  # gate/up and down kernels
    assert any(vocab in shape for shape in dense)  # the LM head
    lean = weight_gradients(make_trainer(lsn_config(path, lean=True)))
    units = int(masks.sum(axis=1).max())  # the slices are padded to the fullest layer
    assert lean and all(units in shape and embed in shape for shape in lean), lean


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_lean_training_through_the_command_resumes(neuron_file, tmp_path, param_dtype):
    """`seallm-jax train` with lean LSN: the trainable line, and a resumed run equals an uninterrupted one
    (with bfloat16 weights, the float32 masters are checkpointed and restored with the optimizer state)."""
    import subprocess
    import sys

    from train_helpers import cli_env, metrics

    path, _ = neuron_file
    args = ["--config.lsn.neurons=" + path, "--config.lsn.languages=th", "--config.lsn.lean=true",
            "--config.train.steps=4", "--config.checkpoint.every=2", "--config.train.log_every=1",
            f"--config.model.param_dtype={param_dtype}"]

    def train(workdir, *extra):
        return subprocess.run([sys.executable, "-m", "seallm_jax.cli", "train", "--config", "configs/tiny.py",
                               "--workdir", str(workdir), *args, *extra], env=cli_env(1), capture_output=True,
                              text=True, timeout=600)

    whole = train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    assert "LSN: training" in whole.stdout + whole.stderr
    half = train(tmp_path / "resumed", "--config.train.steps=2")
    assert half.returncode == 0, half.stderr
    resumed = train(tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    losses = {r["step"]: r["loss"] for r in metrics(tmp_path / "whole") if "loss" in r}
    again = {r["step"]: r["loss"] for r in metrics(tmp_path / "resumed") if "loss" in r}
    assert set(losses) == set(again)
    np.testing.assert_allclose([again[s] for s in sorted(again)], [losses[s] for s in sorted(losses)], rtol=1e-5)
