"""Multi-process training through the local launcher: 2 processes x 4 CPU devices (gloo) give the
losses of 1 process x 8 devices, resume across processes, only process 0 writes logs, and SIGTERM
(slow test) saves one checkpoint at a step both processes agree on."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from train_helpers import ROOT, cli_env, metrics, train_command, wait_for

# decay_steps pinned so that a 4-step run resumed to 6 steps follows the 6-step run's schedule.
COMMON = ["--config.train.log_every=1", "--config.train.eval_every=2", "--config.checkpoint.every=2",
          "--config.optimizer.decay_steps=6"]


def launch(workdir, num_processes: int, devices_per_process: int, steps: int) -> subprocess.Popen:
    command = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num-processes", str(num_processes),
               "--devices-per-process", str(devices_per_process), "--",
               *train_command(workdir, f"--config.train.steps={steps}", *COMMON)]
    return subprocess.Popen(command, env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish_all(*processes):
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for process, out in zip(processes, outputs):
        assert process.returncode == 0, out[-3000:]
    return outputs


def test_two_processes_give_the_single_process_losses_and_resume(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    # Two processes stop after 4 steps, while one process runs all 6.
    two_out, _ = finish_all(launch(two, 2, 4, steps=4), launch(one, 1, 8, steps=6))
    assert "2 process(es)" in two_out and "over 8 devices" in two_out
    assert two_out.count("completed at step 4") == 1  # only process 0 logs
    # Both processes wrote their shards into one checkpoint.
    assert any(name.startswith("ocdbt.process_1") for name in os.listdir(two / "checkpoints" / "4" / "params"))

    # The two processes resume from step 4 and continue to 6.
    (resumed_out,) = finish_all(launch(two, 2, 4, steps=6))
    assert resumed_out.count("resumed from") == 1
    two_records, one_records = metrics(two), metrics(one)
    assert [r["step"] for r in two_records] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in two_records], [r["loss"] for r in one_records], rtol=1e-5)
    np.testing.assert_allclose([r["eval_loss"] for r in two_records if "eval_loss" in r],
                               [r["eval_loss"] for r in one_records if "eval_loss" in r], rtol=1e-5)
    assert sorted(os.listdir(two / "checkpoints")) == ["4", "6"]


@pytest.mark.slow
def test_sigterm_to_the_launcher_saves_one_checkpoint_at_a_step_all_processes_agree_on(tmp_path):
    process = launch(tmp_path, 2, 4, steps=100000)
    wait_for(lambda: len(metrics(tmp_path)) >= 3, process, what="three logged steps")
    process.send_signal(signal.SIGTERM)  # forwarded to both processes; JAX syncs them to one step
    out = process.communicate(timeout=600)[0]
    assert process.returncode == 0, out[-3000:]
    assert out.count("checkpoint saved at step") == 1
    saved = int(out.split("checkpoint saved at step ")[1].split(";")[0])
    assert max(int(step) for step in os.listdir(tmp_path / "checkpoints")) == saved
    assert any(name.startswith("ocdbt.process_1") for name in os.listdir(tmp_path / "checkpoints" / str(saved) / "params"))
