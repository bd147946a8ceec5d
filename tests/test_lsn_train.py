"""train_neurons: one call trains a language's neurons through the training loop and returns the model;
bad input is a UserError before any training starts."""
import os

import numpy as np
import pytest
from flax import nnx

from seallm_jax import Qwen2Config, Qwen2ForCausalLM
from seallm_jax.data import load_corpus
from seallm_jax.tokenizer import VocabularySubset
from seallm_jax.errors import ConfigError, UnknownLanguageError, UserError
from seallm_jax.lsn import NeuronSet, NeuronTraining, heldout_perplexity, train_neurons
from seallm_jax.tokenizer import load_tokenizer

LAYERS, NEURONS = 2, 32


@pytest.fixture(scope="module")
def tokenizer():
    corpus = load_corpus(split="train", languages=["th", "vi"])
    return VocabularySubset.from_texts(load_tokenizer(), (d.text for docs in corpus.values() for d in docs[:300]))


@pytest.fixture(scope="module")
def model(tokenizer):
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=NEURONS, num_hidden_layers=LAYERS,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id)
    return Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))


def neuron_set(th_ids=(1, 5, 7), layers=LAYERS, neurons=NEURONS):
    masks = {"th": np.zeros((layers, neurons), bool), "vi": np.zeros((layers, neurons), bool)}
    masks["th"][:, list(th_ids)] = True
    masks["vi"][:, [2]] = True
    return NeuronSet.from_masks("lape", masks, hidden_size=32, num_parameters=100_000)


def params(model):
    return nnx.state(model, nnx.Param).to_pure_dict()


def test_train_neurons_returns_the_trained_model_and_changes_only_those_neurons(model, tokenizer, tmp_path):
    before = params(model)
    result = train_neurons(model, neuron_set(), "th", steps=3, tokenizer=tokenizer, batch_size=8, seq_len=32,
                           learning_rate=1e-2, workdir=tmp_path / "run")
    assert isinstance(result, NeuronTraining)
    assert sorted(result.losses) == [1, 2, 3] and all(np.isfinite(v) for v in result.losses.values())
    steps, losses = result.loss_curve()
    assert steps.tolist() == [1, 2, 3] and losses.shape == (3,)
    assert result.trained_neurons == 3 * LAYERS and result.languages == ["th"]
    assert result.workdir == os.path.join(str(tmp_path / "run"), "train")
    assert os.path.isfile(os.path.join(result.workdir, "config.json"))  # a complete, exportable workdir

    after = params(result.model)
    mask = neuron_set().mask(["th"])
    mlp_before, mlp_after = before["model"]["layers"]["mlp"], after["model"]["layers"]["mlp"]
    for name, owned in (("gate_proj", mask[:, None, :]), ("up_proj", mask[:, None, :]), ("down_proj", mask[:, :, None])):
        old, new = np.asarray(mlp_before[name]["kernel"]), np.asarray(mlp_after[name]["kernel"])
        owned = np.broadcast_to(owned, old.shape)
        np.testing.assert_array_equal(old[~owned], new[~owned], err_msg=name)
        assert (old[owned] != new[owned]).any(), name
    import jax

    for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree_util.tree_leaves(after)):
        if "mlp" not in str(path):
            np.testing.assert_array_equal(np.asarray(old), np.asarray(new), err_msg=str(path))


def test_train_neurons_without_workdir_leaves_nothing_behind(model, tokenizer, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = train_neurons(model, neuron_set(), ["th"], steps=1, tokenizer=tokenizer, batch_size=8, seq_len=32)
    assert result.workdir is None and os.listdir(tmp_path) == []
    assert set(heldout_perplexity(result.model, ["th", "vi"], tokenizer=tokenizer, max_tokens=64)) == {"th", "vi"}


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(steps=0), ConfigError, "steps must be a positive integer"),
    (dict(steps=2.5), ConfigError, "steps must be a positive integer"),
    (dict(learning_rate=0.0), ConfigError, "learning_rate must be positive"),
    (dict(languages="xx"), UnknownLanguageError, "xx"),
    (dict(languages="zh"), UnknownLanguageError, "the neuron set has no data for zh"),
    (dict(languages=""), ConfigError, "name at least one language"),
    (dict(neurons=neuron_set(layers=3)), ConfigError, "3 layers"),
    (dict(neurons=neuron_set(th_ids=())), ConfigError, "no neurons for th"),
    (dict(neurons="missing.json"), UserError, "missing.json"),
    (dict(model=42), UserError, "must be a Qwen2ForCausalLM or a model directory"),
    (dict(model="no/such/dir"), UserError, "no/such/dir"),
    (dict(tokenizer=None), ConfigError, "the built-in Qwen2 tokenizer has"),
    (dict(tokenizer=3), UserError, "tokenizer must be a directory"),
    (dict(overrides={"optimizer.no_such": 1}), ConfigError, "no such field"),
    (dict(overrides={"nosection.x": 1}), ConfigError, "no section 'nosection'"),
])
def test_bad_input_is_a_user_error_before_training(model, tokenizer, tmp_path, kwargs, error, message):
    arguments = dict(model=model, neurons=neuron_set(), languages="th", steps=2, tokenizer=tokenizer,
                     workdir=tmp_path / "run", batch_size=8, seq_len=32) | kwargs
    with pytest.raises(error, match=message):
        train_neurons(arguments.pop("model"), arguments.pop("neurons"), arguments.pop("languages"), **arguments)
    assert not os.path.exists(tmp_path / "run" / "train" / "checkpoints")
