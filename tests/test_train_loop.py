"""The training loop as a user runs it: outputs, exact resume after SIGKILL, SIGTERM checkpoints,
Ctrl-C, half-written checkpoints, NaN stop."""
import os
import signal

import numpy as np
import pytest

from seallm_jax.checkpoint import Checkpointer, resolve_checkpoint
from train_helpers import finish, metrics, start, wait_for

STEPS = 60
RUN = [f"--config.train.steps={STEPS}", "--config.checkpoint.every=10", "--config.train.log_every=1",
       "--config.train.eval_every=20"]


@pytest.fixture(scope="module")
def uninterrupted_and_killed(tmp_path_factory):
    """An uninterrupted run and, concurrently, a run SIGKILLed after its first checkpoint."""
    reference_dir, killed_dir = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("killed")
    reference = start(reference_dir, *RUN)
    killed = start(killed_dir, *RUN)
    wait_for(lambda: os.path.isdir(killed_dir / "checkpoints" / "10"), killed, what="the first checkpoint")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    code, out = finish(reference)
    assert code == 0, out[-3000:]
    return reference_dir, killed_dir


def test_run_writes_metrics_tensorboard_and_checkpoints(uninterrupted_and_killed):
    reference_dir, _ = uninterrupted_and_killed
    records = metrics(reference_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all({"loss", "grad_norm", "learning_rate"} <= set(r) for r in records)
    assert "tokens_per_s" in records[-1] and "mfu" in records[-1]
    assert [r["step"] for r in records if "eval_loss" in r] == [20, 40, 60]
    assert records[-1]["loss"] < records[0]["loss"]
    assert os.listdir(reference_dir / "tensorboard")
    # keep=2 (configs/tiny.py): only the last two checkpoints remain, the final step included.
    assert sorted(os.listdir(reference_dir / "checkpoints")) == ["50", "60"]


def test_rerun_after_sigkill_continues_with_the_uninterrupted_losses(uninterrupted_and_killed):
    reference_dir, killed_dir = uninterrupted_and_killed
    assert not os.path.isdir(killed_dir / "checkpoints" / str(STEPS)), "the run finished before it was killed"
    code, out = finish(start(killed_dir, *RUN))
    assert code == 0, out[-3000:]
    assert "resumed from" in out
    expected, resumed = metrics(reference_dir), metrics(killed_dir)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # steps after the checkpoint logged once
    np.testing.assert_array_equal([r["loss"] for r in resumed], [r["loss"] for r in expected])
    np.testing.assert_array_equal([r.get("eval_loss", 0) for r in resumed], [r.get("eval_loss", 0) for r in expected])


def test_half_written_checkpoint_is_never_resumed_from(uninterrupted_and_killed, tmp_path):
    reference_dir, _ = uninterrupted_and_killed
    directory = reference_dir / "checkpoints"
    # A save killed mid-write leaves Orbax's temporary directory with a partial step in it.
    partial = directory / "70.orbax-checkpoint-tmp-1732000000"
    (partial / "params").mkdir(parents=True)
    (partial / "params" / "_METADATA").write_text("{")
    checkpointer = Checkpointer(directory, keep=2)
    assert checkpointer.latest_step() == STEPS  # what a rerun resumes from
    checkpointer.close()
    assert resolve_checkpoint(reference_dir) == (str(directory), STEPS)  # what an export reads


def test_sigterm_saves_a_checkpoint_and_exits(uninterrupted_and_killed, tmp_path):
    # The same config as the runs above (its compiled step is cached), stopped after 3 of its 60 steps.
    process = start(tmp_path, *RUN)
    wait_for(lambda: len(metrics(tmp_path)) >= 3, process, what="three logged steps")
    process.send_signal(signal.SIGTERM)
    code, out = finish(process)
    assert code == 0, out[-3000:]
    assert "preempted" in out
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    saved = checkpointer.latest_step()
    checkpointer.close()
    assert saved is not None and 3 <= saved < STEPS
    assert f"checkpoint saved at step {saved}" in out


def test_ctrl_c_saves_then_exits_130_and_a_rerun_continues_exactly(uninterrupted_and_killed, tmp_path):
    """Ctrl-C (SIGINT): the step in flight finishes, a checkpoint is saved, one line, exit 130; the same
    command resumes with the uninterrupted losses. Evaluation runs every 6 steps although only every
    4th step is logged (it used to run only on logging steps)."""
    reference_dir, _ = uninterrupted_and_killed
    run = [*RUN, "--config.train.log_every=4", "--config.train.eval_every=6"]
    process = start(tmp_path, *run)
    wait_for(lambda: len(metrics(tmp_path)) >= 2, process, what="two metrics records")
    process.send_signal(signal.SIGINT)
    code, out = finish(process)
    assert code == 130, out[-3000:]
    assert "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("seallm-jax train: interrupted: checkpoint saved at step "), last
    saved = int(last.split("checkpoint saved at step ")[1].split()[0])
    assert 2 <= saved < STEPS
    code, out = finish(start(tmp_path, *run))
    assert code == 0, out[-3000:]
    assert "resumed from" in out
    records = metrics(tmp_path)
    reference = {r["step"]: r["loss"] for r in metrics(reference_dir)}
    logged = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert set(range(4, STEPS + 1, 4)) <= set(logged)
    assert all(logged[step] == reference[step] for step in logged)
    assert [r["step"] for r in records if "eval_loss" in r] == list(range(6, STEPS + 1, 6))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    # A huge, unclipped learning rate blows the weights up after the first checkpoint.
    code, out = finish(start(tmp_path, "--config.train.steps=10", "--config.checkpoint.every=1",
                             "--config.optimizer.learning_rate=1e30", "--config.optimizer.max_grad_norm=0",
                             "--config.optimizer.warmup_steps=0", "--config.train.eval_every=0"))
    assert code == 1, out[-3000:]
    assert "loss is nan" in out.lower() or "loss is inf" in out.lower()
    assert "last good checkpoint" in out
    records = metrics(tmp_path)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    last_good = checkpointer.latest_step()
    checkpointer.close()
    assert last_good is not None and last_good == len(records)
    assert all(np.isfinite(r["loss"]) for r in records)


def test_a_training_workdir_exports_to_hugging_face(uninterrupted_and_killed, tmp_path):
    from safetensors.numpy import load_file

    from seallm_jax.checkpoint import load_params
    from seallm_jax.hf import convert_orbax_to_hf

    reference_dir, _ = uninterrupted_and_killed
    out = convert_orbax_to_hf(reference_dir, tmp_path / "hf")
    tensors = load_file(os.path.join(out, "model.safetensors"))
    params = load_params(reference_dir)
    np.testing.assert_array_equal(tensors["lm_head.weight"], params["lm_head"]["kernel"].T)
    np.testing.assert_array_equal(tensors["model.layers.1.mlp.down_proj.weight"],
                                  params["model"]["layers"]["mlp"]["down_proj"]["kernel"][1].T)
