"""Round trips: HF -> seallm-jax -> HF and HF -> Orbax -> HF are bit-identical; bad input is named."""
import json
import os

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

from hf_models import make_hf_model, save_hf_model, torch_logits
from seallm_jax import hf


def read_all_tensors(directory):
    index = os.path.join(directory, hf.SAFETENSORS_INDEX)
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for file in files:
        tensors.update(load_file(os.path.join(directory, file)))
    return tensors


@pytest.fixture(scope="module", params=["untied_gqa2", "tied_mha", "llama"])
def hf_dir(request, tmp_path_factory):
    return save_hf_model(make_hf_model(request.param), tmp_path_factory.mktemp(request.param) / "hf")


def test_hf_to_seallm_to_hf_is_bit_identical(hf_dir, tmp_path):
    model = hf.load_pretrained(hf_dir)
    out = hf.save_pretrained(model, tmp_path / "export")
    original, exported = read_all_tensors(hf_dir), read_all_tensors(out)
    assert original.keys() == exported.keys()
    for name in original:
        np.testing.assert_array_equal(original[name], exported[name], err_msg=name)


def test_export_loads_in_transformers_with_same_logits(hf_dir, tmp_path):
    model = hf.load_pretrained(hf_dir)
    out = hf.save_pretrained(model, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    expected_class = "LlamaForCausalLM" if not model.config.attention_bias else "Qwen2ForCausalLM"
    assert type(reloaded).__name__ == expected_class
    ids = np.random.RandomState(0).randint(0, model.config.vocab_size, (2, 9))
    np.testing.assert_allclose(torch_logits(reloaded, ids), np.asarray(model(ids)), atol=1e-4, rtol=0)
    for name in ("config.json", "generation_config.json"):
        assert os.path.exists(os.path.join(out, name))


def test_hf_to_orbax_to_hf_is_bit_identical(hf_dir, tmp_path):
    for name in ("tokenizer_config.json",):  # tokenizer files travel with the weights
        with open(os.path.join(hf_dir, name), "w") as f:
            json.dump({"model_max_length": 128}, f)
    ckpt = hf.convert_hf_to_orbax(hf_dir, tmp_path / "orbax")
    out = hf.convert_orbax_to_hf(ckpt, tmp_path / "back")
    original, exported = read_all_tensors(hf_dir), read_all_tensors(out)
    assert original.keys() == exported.keys()
    for name in original:
        assert original[name].dtype == exported[name].dtype, name
        np.testing.assert_array_equal(original[name], exported[name], err_msg=name)
    assert os.path.exists(os.path.join(out, "tokenizer_config.json"))


def test_bfloat16_checkpoints_round_trip_through_orbax_exactly(tmp_path):
    torch_model = make_hf_model("tied_mha").to(dtype=__import__("torch").bfloat16)
    hf_dir = save_hf_model(torch_model, tmp_path / "bf16")
    out = hf.convert_orbax_to_hf(hf.convert_hf_to_orbax(hf_dir, tmp_path / "orbax"), tmp_path / "back")
    original, exported = read_all_tensors(hf_dir), read_all_tensors(out)
    for name in original:
        assert str(exported[name].dtype) == "bfloat16"
        np.testing.assert_array_equal(original[name], exported[name], err_msg=name)


def test_sharded_export_with_index_reloads(tmp_path):
    model = hf.load_pretrained(save_hf_model(make_hf_model("untied_gqa2"), tmp_path / "hf"))
    out = hf.save_pretrained(model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.load(open(os.path.join(out, hf.SAFETENSORS_INDEX)))
    assert len(set(index["weight_map"].values())) > 2
    reloaded = hf.load_pretrained(out)
    ids = np.arange(12).reshape(2, 6)
    np.testing.assert_array_equal(np.asarray(reloaded(ids)), np.asarray(model(ids)))
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    np.testing.assert_allclose(torch_logits(torch_model, ids), np.asarray(model(ids)), atol=1e-4)


def rewrite_weights(hf_dir, edit):
    path = os.path.join(hf_dir, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    hf_dir = save_hf_model(make_hf_model("untied_gqa2"), tmp_path / "hf")
    rewrite_weights(hf_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(hf.CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight is missing"):
        hf.load_pretrained(hf_dir)


def test_unexpected_tensor_is_named(tmp_path):
    hf_dir = save_hf_model(make_hf_model("untied_gqa2"), tmp_path / "hf")
    rewrite_weights(hf_dir, lambda t: t.update({"model.extra_adapter.weight": np.zeros(3, np.float32)}))
    with pytest.raises(hf.CheckpointError, match=r"unexpected tensors.*model\.extra_adapter\.weight"):
        hf.load_pretrained(hf_dir)


def test_shape_mismatch_is_named(tmp_path):
    hf_dir = save_hf_model(make_hf_model("untied_gqa2"), tmp_path / "hf")

    def shrink(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:8]

    rewrite_weights(hf_dir, shrink)
    with pytest.raises(hf.CheckpointError, match=r"k_proj\.weight has shape \(8, 64\), expected \(32, 64\)"):
        hf.load_pretrained(hf_dir)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    hf_dir = save_hf_model(make_hf_model("untied_gqa2"), tmp_path / "hf")
    os.rename(os.path.join(hf_dir, "model.safetensors"), os.path.join(hf_dir, "pytorch_model.bin"))
    with pytest.raises(hf.CheckpointError, match="pytorch_model.bin is a pickle, which seallm-jax never loads"):
        hf.load_pretrained(hf_dir)


def test_failed_export_leaves_no_partial_directory(tmp_path, monkeypatch):
    model = hf.load_pretrained(save_hf_model(make_hf_model("untied_gqa2"), tmp_path / "hf"))

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        hf.save_pretrained(model, tmp_path / "export")
    assert not os.path.exists(tmp_path / "export")
    assert [p for p in os.listdir(tmp_path) if p.startswith(".export")] == []
