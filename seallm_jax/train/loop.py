"""The training loop: resume or initialise, step, log, evaluate, checkpoint, survive preemption.

`train(config, workdir)` is what `seallm-jax train` runs; rerunning it on the same workdir resumes
from the latest complete checkpoint with the same data position, so the loss sequence continues
exactly as if the run had never stopped. The workdir may be in object storage (gs://BUCKET/…, s3://…):
a TPU pod has no shared filesystem (seallm_jax.paths).
"""
from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from seallm_jax import distributed, files, paths
from seallm_jax import sharding as shd
from seallm_jax.checkpoint import CHECKPOINT_SUBDIR, Checkpointer, describe_error
from seallm_jax.train.data_source import fit_vocabulary, make_source
from seallm_jax.train.metrics import MetricsWriter, mfu
from seallm_jax.train.optim import OptimizerWrapper, build_optimizer, build_schedule
from seallm_jax.train.step import Trainer, TrainState, model_config_from


TRAIN_CONFIG_FILE = "train_config.json"


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or Inf; the run stops and the last good checkpoint stays as it was."""


class _StopRequest:
    """SIGTERM (preemption) or Ctrl-C (SIGINT) sets a flag; the loop saves a checkpoint at the next
    step boundary. A second Ctrl-C interrupts at once, as Python's default handler does."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        # JAX's multi-process runtime has its own preemption notifier (see _preempted); Python
        # handlers are only installed for single-process runs, and only from the main thread.
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def _log(message: str) -> None:
    if distributed.is_primary():
        print(message, flush=True)


def _preempted(stop: _StopRequest, checkpointer: Checkpointer, step: int) -> bool:
    if jax.process_count() > 1:
        # All processes agree on the same step to stop at (JAX's preemption sync point).
        return bool(checkpointer.manager.reached_preemption(step))
    return stop.requested


def _initial_state(trainer: Trainer, config: ml_collections.ConfigDict) -> TrainState:
    init_from = config.model.get("init_from")
    if not init_from:
        return trainer.init_state(int(config.train.seed))
    from seallm_jax import hf
    # Every process reads the tensors on the host; each device receives only its own shard.
    if paths.isdir(paths.join(init_from, CHECKPOINT_SUBDIR)) or paths.isdir(paths.join(init_from, hf.ORBAX_PARAMS)):
        # A training workdir (its latest step, e.g. SFT stage 1) or a `convert hf-to-orbax` directory:
        # the parameters only; the optimizer state and the step start afresh.
        _, restored = hf.load_orbax(init_from, param_dtype=trainer.model_config.param_dtype)
        host_params, kind = jax.device_get(restored), "Orbax checkpoint"
    else:
        # A Hugging Face directory in object storage is read from this host's copy of it.
        host_params = hf.read_params(files.local_copy(init_from), trainer.model_config, trainer.abstract_params)
        kind = "Hugging Face checkpoint"
    params = shd.place_host_arrays(host_params, trainer.param_shardings)
    _log(f"initialised from {kind} {init_from}")
    return trainer.init_state(int(config.train.seed), params=params)


def _write_run_files(workdir: str, config: ml_collections.ConfigDict, model_config: Any) -> None:
    """train_config.json (the full run config) and, for `seallm-jax convert orbax-to-hf WORKDIR`,
    the model's Hugging Face config.json plus the tokenizer files of `init_from` (or of `data.tokenizer`)."""
    files.write_text(paths.join(workdir, TRAIN_CONFIG_FILE), config.to_json(indent=2))
    files.write_text(paths.join(workdir, "config.json"), json.dumps(model_config.to_hf(), indent=2))
    from seallm_jax import hf
    # The tokenizer of the model started from, else the run's own tokenizer directory (e.g. a
    # vocabulary subset), so that the workdir is a complete model for the next stage or an export.
    if not (config.model.get("init_from") and hf.copy_tokenizer_files(config.model.init_from, workdir)):
        hf.copy_tokenizer_files(config.data.get("tokenizer") or None, workdir)


def _evaluate(trainer: Trainer, state: TrainState, source: Any, initial_state: dict, num_batches: int) -> float:
    """Mean held-out cross-entropy over the same `num_batches` batches every time."""
    source.restore(initial_state)
    loss_sum, tokens = 0.0, 0.0
    for _ in range(num_batches):
        try:
            batch = next(source)
        except StopIteration:
            break
        out = jax.device_get(trainer.eval_step(state.params, trainer.put_batch(batch)))
        loss_sum += float(out["loss_sum"])
        tokens += float(out["target_tokens"])
    return loss_sum / max(tokens, 1.0)


