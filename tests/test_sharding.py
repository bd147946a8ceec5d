"""Mesh construction, logical-axis rules and placing arrays/batches on the mesh (8 fake CPU devices)."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from seallm_jax import sharding as shd
from seallm_jax.model import param_logical_axes


def mesh(data=1, fsdp=1, tensor=1):
    return shd.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, jax.devices()[: data * fsdp * tensor])


def test_minus_one_takes_the_remaining_devices():
    m = shd.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert m.axis_names == ("data", "fsdp", "tensor")


def test_mesh_that_does_not_fit_the_devices_is_an_error():
    with pytest.raises(ValueError, match="needs 16 devices"):
        shd.make_mesh({"data": 4, "fsdp": 4, "tensor": 1})
    with pytest.raises(ValueError, match="only one mesh axis may be -1"):
        shd.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})


def test_fsdp_takes_the_largest_embed_or_vocab_dim():
    m = mesh(fsdp=8)
    # embedding [V, E]: vocab is larger -> fsdp on vocab
    assert shd.logical_to_spec(("vocab", "embed"), (256, 64), m) == P("fsdp", None)
    # up_proj [L, E, I]: only embed is an FSDP dim
    assert shd.logical_to_spec(("layers", "embed", "mlp"), (2, 64, 128), m) == P(None, "fsdp", None)
    # norms are replicated
    assert shd.logical_to_spec(("layers", "norm"), (2, 64), m) == P(None, None)


def test_activations_take_the_batch_over_data_and_fsdp_and_features_only_over_tensor():
    from seallm_jax.model.qwen2 import HIDDEN_AXES, LOGITS_AXES, MLP_AXES, QUERY_AXES

    m = mesh(data=2, fsdp=2, tensor=2)
    assert shd.logical_to_spec(HIDDEN_AXES, (8, 16, 64), m) == P(("data", "fsdp"), None, None)
    assert shd.logical_to_spec(MLP_AXES, (8, 16, 128), m) == P(("data", "fsdp"), None, "tensor")
    assert shd.logical_to_spec(QUERY_AXES, (8, 16, 4, 16), m) == P(("data", "fsdp"), None, "tensor", None)
    assert shd.logical_to_spec(LOGITS_AXES, (8, 16, 256), m) == P(("data", "fsdp"), None, "tensor")
    # a parameter's embed dim takes 'fsdp'; an activation's never does
    assert shd.logical_to_spec(("embed", "mlp"), (64, 128), m) == P("fsdp", "tensor")


def test_constrain_pins_activations_inside_activation_sharding_only():
    from seallm_jax.model.axes import constrain
    from seallm_jax.model.qwen2 import MLP_AXES

    m = mesh(data=2, fsdp=2, tensor=2)

    def traced(inside: bool) -> str:
        def f(x):  # a new function each time: jax caches traces per function, not per context
            return constrain(x * 2, MLP_AXES)
        x = np.ones((8, 16, 128), np.float32)
        if not inside:
            return str(jax.make_jaxpr(f)(x))
        with shd.activation_sharding(m):
            return str(jax.make_jaxpr(f)(x))

    assert "sharding_constraint" not in traced(inside=False)
    jaxpr = traced(inside=True)
    assert "sharding_constraint" in jaxpr and "tensor" in jaxpr


def test_tensor_axis_takes_mlp_heads_and_vocab():
    m = mesh(fsdp=4, tensor=2)
    assert shd.logical_to_spec(("layers", "embed", "mlp"), (2, 64, 128), m) == P(None, "fsdp", "tensor")
    assert shd.logical_to_spec(("layers", "mlp", "embed"), (2, 128, 64), m) == P(None, "tensor", "fsdp")
    assert shd.logical_to_spec(("layers", "embed", "kv_heads"), (2, 64, 32), m) == P(None, "fsdp", "tensor")
    assert shd.logical_to_spec(("vocab", "embed"), (256, 64), m) == P("tensor", "fsdp")


def test_a_dim_the_mesh_does_not_divide_stays_replicated():
    m = mesh(fsdp=8)
    assert shd.logical_to_spec(("embed", "mlp"), (12, 20), m) == P(None, None)


def test_unknown_logical_axis_names_the_rule_to_add():
    with pytest.raises(KeyError, match="'experts' has no rule"):
        shd.logical_to_spec(("experts",), (8,), mesh(fsdp=8))


def test_batch_is_split_over_data_and_fsdp():
    m = mesh(data=2, fsdp=2, tensor=2)
    assert shd.batch_sharding(m, batch_size=8).spec == P(("data", "fsdp"), None)
    assert shd.process_batch_rows(m, 8) == (0, 8)  # one process owns every row
    with pytest.raises(ValueError, match="not divisible"):
        shd.process_batch_rows(m, 6)


def test_shard_batch_builds_global_arrays_with_the_rows_in_order():
    m = mesh(data=2, fsdp=4)
    local = {"input_ids": np.arange(8 * 4, dtype=np.int32).reshape(8, 4)}
    out = shd.shard_batch(local, m, 8)
    assert out["input_ids"].sharding.spec == P(("data", "fsdp"), None)
    assert len(out["input_ids"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(out["input_ids"]), local["input_ids"])


def test_host_arrays_and_init_land_directly_in_their_sharding():
    m = mesh(fsdp=4, tensor=2)
    host = {"model": {"layers": {"mlp": {"up_proj": {"kernel": np.random.rand(2, 64, 128).astype(np.float32)}}}}}
    axes = param_logical_axes(host)
    shardings = shd.tree_shardings(host, axes, m)
    placed = shd.place_host_arrays(host, shardings)
    kernel = placed["model"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == P(None, "fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (2, 16, 64)
    np.testing.assert_array_equal(np.asarray(kernel), host["model"]["layers"]["mlp"]["up_proj"]["kernel"])

    init = shd.init_sharded(lambda: jax.numpy.ones((2, 64, 128)), lambda abstract: shardings["model"]["layers"]["mlp"]["up_proj"]["kernel"])
    assert init.addressable_shards[0].data.shape == (2, 16, 64)

    placed = shd.place_params(host, m)  # the same placement in one call, as every command uses it
    assert placed["model"]["layers"]["mlp"]["up_proj"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")


def test_hugging_face_import_lands_on_the_mesh(tmp_path):
    from flax import nnx

    from seallm_jax import hf
    from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    params = nnx.state(Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)), nnx.Param).to_pure_dict()
    hf.save_pretrained((config, params), tmp_path / "hf")
    m = mesh(fsdp=4, tensor=2)
    model = hf.load_pretrained(tmp_path / "hf", sharding=shd.params_sharding_fn(m))
    up = model.model.layers.mlp.up_proj.kernel.value
    assert up.sharding.spec == P(None, "fsdp", "tensor")
    np.testing.assert_array_equal(np.asarray(up), np.asarray(params["model"]["layers"]["mlp"]["up_proj"]["kernel"]))
