"""LoRA (seallm_jax.lora) through the training engine: the merged export is the adapter model."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from hf_models import make_hf_model, save_hf_model, torch_logits
from seallm_jax import hf, lora
from seallm_jax import sharding as shd
from seallm_jax.checkpoint import CHECKPOINT_SUBDIR, Checkpointer
from seallm_jax.errors import ConfigError
from seallm_jax.train.config import base_config
from seallm_jax.train.loop import train
from seallm_jax.train.optim import build_optimizer, build_schedule
from seallm_jax.train.step import Trainer

TARGETS = ["q_proj", "v_proj", "down_proj"]
HF_NAMES = {"q_proj": "self_attn.q_proj", "v_proj": "self_attn.v_proj", "down_proj": "mlp.down_proj"}


def _config(init_from: str, steps: int = 3):
    config = base_config()
    config.model.init_from = init_from
    config.train.update(steps=steps, global_batch_size=8, seq_len=16, log_every=1, eval_every=0, progress_bar=False)
    config.optimizer.update(learning_rate=3e-2, warmup_steps=0, weight_decay=0.0)
    config.checkpoint.update(every=steps, keep=1, async_save=False)
    config.lora.update(rank=2, alpha=4.0, targets=TARGETS)
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    config.distributed.mode = "none"
    return config


def _restore_adapters(config, workdir):
    trainer = Trainer(config, shd.make_mesh(config.mesh.to_dict()), build_optimizer(config, lora.WRAPPER), build_schedule(config))
    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_SUBDIR), keep=1, async_save=False)
    restored = checkpointer.restore(
        checkpointer.latest_step(),
        abstract_params=shd.abstract_with_shardings(trainer.abstract_params, trainer.param_shardings),
        abstract_opt_state=shd.abstract_with_shardings(trainer.abstract_state.opt_state, trainer.opt_shardings))
    checkpointer.close()
    return jax.device_get(lora.adapters_of(restored["opt_state"]))


def test_merged_export_equals_the_adapter_model(tmp_path):
    base_model = make_hf_model("untied_gqa2")
    base_dir = save_hf_model(base_model, tmp_path / "base")
    config = _config(base_dir)
    workdir = str(tmp_path / "run")
    result = train(config, workdir, optimizer_wrapper=lora.WRAPPER)
    assert result["status"] == "completed"
    export_dir = hf.convert_orbax_to_hf(workdir, str(tmp_path / "export"))
    adapters = _restore_adapters(config, workdir)
    scale = lora.LoraSettings.from_config(config).scale
    assert scale == 2.0

    # Only the target kernels moved, and by exactly s * A @ B.
    base = load_file(os.path.join(base_dir, "model.safetensors"))
    merged = load_file(os.path.join(export_dir, "model.safetensors"))
    for name, before in base.items():
        target = next((t for t, hf_name in HF_NAMES.items() if f".{hf_name}.weight" in name), None)
        if target is None:
            np.testing.assert_array_equal(before, merged[name], err_msg=name)
            continue
        layer = int(name.split(".")[2])
        ab = adapters[target]
        expected = before + scale * (ab["a"][layer] @ ab["b"][layer]).T  # HF layout is [out, in]
        np.testing.assert_allclose(merged[name], expected, atol=1e-6, err_msg=name)
        assert np.abs(merged[name] - before).max() > 1e-4, f"{name} did not train"

    # The adapter model (base weights + s x A B on the side, in PyTorch) = the merged export.
    def hook(a, b):
        a, b = torch.as_tensor(np.array(a)), torch.as_tensor(np.array(b))
        return lambda module, inputs, output: output + scale * (inputs[0] @ a) @ b

    for layer_index, layer in enumerate(base_model.model.layers):
        for target, hf_name in HF_NAMES.items():
            module = layer.get_submodule(hf_name)
            module.register_forward_hook(hook(adapters[target]["a"][layer_index], adapters[target]["b"][layer_index]))
    ids = np.random.RandomState(0).randint(0, 311, (2, 12))
    adapter_logits = torch_logits(base_model, ids)
    exported = transformers.AutoModelForCausalLM.from_pretrained(export_dir, attn_implementation="eager").eval()
    np.testing.assert_allclose(torch_logits(exported, ids), adapter_logits, atol=1e-4)
    np.testing.assert_allclose(np.asarray(hf.load_pretrained(export_dir)(ids)), adapter_logits, atol=1e-4)


def test_adapter_gradients_are_the_chain_rule():
    """One LoRA step of SGD equals SGD on (A, B) of the explicit adapter model."""
    rng = np.random.RandomState(0)
    params = {"model": {"layers": {"mlp": {"down_proj": {"kernel": jnp.asarray(rng.randn(2, 5, 3), jnp.float32)}},
                                   "other": jnp.asarray(rng.randn(4), jnp.float32)}}}
    settings = lora.LoraSettings(rank=2, targets=("down_proj",))
    x = jnp.asarray(rng.randn(2, 7, 5), jnp.float32)

    def loss_of_weights(p):
        return jnp.sum(jnp.tanh(jnp.einsum("lti,lio->lto", x, p["model"]["layers"]["mlp"]["down_proj"]["kernel"])))

    optimizer = lora.lora(optax.sgd(0.1), settings)
    state = optimizer.init(params)
    state = state._replace(adapters=jax.tree.map(lambda v: v + 0.3, state.adapters))  # B != 0
    start = lora.merge(params, state.adapters, settings)
    updates, new_state = optimizer.update(jax.grad(loss_of_weights)(start), state, start)
    stepped = optax.apply_updates(start, updates)

    def loss_of_adapters(adapters):
        return loss_of_weights(lora.merge(params, adapters, settings))

    expected = jax.tree.map(lambda v, g: v - 0.1 * g, state.adapters, jax.grad(loss_of_adapters)(state.adapters))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state.adapters, expected)
    np.testing.assert_allclose(stepped["model"]["layers"]["mlp"]["down_proj"]["kernel"],
                               lora.merge(params, expected, settings)["model"]["layers"]["mlp"]["down_proj"]["kernel"],
                               atol=1e-5)
    np.testing.assert_array_equal(stepped["model"]["layers"]["other"], params["model"]["layers"]["other"])
    assert lora.trainable_count(params, settings) == 2 * 2 * (5 + 3)


def test_lora_config_errors():
    config = base_config()
    config.lora.rank = 4
    config.lsn.neurons = "neurons.json"
    with pytest.raises(ConfigError, match="not both"):
        build_optimizer(config, lora.WRAPPER)
    with pytest.raises(ConfigError, match="targets"):
        lora.LoraSettings(rank=2, targets=("gate",))
    with pytest.raises(ConfigError, match="rank"):
        lora.LoraSettings(rank=0)
