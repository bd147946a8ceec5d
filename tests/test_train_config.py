"""Config files and `--config.KEY=VALUE` overrides; the shipped recipes describe the real models."""
import os

import pytest

from seallm_jax.errors import ConfigError
from seallm_jax.train.config import load_config
from seallm_jax.train.step import model_config_from
from train_helpers import CONFIGS, TINY


def test_overrides_follow_the_field_types():
    config = load_config(TINY, ["--config.train.steps=7", "--config.optimizer.learning_rate=1",
                                "--config.data.languages=th,vi", "--config.lsn.lean=true",
                                "--config.model.init_from", "/models/x"])
    assert config.train.steps == 7
    assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
    assert list(config.data.languages) == ["th", "vi"]
    assert config.lsn.lean is True
    assert config.model.init_from == "/models/x"


def test_every_model_field_can_be_overridden_and_reaches_the_model_config():
    config = load_config(TINY, ["--config.model.head_dim=32", "--config.model.scan_unroll=2",
                                "--config.model.attention_block_q=64", "--config.model.pad_token_id=0",
                                "--config.train.loss_chunk_tokens=0"])
    model = model_config_from(config)
    assert (model.head_size, model.scan_unroll, model.attention_block_q, model.pad_token_id) == (32, 2, 64, 0)
    assert config.train.loss_chunk_tokens == 0


def test_unknown_or_mistyped_overrides_are_errors_that_name_the_key():
    with pytest.raises(ConfigError, match="no such field"):
        load_config(TINY, ["--config.train.stpes=7"])
    with pytest.raises(ConfigError, match="--config.train.steps=many"):
        load_config(TINY, ["--config.train.steps=many"])
    with pytest.raises(ValueError, match="--config.KEY=VALUE"):
        load_config(TINY, ["--steps=7"])


@pytest.mark.parametrize("spec, billions", [("qwen2_0_5b.py:gpu", 0.494), ("qwen2_0_5b.py:tpu", 0.494),
                                            ("qwen2_7b.py:gpu", 7.616), ("qwen2_7b.py:tpu", 7.616)])
def test_recipes_are_the_published_model_sizes(spec, billions):
    config = load_config(os.path.join(CONFIGS, spec))
    assert model_config_from(config).num_parameters() / 1e9 == pytest.approx(billions, abs=1e-3)
    assert config.model.param_dtype == "float32" and config.model.dtype == "bfloat16"
    assert config.train.global_batch_size % config.train.micro_batches == 0


def test_a_recipe_rejects_an_unknown_platform():
    with pytest.raises(ValueError, match="expected one of"):
        load_config(os.path.join(CONFIGS, "qwen2_7b.py:cpu"))


@pytest.mark.parametrize("spec, batch_devices", [("qwen2_0_5b.py:gpu", 8), ("qwen2_0_5b.py:tpu", 4),
                                                 ("qwen2_7b.py:gpu", 32), ("qwen2_7b.py:tpu", 32)])
def test_recipe_batches_split_evenly_on_their_target_hardware(spec, batch_devices):
    # 8 GPUs; TPU v4-8 (4 chips); 4 nodes x 8 GPUs; TPU v5p-64 (32 chips): every device gets whole rows
    # of every micro-batch.
    train = load_config(os.path.join(CONFIGS, spec)).train
    assert train.global_batch_size % (train.micro_batches * batch_devices) == 0
