"""Faults a preemptible pod or a shared cluster meets, run through `seallm-jax train` as a user would:
a damaged latest checkpoint (truncated file, deleted metadata, garbage step directory) is moved aside
and the run resumes from the newest step that restores, with the uninterrupted losses; a save that
fails (disk full, read-only directory) stops with one line naming the directory and what is intact;
a lost worker (slow test) ends the other process in bounded time instead of hanging it."""
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from train_helpers import ROOT, TINY, cli_env, finish, metrics, start, train_command, wait_for

STEPS = 12
# decay_steps pinned: a run resumed mid-way follows the same schedule as the uninterrupted one.
RUN = [f"--config.train.steps={STEPS}", "--config.checkpoint.every=4", "--config.checkpoint.keep=3",
       "--config.train.log_every=1", "--config.train.eval_every=0", f"--config.optimizer.decay_steps={STEPS}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: checkpoints 4, 8 and 12, and the losses every fault must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    code, out = finish(start(workdir, *RUN))
    assert code == 0, out[-3000:]
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["4", "8", "12"]
    return workdir


def copy_of(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    return workdir


def losses(workdir) -> list:
    return [record["loss"] for record in metrics(workdir)]


def error_lines(out: str) -> list:
    return [line for line in out.splitlines() if "error" in line.lower() or "cannot be restored" in line]


def assert_resumed_past_damage(reference, workdir, out, code, reason):
    """One line names the damaged step directory and why; the run resumed from step 8 and its losses
    are the uninterrupted run's; the damaged step is kept aside, not deleted."""
    assert code == 0, out[-3000:]
    assert "Traceback" not in out
    damaged = workdir / "checkpoints" / "12"
    (line,) = error_lines(out)
    assert line.startswith(f"checkpoint {damaged} cannot be restored (") and reason in line, line
    assert line.endswith(f"moved it to {damaged}.damaged and resuming from step 8")
    assert f"resumed from {workdir / 'checkpoints'}/8" in out
    assert (workdir / "checkpoints" / "12.damaged").is_dir()
    assert [r["step"] for r in metrics(workdir)] == list(range(1, STEPS + 1))
    np.testing.assert_array_equal(losses(workdir), losses(reference))


def test_truncated_array_file_resumes_from_the_previous_step(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    files = [os.path.join(d, f) for d, _, names in os.walk(workdir / "checkpoints" / "12") for f in names]
    largest = max(files, key=os.path.getsize)
    os.truncate(largest, os.path.getsize(largest) // 2)
    code, out = finish(start(workdir, *RUN))
    assert_resumed_past_damage(reference, workdir, out, code, "is not valid for value of size")


def test_deleted_metadata_resumes_from_the_previous_step(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    os.remove(workdir / "checkpoints" / "12" / "meta" / "metadata")
    code, out = finish(start(workdir, *RUN))
    assert_resumed_past_damage(reference, workdir, out, code, "meta/metadata missing")


def test_step_directory_holding_garbage_resumes_from_the_previous_step(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    step_dir = workdir / "checkpoints" / "12"
    shutil.rmtree(step_dir)
    (step_dir / "params").mkdir(parents=True)
    (step_dir / "params" / "_METADATA").write_bytes(os.urandom(4096))
    (step_dir / "_CHECKPOINT_METADATA").write_text("not json")
    code, out = finish(start(workdir, *RUN))
    assert_resumed_past_damage(reference, workdir, out, code, "missing")


def run_in_process(workdir, capfd, *overrides) -> tuple:
    """`seallm-jax train` in this process (for runs that stop before training): exit code, output."""
    from seallm_jax import cli

    code = cli.main(["train", "--config", TINY, "--workdir", str(workdir), "--config.train.progress_bar=False",
                     *RUN, *overrides])
    captured = capfd.readouterr()
    return code, captured.out + captured.err


def test_on_damage_error_stops_naming_the_damaged_step_and_moves_nothing(reference, tmp_path, capfd):
    workdir = copy_of(reference, tmp_path)
    os.remove(workdir / "checkpoints" / "12" / "meta" / "metadata")
    code, out = run_in_process(workdir, capfd, "--config.checkpoint.on_damage=error")
    assert code == 2, out[-3000:]
    assert "Traceback" not in out
    (line,) = error_lines(out)
    assert line.startswith(f"seallm-jax train: error: checkpoint {workdir / 'checkpoints' / '12'} cannot be "
                           "restored (meta/metadata missing); rerun with --config.checkpoint.on_damage=fallback")
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["4", "8", "12"]


def test_no_step_restores_lists_every_step_tried_and_never_starts_from_scratch(reference, tmp_path, capfd):
    workdir = copy_of(reference, tmp_path)
    for step in (4, 8, 12):
        os.remove(workdir / "checkpoints" / str(step) / "params" / "_METADATA")
    code, out = run_in_process(workdir, capfd)
    assert code == 2, out[-3000:]
    assert "Traceback" not in out
    (line,) = error_lines(out)
    assert line == (f"seallm-jax train: error: no checkpoint in {workdir / 'checkpoints'} can be restored "
                    "(tried step 12: params/_METADATA missing; step 8: params/_METADATA missing; step 4: "
                    "params/_METADATA missing); nothing was moved or deleted. Restore the directory from a "
                    "copy, or move it away to start from scratch")
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["4", "8", "12"]
    assert len(metrics(workdir)) == STEPS  # nothing was trained, nothing rewritten


def limit_file_size(max_bytes: int):
    """A full disk that stops root too: writes past `max_bytes` fail with EFBIG ('File too large';
    Python ignores SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def test_a_background_save_that_fails_stops_the_run_and_keeps_the_previous_checkpoint(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    for step in (8, 12):  # as if the run had stopped after step 4
        shutil.rmtree(workdir / "checkpoints" / str(step))
    # Checkpoint files are over 64 KB; metrics and the cached compilations read here are not written.
    process = subprocess.Popen(train_command(workdir, *RUN), env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, preexec_fn=limit_file_size(64 * 1024))
    code, out = finish(process)
    assert code == 2, out[-3000:]
    assert "Traceback" not in out
    (line,) = error_lines(out)
    directory = workdir / "checkpoints"
    assert line.startswith(f"seallm-jax train: error: saving step 8 to {directory} failed (")
    assert "File too large" in line
    assert line.endswith("training stopped. Its complete checkpoints (step 4) are intact: fix the directory "
                         "(free space, permissions), then rerun the same command to resume from step 4")
    assert [name for name in os.listdir(directory) if name.isdigit()] == ["4"]
    # Space again: the same command resumes from step 4 with the uninterrupted losses.
    code, out = finish(start(workdir, *RUN))
    assert code == 0, out[-3000:]
    assert f"resumed from {directory}/4" in out
    np.testing.assert_array_equal(losses(workdir), losses(reference))


def test_a_read_only_checkpoint_directory_stops_the_run_with_one_line(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    directory = workdir / "checkpoints"
    shutil.rmtree(directory / "12")
    # chmod does not stop root; the immutable attribute does (where the filesystem has it).
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        code, out = finish(start(workdir, *RUN))
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    assert code == 2, out[-3000:]
    assert "Traceback" not in out
    (line,) = error_lines(out)
    assert line.startswith(f"seallm-jax train: error: saving step 12 to {directory} failed (")
    assert "Operation not permitted" in line
    assert line.endswith("Its complete checkpoints (steps 4, 8) are intact: fix the directory (free space, "
                         "permissions), then rerun the same command to resume from step 8")
    assert sorted(os.listdir(directory), key=int) == ["4", "8"]


def start_process(workdir, process_id: int, port: int, *overrides) -> subprocess.Popen:
    """One of two processes of a multi-process run (4 CPU devices each, gloo), as launch/local.py starts them."""
    env = cli_env(devices=4)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id))
    return subprocess.Popen(train_command(workdir, *overrides), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOST_STEPS = 40
LOST_RUN = [f"--config.train.steps={LOST_STEPS}", "--config.checkpoint.every=4", "--config.train.log_every=1",
            "--config.train.eval_every=0", f"--config.optimizer.decay_steps={LOST_STEPS}",
            "--config.distributed.stall_timeout=20"]


@pytest.mark.slow
@pytest.mark.parametrize("lost, fault", [(1, "SIGKILL"), (1, "SIGSTOP"), (0, "SIGKILL")],
                         ids=["worker-killed", "worker-hangs", "coordinator-killed"])
def test_a_lost_process_ends_the_other_in_bounded_time_and_a_rerun_resumes(tmp_path, lost, fault):
    """A killed worker: the survivor's next collective fails at once and it exits with one line (75).
    A hung worker (SIGSTOP): the collective never returns; the stall watchdog ends the survivor after
    distributed.stall_timeout (20 s here). A killed process 0, which hosts JAX's coordination
    service: JAX itself ends the survivor at once (its own message; SIGABRT)."""
    reference_dir, workdir = tmp_path / "reference", tmp_path / "two"
    reference = start(reference_dir, *LOST_RUN)  # one process, 8 devices: the same global batch
    port = free_port()
    processes = [start_process(workdir, i, port, *LOST_RUN) for i in range(2)]
    victim, survivor = processes[lost], processes[1 - lost]
    wait_for(lambda: len(metrics(workdir)) >= 6 and os.path.isdir(workdir / "checkpoints" / "4"), survivor,
             what="a checkpoint and six logged steps")
    victim.send_signal(getattr(signal, fault))
    lost_at = time.monotonic()
    code, out = finish(survivor, timeout=300)
    exited_after = time.monotonic() - lost_at
    victim.kill()
    victim.wait()
    print(f"process {lost} lost ({fault}): process {1 - lost} exited with {code} {exited_after:.1f} s later")
    assert exited_after < (30 if fault == "SIGSTOP" else 10)
    if lost == 0:
        # Process 1 sees its collective fail, or JAX's coordination client sees the service gone:
        # whichever comes first ends it (one line and 75, or JAX's message and SIGABRT).
        assert code != 0, out[-3000:]
        assert ("seallm-jax train: error: process 1 of 2" in out
                or "JAX distributed service detected fatal errors" in out), out[-3000:]
    else:
        assert code == 75, out[-3000:]
        assert "Traceback" not in out
        (line,) = error_lines(out)
        assert line.startswith("seallm-jax train: error: process 0 of 2 "), line
        assert line.endswith("rerun every process with the same command to resume from the last complete "
                             f"checkpoint in {workdir / 'checkpoints'}")
    assert len(metrics(workdir)) < LOST_STEPS

    # Both processes again, the same command: they resume and end with the uninterrupted losses.
    rerun = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num-processes", "2",
                              "--devices-per-process", "4", "--", *train_command(workdir, *LOST_RUN)],
                             env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code, out = finish(rerun)
    assert code == 0, out[-3000:]
    assert "resumed from" in out
    code, reference_out = finish(reference)
    assert code == 0, reference_out[-3000:]
    assert [r["step"] for r in metrics(workdir)] == list(range(1, LOST_STEPS + 1))
    np.testing.assert_allclose(losses(workdir), losses(reference_dir), rtol=1e-5)
