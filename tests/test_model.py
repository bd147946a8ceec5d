"""Numerics contract: seallm-jax logits match transformers' Qwen2/Llama within 1e-4 in float32."""
import numpy as np
import pytest
from flax import nnx

from hf_models import PARITY_CONFIGS, make_hf_model, save_hf_model, torch_logits
from seallm_jax import Qwen2Config, Qwen2ForCausalLM, hf, param_logical_axes

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=sorted(PARITY_CONFIGS))
def model_pair(request, tmp_path_factory):
    torch_model = make_hf_model(request.param)
    path = save_hf_model(torch_model, tmp_path_factory.mktemp(request.param))
    return torch_model, hf.load_pretrained(path)


def random_ids(vocab_size, shape, seed=0):
    return np.random.RandomState(seed).randint(0, vocab_size, shape).astype(np.int32)


def test_logits_match_transformers(model_pair):
    torch_model, model = model_pair
    ids = random_ids(torch_model.config.vocab_size, (2, 13))
    np.testing.assert_allclose(np.asarray(model(ids)), torch_logits(torch_model, ids), atol=TOLERANCE, rtol=0)


def test_logits_match_with_padding(model_pair):
    torch_model, model = model_pair
    ids = random_ids(torch_model.config.vocab_size, (3, 10), seed=1)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    ours = np.asarray(model(ids, attention_mask=mask))
    theirs = torch_logits(torch_model, ids, attention_mask=mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=TOLERANCE, rtol=0)


def test_packed_segments_equal_separate_runs(model_pair):
    torch_model, model = model_pair
    lengths = [5, 3, 6]
    documents = [random_ids(torch_model.config.vocab_size, (1, n), seed=10 + i) for i, n in enumerate(lengths)]
    packed = np.concatenate(documents + [np.zeros((1, 2), np.int32)], axis=1)  # two padding tokens at the end
    segments = np.concatenate([np.full((1, n), i + 1) for i, n in enumerate(lengths)] + [np.zeros((1, 2))], axis=1)
    ours = np.asarray(model(packed, segment_ids=segments.astype(np.int32)))
    start = 0
    for document in documents:
        n = document.shape[1]
        np.testing.assert_allclose(ours[0, start:start + n], torch_logits(torch_model, document)[0], atol=TOLERANCE, rtol=0)
        start += n


def test_config_round_trips_through_hf_json(model_pair):
    torch_model, model = model_pair
    config = model.config
    assert Qwen2Config.from_hf(config.to_hf()) == config
    assert config.rope_theta == torch_model.config.rope_parameters["rope_theta"]


def test_legacy_top_level_rope_theta_is_read():
    hf_config = Qwen2Config(rope_theta=12345.0).to_hf()
    del hf_config["rope_parameters"]
    assert Qwen2Config.from_hf(hf_config).rope_theta == 12345.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "unsupported architecture"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "rope_type"),
        ({"use_sliding_window": True}, "use_sliding_window"),
    ],
)
def test_unsupported_config_values_are_named(change, message):
    hf_config = Qwen2Config().to_hf()
    hf_config.update(change)
    with pytest.raises(ValueError, match=message):
        Qwen2Config.from_hf(hf_config)


def test_remat_and_dtype_options_keep_numerics():
    config = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    ids = random_ids(97, (2, 8))
    reference = np.asarray(Qwen2ForCausalLM(config, rngs=nnx.Rngs(3))(ids))
    remat = np.asarray(Qwen2ForCausalLM(config.replace(remat="full"), rngs=nnx.Rngs(3))(ids))
    np.testing.assert_array_equal(reference, remat)
    bf16 = Qwen2ForCausalLM(config.replace(dtype="bfloat16"), rngs=nnx.Rngs(3))
    assert bf16.model.layers.mlp.up_proj.kernel.value.dtype == np.float32  # master weights stay fp32
    np.testing.assert_allclose(np.asarray(bf16(ids)), reference, atol=5e-2)


def test_every_parameter_has_logical_axes_of_its_rank():
    config = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    params = nnx.state(nnx.eval_shape(lambda: Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))), nnx.Param).to_pure_dict()
    axes = param_logical_axes(params)
    import jax

    flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    flat_axes = dict(jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))[0])
    assert flat_params.keys() == flat_axes.keys()
    for path, leaf in flat_params.items():
        assert len(flat_axes[path]) == leaf.ndim, path
    assert axes["model"]["layers"]["mlp"]["down_proj"]["kernel"] == ("layers", "mlp", "embed")


def test_ffn_probe_and_gate_scale():
    config = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    model = Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))
    ids = random_ids(97, (2, 8))
    hidden, probes = model.hidden_states(ids, ffn_probe=lambda gate, h, down: (gate > 0).sum(axis=(0, 1)))
    assert probes.shape == (3, 40) and hidden.shape == (2, 8, 32)
    np.testing.assert_allclose(np.asarray(model.logits(hidden)), np.asarray(model(ids)), atol=1e-6)
    ones = np.ones((3, 40), np.float32)
    np.testing.assert_allclose(np.asarray(model(ids, ffn_gate_scale=ones)), np.asarray(model(ids)), atol=1e-6)
    zeros = np.zeros((3, 40), np.float32)  # every neuron off: the MLPs add nothing
    _, active = model.hidden_states(ids, ffn_gate_scale=zeros, ffn_probe=lambda gate, h, down: abs(h).max())
    assert float(active.max()) == 0.0


def test_presets_are_the_released_shapes_and_the_defaults_are_qwen2_0_5b():
    from seallm_jax.errors import ConfigError

    assert Qwen2Config.preset("qwen2-0.5b") == Qwen2Config()
    big = Qwen2Config.preset("qwen2-7b", dtype="bfloat16")
    assert (big.hidden_size, big.num_hidden_layers, big.vocab_size, big.tie_word_embeddings) == (3584, 28, 152064, False)
    assert big.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="qwen2-0.5b"):
        Qwen2Config.preset("qwen2-72b")
