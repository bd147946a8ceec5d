"""Masked LSN training: outside the neuron set every parameter element stays bit-identical; lean == dense."""
import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from seallm_jax.errors import DataFormatError
from seallm_jax.lsn.neurons import NeuronSet
from seallm_jax.lsn.optim import NeuronSlices, lsn_masked, trainable_count, trainable_groups
from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM

STEPS = 3
FFN = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def setup():
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # Qwen2: q/k/v biases too
    model = Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    params = state.to_pure_dict()
    rng = np.random.default_rng(0)
    # th and vi neurons overlap in layer 0; only th trains, so vi-only neurons must stay frozen.
    neuron_set = NeuronSet("lape", num_layers=2, intermediate_size=48, hidden_size=32,
                           num_parameters=config.num_parameters(),
                           languages={"th": {0: [1, 5, 7], 1: [0, 47]}, "vi": {0: [5, 9], 1: [3]}})
    tokens = rng.integers(0, 64, size=(4, 12)).astype(np.int32)
    return graphdef, params, neuron_set, tokens


def make_loss(graphdef, tokens):
    def loss(params):
        logits = nnx.merge(graphdef, params)(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    return loss


def inner_optimizer():
    # Clipping and undecayed-nothing weight decay are exactly what could leak into frozen weights.
    return optax.chain(optax.clip_by_global_norm(0.05), optax.adamw(1e-2, weight_decay=0.5))


def train(params, loss, optimizer, steps=STEPS):
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def selected_mask(path, shape, neuron_set):
    """Element mask of th's neurons for a parameter path (all False for non-FFN parameters)."""
    mask = np.zeros(shape, bool)
    if path[-2] in FFN:
        for layer, ids in neuron_set.languages["th"].items():
            if path[-2] == "down_proj":
                mask[layer, ids, :] = True
            else:
                mask[layer, :, ids] = True
    return mask


def flat(tree):
    return {tuple(str(k.key) for k in kp): np.asarray(v) for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def trained(setup):
    """(params, optimizer state) after STEPS masked steps on th's neurons, dense and lean."""
    graphdef, params, neuron_set, tokens = setup
    loss = make_loss(graphdef, tokens)
    return {lean: train(params, loss, lsn_masked(inner_optimizer(), neuron_set, languages=["th"], lean=lean))
            for lean in (False, True)}


@pytest.mark.parametrize("lean", [False, True])
def test_only_selected_elements_change(setup, trained, lean):
    _, params, neuron_set, _ = setup
    trained, _ = trained[lean]
    before, after = flat(params), flat(trained)
    assert ("lm_head", "kernel") not in before  # tied embeddings
    for path, old in before.items():
        new = after[path]
        mask = selected_mask(path, old.shape, neuron_set)
        # bit-identical outside (compare the raw bits, so -0.0 vs +0.0 would count as a change)
        np.testing.assert_array_equal(old.view(np.uint32)[~mask], new.view(np.uint32)[~mask], err_msg="/".join(path))
        assert np.all(old[mask] != new[mask]), f"{'/'.join(path)}: a selected element did not change"


def test_lean_and_dense_agree_and_lean_state_is_small(trained):
    (dense, dense_state), (lean, lean_state) = trained[False], trained[True]
    for path, value in flat(dense).items():
        np.testing.assert_allclose(flat(lean)[path], value, rtol=1e-6, atol=1e-6, err_msg="/".join(path))
    # Dense: moments only for the three FFN kernels (frozen leaves carry none); lean: only the gathered slices.
    kernel = 2 * 32 * 48
    state_size = lambda s: sum(np.size(x) for x in jax.tree.leaves(s) if np.ndim(x) > 0)  # noqa: E731
    assert state_size(dense_state) == 2 * 3 * kernel  # mu + nu
    assert state_size(lean_state) == 2 * 3 * 2 * 3 * 32  # mu + nu, 3 kernels, 2 layers x 3 (max) neurons x 32


def test_gradient_lean_step_matches_dense(setup, trained):
    """Differentiating w.r.t. the gathered slices only (gradient memory ~ selected neurons) gives the same."""
    graphdef, params, neuron_set, tokens = setup
    loss = make_loss(graphdef, tokens)
    dense, _ = trained[False]
    slices = NeuronSlices(trainable_groups(neuron_set, ["th"], params=params))
    inner = inner_optimizer()

    @jax.jit
    def step(params, trainable, state):
        grads = jax.grad(lambda t: loss(slices.scatter(params, t)))(trainable)
        updates, state = inner.update(grads, state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return slices.scatter(params, trainable), trainable, state

    trainable = slices.gather(params)
    state = inner.init(trainable)
    current = params
    for _ in range(STEPS):
        current, trainable, state = step(current, trainable, state)
    for path, value in flat(dense).items():
        # Adam divides by sqrt(v): a gradient rounded differently by 1 ulp can move an update by ~1e-4 x lr.
        np.testing.assert_allclose(flat(current)[path], value, rtol=1e-6, atol=1e-6, err_msg="/".join(path))


def test_matrix_choice(setup):
    """matrices=("up_proj", "down_proj") (PLND's reference) trains those two and leaves gate_proj as it was."""
    graphdef, params, neuron_set, tokens = setup
    optimizer = lsn_masked(inner_optimizer(), neuron_set, languages=["th"], matrices=("up_proj", "down_proj"))
    trained, _ = train(params, make_loss(graphdef, tokens), optimizer, steps=2)
    before, after = flat(params), flat(trained)
    np.testing.assert_array_equal(before[("model", "layers", "mlp", "gate_proj", "kernel")],
                                  after[("model", "layers", "mlp", "gate_proj", "kernel")])
    for matrix in ("up_proj", "down_proj"):
        path = ("model", "layers", "mlp", matrix, "kernel")
        assert np.any(before[path] != after[path]), matrix
    for attention_leaf in (key for key in before if "self_attn" in key):
        np.testing.assert_array_equal(before[attention_leaf], after[attention_leaf])


def test_neuron_file_with_attention_units_is_refused(tmp_path):
    path = tmp_path / "neurons.json"
    path.write_text(json.dumps({"method": "plnd", "num_layers": 2, "intermediate_size": 48, "languages": {},
                                "attention": {"q_proj": {"th": {"1": [2]}}}}))
    with pytest.raises(DataFormatError, match="attention units are not supported"):
        NeuronSet.load(path)


def test_trainable_count_and_errors(setup):
    _, params, neuron_set, _ = setup
    groups = trainable_groups(neuron_set, ["th"], params=params)
    trainable, total = trainable_count(params, groups)
    assert trainable == 5 * 3 * 32 and total == sum(np.size(x) for x in jax.tree.leaves(params))
    wrong = NeuronSet("lape", num_layers=2, intermediate_size=40, languages={"th": {0: [1]}})
    with pytest.raises(ValueError, match="gate_proj/kernel has shape"):
        lsn_masked(inner_optimizer(), wrong).init(params)
    with pytest.raises(ValueError, match="no neurons"):
        lsn_masked(inner_optimizer(), neuron_set, languages=["km"])
