"""Orbax checkpoints: restore onto a different mesh, load_params for export, HF init onto the mesh."""
import jax
import numpy as np
import pytest

from seallm_jax import checkpoint as ckpt
from seallm_jax import sharding as shd
from seallm_jax.train.config import load_config
from seallm_jax.train.loop import _initial_state
from seallm_jax.train.optim import build_optimizer, build_schedule
from seallm_jax.train.step import Trainer
from train_helpers import TINY


def trainer_on(config, **layout):
    n = int(np.prod(list(layout.values())))
    mesh = shd.make_mesh(layout, jax.devices()[:n])
    return Trainer(config, mesh, build_optimizer(config), build_schedule(config))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = load_config(TINY)
    trainer = trainer_on(config, data=1, fsdp=8, tensor=1)
    state = trainer.init_state(0)
    workdir = tmp_path_factory.mktemp("run")
    checkpointer = ckpt.Checkpointer(workdir / ckpt.CHECKPOINT_SUBDIR, keep=2)
    checkpointer.save(3, params=state.params, opt_state=state.opt_state, rng=state.rng, data_state={"index": 3})
    checkpointer.close()
    return config, workdir, jax.device_get(state.params), jax.device_get(state.opt_state)


def test_restore_onto_another_mesh_gives_the_same_values_in_the_new_sharding(saved):
    config, workdir, params, opt_state = saved
    trainer = trainer_on(config, data=1, fsdp=4, tensor=2)
    checkpointer = ckpt.Checkpointer(workdir / ckpt.CHECKPOINT_SUBDIR)
    restored = checkpointer.restore(
        checkpointer.latest_step(),
        abstract_params=shd.abstract_with_shardings(trainer.abstract_params, trainer.param_shardings),
        abstract_opt_state=shd.abstract_with_shardings(trainer.abstract_state.opt_state, trainer.opt_shardings))
    checkpointer.close()
    assert restored["meta"]["step"] == 3 and restored["meta"]["data_state"] == {"index": 3}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored["params"]), params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored["opt_state"]), opt_state)
    down = restored["params"]["model"]["layers"]["mlp"]["down_proj"]["kernel"]
    assert down.sharding == trainer.param_shardings["model"]["layers"]["mlp"]["down_proj"]["kernel"]


def test_load_params_reads_the_latest_step_of_a_workdir(saved):
    config, workdir, params, _ = saved
    host = ckpt.load_params(workdir)  # numpy, for an HF export
    assert isinstance(host["lm_head"]["kernel"], np.ndarray)
    jax.tree.map(np.testing.assert_array_equal, host, params)
    trainer = trainer_on(config, data=1, fsdp=8, tensor=1)
    abstract = shd.abstract_with_shardings(trainer.abstract_params, trainer.param_shardings)
    on_mesh = ckpt.load_params(workdir / "checkpoints" / "3", abstract)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(on_mesh), params)


def test_load_params_of_an_empty_directory_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.load_params(tmp_path)


def test_init_from_hugging_face_places_the_weights_on_the_mesh(saved, tmp_path):
    from seallm_jax import hf
    from seallm_jax.model import Qwen2Config

    config, _, params, _ = saved
    model_config = Qwen2Config(**{k: v for k, v in config.model.to_dict().items() if k != "init_from"})
    hf.save_pretrained((model_config, params), tmp_path / "hf")
    config = load_config(TINY, [f"--config.model.init_from={tmp_path / 'hf'}"])
    trainer = trainer_on(config, data=1, fsdp=4, tensor=2)
    state = _initial_state(trainer, config)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params)
    up = state.params["model"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert up.addressable_shards[0].data.size * 8 == up.size


def test_a_save_error_names_the_operating_systems_reason_wherever_tensorstore_put_it():
    """TensorStore sometimes puts the OS error in the middle of a long message, before the JSON spec
    of what it was opening; the one-line description must still say why the write failed."""
    spec = '{"driver":"zarr","kvstore":{"driver":"ocdbt","base":"file:///tmp/run/checkpoints/8"}' + " " * 600 + "}"
    tensorstore = ValueError(f'OUT_OF_RANGE: Error opening "zarr" driver: Error writing "1.2.count/.zarray": '
                             f"File too large [os_error_code='27'] [source locations='...'] [tensorstore_spec='{spec}']")
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = tensorstore
    line = ckpt.describe_error(wrapped)
    assert line.startswith("File too large: OUT_OF_RANGE: Error opening")
    assert len(line) <= 400 and "\n" not in line
    assert ckpt.describe_error(OSError(28, "No space left on device", "/tmp/x")) == "[Errno 28] No space left on device: '/tmp/x'"
