"""An error printed while a progress bar is on screen starts a line of its own (`seallm-jax CMD: error:`),
in a terminal and when stderr is a file or a pipe: the command line's error path and a lost process's
exit (`distributed.exit_lost_run`, from the train loop and from the stall watchdog) close live bars first."""
import signal
import subprocess
import sys

import pytest

from seallm_jax.cli import main
from train_helpers import ROOT, cli_env, metrics, train_command, wait_for

ERROR = "seallm-jax train: error: "


def error_line(stderr: str, prefix: str) -> str:
    """The one line (lines end at "\\n" only: a bar's carriage returns do not end one) holding `prefix`,
    which must start it."""
    (line,) = [line for line in stderr.split("\n") if prefix in line]
    assert line.startswith(prefix), repr(line)
    return line


@pytest.mark.parametrize("how", ["train loop", "stall watchdog"])
def test_a_lost_process_exits_with_its_error_on_a_line_of_its_own(tmp_path, how):
    """`exit_lost_run` from the main thread (as the train loop calls it) and from the watchdog's thread,
    while a training bar and a nested evaluation bar are live; stderr is a file."""
    script = f"""
import time
from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm
from seallm_jax import distributed
bar = tqdm(total=60, desc="train", unit="step", dynamic_ncols=True)
bar.update(25)
bar.set_postfix({{"loss": "5.1", "tok/s": "3774"}})
auto_tqdm(total=4, desc="eval", leave=False).update(1)
message = "{ERROR}process 0 of 2 stopped at step 26: a collective failed"
if {how == "train loop"}:
    distributed.exit_lost_run(message)
distributed.StallWatchdog(0.3, lambda idle: message).start()
time.sleep(30)
"""
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        process = subprocess.run([sys.executable, "-c", script], stderr=stderr, env=cli_env(1), cwd=ROOT,
                                 timeout=120)
    assert process.returncode == 75
    text = stderr_path.read_text()
    assert "train:  42%" in text  # the bar was on screen
    error_line(text, ERROR)


def test_a_user_error_while_a_bar_is_live_starts_its_own_line(tmp_path, capsys):
    from tqdm.auto import tqdm

    bar = tqdm(total=10, desc="scoring")
    bar.update(3)
    code = main(["eval", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "scoring:  30%" in err
    assert "does not exist" in error_line(err, "seallm-jax eval: error: ")


@pytest.mark.slow
def test_killing_one_of_two_training_processes_leaves_the_survivors_error_on_its_own_line(tmp_path):
    """The issue's case: `seallm-jax train` in two processes with the progress bar on; process 1 is
    killed; process 0 exits 75 and its error line starts with `seallm-jax train: error:`."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = 200
    overrides = [f"--config.train.steps={steps}", "--config.train.log_every=1", "--config.train.eval_every=0",
                 "--config.checkpoint.every=1000", f"--config.optimizer.decay_steps={steps}",
                 "--config.distributed.stall_timeout=20", "--config.train.progress_bar=True"]
    processes = []
    for process_id in range(2):
        env = cli_env(devices=4)
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id))
        processes.append(subprocess.Popen(train_command(tmp_path, *overrides), env=env, cwd=ROOT, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    survivor, victim = processes
    try:
        wait_for(lambda: len(metrics(tmp_path)) >= 3, survivor, what="three logged steps")
        victim.send_signal(signal.SIGKILL)
        _, err = survivor.communicate(timeout=120)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert survivor.returncode == 75, err[-3000:]
    assert "train: " in err and ("step/s" in err or "s/step" in err)  # the bar was on screen
    assert "process 0 of 2" in error_line(err, ERROR)