def train(config: ml_collections.ConfigDict, workdir: str, *,
          optimizer_wrapper: OptimizerWrapper | None = None,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) training in `workdir`; returns {'status', 'step', 'losses', 'eval_losses'}.

    status is 'completed' or 'preempted' (SIGTERM: a checkpoint of the current step was saved).
    Raises TrainingDivergedError on a NaN/Inf loss without checkpointing the bad state,
    CheckpointSaveError when a checkpoint cannot be written, DamagedCheckpointError when no saved
    step restores (or the newest does not, with checkpoint.on_damage='error'). In a multi-process
    run, a process that loses another ends itself with exit code 75 (distributed.exit_lost_run).
    """
    distributed.initialize(config.distributed.mode, int(config.distributed.initialization_timeout))
    primary = distributed.is_primary()
    # A bucket that does not exist or cannot be reached with the credentials at hand fails here, in
    # one line, before anything is compiled or written.
    workdir = paths.check_bucket(paths.resolve(workdir), "workdir")
    # A mesh that does not fit the devices, a bad model field or optimizer setting fails before
    # anything is written.
    mesh = shd.make_mesh(config.mesh.to_dict())
    fit_vocabulary(config, _log)  # a model trained from scratch on a token store gets its tokenizer's ids
    model_config = model_config_from(config)
    trainable = getattr(optimizer_wrapper, "trainable", None)
    trainer = Trainer(config, mesh, build_optimizer(config, optimizer_wrapper), build_schedule(config),
                      model_config=model_config, trainable=trainable(config) if trainable is not None else None)
    paths.makedirs(workdir)
    if primary:
        _write_run_files(workdir, config, model_config)
    train_cfg = config.train
    total_steps, global_batch, seq_len = int(train_cfg.steps), int(train_cfg.global_batch_size), int(train_cfg.seq_len)
    row_start, row_stop = shd.process_batch_rows(mesh, global_batch, trainer.rules)
    source = make_source(config, split="train", row_start=row_start, row_stop=row_stop,
                         vocab_size=model_config.vocab_size)
    eval_every, eval_batches = int(train_cfg.eval_every), int(train_cfg.eval_batches)
    eval_source = (make_source(config, split="eval", row_start=row_start, row_stop=row_stop,
                               vocab_size=model_config.vocab_size) if eval_every > 0 and eval_batches > 0 else None)
    eval_initial = eval_source.state() if eval_source is not None else {}

    ckpt_cfg = config.checkpoint
    checkpointer = Checkpointer(paths.join(workdir, CHECKPOINT_SUBDIR), keep=int(ckpt_cfg.keep),
                                async_save=bool(ckpt_cfg.async_save))
    writer = MetricsWriter(workdir, enabled=primary)
    # The newest step that restores on every process; damaged newer ones are moved aside (or, with
    # checkpoint.on_damage='error', stop the run). Everything below comes from that one step.
    newest = checkpointer.restore_newest(
        abstract_params=shd.abstract_with_shardings(trainer.abstract_params, trainer.param_shardings),
        abstract_opt_state=shd.abstract_with_shardings(trainer.abstract_state.opt_state, trainer.opt_shardings),
        on_damage=str(ckpt_cfg.on_damage), log=_log)
    latest = newest[0] if newest is not None else None
    if newest is not None:
        restored = newest[1]
        # Host values onto the mesh the multi-process-safe way (every process holds the same value).
        step_and_rng = shd.place_host_arrays({"step": np.asarray(latest, np.int32), "rng": restored["rng"]},
                                             {"step": trainer.state_shardings.step, "rng": trainer.state_shardings.rng})
        state = TrainState(step=step_and_rng["step"], params=restored["params"], opt_state=restored["opt_state"],
                           rng=step_and_rng["rng"])
        source.restore(restored["meta"]["data_state"])
        writer.truncate_after(latest)
        _log(f"resumed from {checkpointer.directory}/{latest}")
    else:
        state = _initial_state(trainer, config)
    start = latest or 0

    n_params = model_config.num_parameters()
    flops_per_token = model_config.flops_per_token(seq_len)
    _log(f"model: {n_params / 1e6:.2f}M parameters; mesh {dict(mesh.shape)} over {jax.device_count()} devices, "
         f"{jax.process_count()} process(es); steps {start}->{total_steps}")

    describe = getattr(optimizer_wrapper, "describe", None)
    if describe is not None:
        _log(describe(config, trainer.abstract_params))

    stop = _StopRequest()
    stop.install()
    progress = None
    if primary and train_cfg.progress_bar:
        from tqdm import tqdm
        progress = tqdm(total=total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    log_every, ckpt_every = max(int(train_cfg.log_every), 1), int(ckpt_cfg.every)
    tokens_per_step = global_batch * seq_len
    losses: dict[int, float] = {}
    eval_losses: dict[int, float] = {}
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    last_saved = latest
    interval_start, interval_steps = time.perf_counter(), 0
    status = "completed"
    step = start
    in_flight = None  # the loss of the newest dispatched step (progress bar only)

    def flush() -> dict[str, float] | None:
        """Fetch pending step metrics; stop on a non-finite loss before anything is saved."""
        nonlocal pending
        if not pending:
            return None
        fetched = jax.device_get(pending)
        pending = []
        last = None
        for done, metrics in fetched:
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                checkpointer.wait()  # let a save of an earlier, good step finish
                good = checkpointer.latest_step()
                raise TrainingDivergedError(
                    f"loss is {loss} at step {done}: training stopped. The last good checkpoint "
                    f"({'step ' + str(good) if good is not None else 'none'}) in {checkpointer.directory} "
                    "is untouched; lower config.optimizer.learning_rate or check the data, then rerun to resume.")
            losses[done] = loss
            last = {k: float(v) for k, v in metrics.items()}
            last["step"] = done
        return last

    def save(done: int) -> None:
        nonlocal last_saved
        if last_saved == done:
            return
        checkpointer.save(done, params=state.params, opt_state=state.opt_state, rng=state.rng,
                          data_state=source.state())
        writer.sync()  # a remote workdir's metrics.jsonl holds every step up to the checkpoint
        last_saved = done

    # Multi-process: a process that died leaves the others in a collective that fails (gloo) or never
    # returns (NCCL, TPU): either way this process stops in bounded time with one line and exit 75.
    where = f"process {jax.process_index()} of {jax.process_count()}"
    rerun = ("rerun every process with the same command to resume from the last complete checkpoint in "
             f"{checkpointer.directory}")
    stall_timeout = float(config.distributed.stall_timeout) if jax.process_count() > 1 else 0.0
    watchdog = distributed.StallWatchdog(stall_timeout, lambda idle: (
        f"seallm-jax train: error: {where} made no progress for {idle:.0f} s at step {step} "
        f"(distributed.stall_timeout={stall_timeout:g}): another process has most likely died or hangs; {rerun}"))
    try:
        while step < total_steps:
            watchdog.progress()
            checkpointer.check()  # a background save that failed stops the run now, not at the next save
            if _preempted(stop, checkpointer, step):
                flush()
                save(step)
                if stop.signal == signal.SIGINT:
                    checkpointer.wait()
                    raise KeyboardInterrupt(f"checkpoint saved at step {step} in {checkpointer.directory}; "
                                            "rerun the same command to resume")
                status = "preempted"
                _log(f"preempted (SIGTERM): checkpoint saved at step {step}; rerun the same command to resume")
                break
            batch = trainer.put_batch(next(source))
            state, metrics = trainer.train_step(state, batch)
            step += 1
            pending.append((step, metrics))
            interval_steps += 1
            if progress is not None:
                # Count a step when it has finished, keeping one step in flight: dispatch is
                # asynchronous, and counting dispatches would make the bar and its ETA jump.
                if in_flight is not None:
                    jax.block_until_ready(in_flight)
                    progress.update(1)
                in_flight = metrics["loss"]
            if step == start + 1:
                # The first step includes compilation: keep it out of the throughput figures, and
                # out of the watchdog's budget (compiling a large model can take minutes).
                jax.block_until_ready(metrics)
                interval_start, interval_steps = time.perf_counter(), 0
                watchdog.start()
            is_log = step % log_every == 0 or step == total_steps
            is_ckpt = (ckpt_every > 0 and step % ckpt_every == 0) or step == total_steps
            is_eval = eval_source is not None and step % eval_every == 0
            if not (is_log or is_ckpt or is_eval):
                continue
            last = flush()
            record: dict[str, float] = {}
            if is_log and last is not None:
                elapsed = time.perf_counter() - interval_start
                record = {k: last[k] for k in ("loss", "grad_norm", "learning_rate", "z_loss") if k in last}
                if interval_steps > 0 and elapsed > 0:
                    tokens_per_s = interval_steps * tokens_per_step / elapsed
                    record["tokens_per_s"] = tokens_per_s
                    record["mfu"] = mfu(flops_per_token, tokens_per_s, float(train_cfg.peak_flops), jax.device_count())
                record.update(getattr(source, "metrics", dict)())  # e.g. epochs of a language that repeats
                interval_start, interval_steps = time.perf_counter(), 0
            if is_eval:
                watchdog.progress()
                eval_losses[step] = record["eval_loss"] = _evaluate(trainer, state, eval_source, eval_initial,
                                                                    eval_batches)
                watchdog.progress()
            if record:
                writer.write(step, record)
                if on_step is not None:
                    on_step(step, record)
                if progress is not None:
                    postfix = {}
                    if "loss" in record:
                        postfix["loss"] = f"{record['loss']:.4f}"
                    if "tokens_per_s" in record:
                        postfix["tok/s"] = f"{record['tokens_per_s']:.0f}"
                    if "eval_loss" in record:
                        postfix["eval"] = f"{record['eval_loss']:.4f}"
                    progress.set_postfix(postfix, refresh=False)
            if is_ckpt:
                save(step)
        else:
            flush()
            save(step)
    except jax.errors.JaxRuntimeError as error:
        if jax.process_count() == 1:
            raise
        # Exit now: the clean-up below would wait for the lost process in Orbax's and JAX's barriers.
        distributed.exit_lost_run(f"seallm-jax train: error: {where} stopped at step {step}: a collective or device "
                                  f"operation failed ({describe_error(error)}); if another process died, {rerun}")
    finally:
        stop.uninstall()
        if progress is not None:
            progress.update(step - progress.n)
            progress.close()
        writer.close()
        try:
            checkpointer.close()  # waits for the last save: still under the watchdog
        finally:
            watchdog.stop()
    _log(f"{status} at step {step}; checkpoints in {checkpointer.directory}")
    return {"status": status, "step": step, "losses": losses, "eval_losses": eval_losses}
