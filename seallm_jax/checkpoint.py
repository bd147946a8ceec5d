"""Orbax checkpoints of a training run: params, optimizer state, step, RNG and data position.

Saves are asynchronous and atomic (written to a temporary directory, renamed when complete), so a
run killed mid-save resumes from the previous complete step. Every process takes part in a save.
A step that no longer restores (a truncated file, a lost metadata file) is moved aside to
`STEP.damaged` and the newest step that does restore is used; a save that fails stops the run with
a `CheckpointSaveError` that says which complete checkpoints remain.

The directory may be in object storage (gs://, s3://: seallm_jax.paths); Orbax then marks a complete
step with commit_success.txt instead of renaming a temporary directory, which object stores lack.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from seallm_jax import distributed, paths
from seallm_jax.errors import CheckpointSaveError, ConfigError, DamagedCheckpointError

CHECKPOINT_SUBDIR = "checkpoints"
ITEMS = ("params", "opt_state", "meta")
_STEP_DIR = re.compile(r"^\d+$")


DAMAGED_SUFFIX = ".damaged"
ON_DAMAGE = ("fallback", "error")
# What every complete step directory holds (Orbax writes each item's metadata last).
_STEP_FILES = ("_CHECKPOINT_METADATA", "params/_METADATA", "opt_state/_METADATA", "meta/metadata")
_META_KEYS = ("step", "rng", "data_state")


def describe_error(error: BaseException, limit: int = 400) -> str:
    """One line for an error from deep inside Orbax/TensorStore: its root cause's first line, its
    middle cut when long. The operating system's reason leads when TensorStore names one
    (`[os_error_code='27']`): it may sit anywhere in the message, e.g. before a long JSON spec."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    os_error = re.search(r"os_error_code='?(\d+)", text)
    if os_error:
        reason = os.strerror(int(os_error.group(1)))
        if not text.startswith(reason):
            text = f"{reason}: {text}"
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2 - 3]} ... {text[-(limit // 2 - 2):]}"


def missing_files(step_dir: str) -> list[str]:
    """The files of a complete step that `step_dir` lacks ([] for a complete-looking step)."""
    return [name for name in _STEP_FILES if not paths.isfile(paths.join(step_dir, name))]


def _list(steps: list[int]) -> str:
    return ", ".join(str(step) for step in steps)


class _FailureReports:
    """Orbax and TensorStore report a failed save or restore at length on their own: Orbax logs the
    failure with its traceback before raising it, and the reads and writes abandoned after it leave
    futures whose errors asyncio logs when they are collected ('Future exception was never
    retrieved') and completion callbacks that print 'RuntimeError: Event loop is closed' (an
    unraisable exception). The Checkpointer raises the failure itself as one CheckpointError, the
    original as its __cause__; so, unless SEALLM_JAX_DEBUG is set, Orbax's error records and those
    complaints of abandoned asynchronous work (which, in a training process, is Orbax's) are dropped.
    """

    installed = False

    @classmethod
    def install(cls) -> None:
        """Once per process."""
        if cls.installed or os.environ.get("SEALLM_JAX_DEBUG", "") not in ("", "0"):
            return
        cls.installed = True
        logging.getLogger("absl").addFilter(cls._keep_log)  # Orbax logs through absl
        logging.getLogger("asyncio").addFilter(cls._keep_log)
        previous_hook = sys.unraisablehook

        def hook(unraisable: Any) -> None:
            loop_closed = (isinstance(unraisable.exc_value, RuntimeError) and unraisable.object is None
                           and str(unraisable.exc_value) == "Event loop is closed")
            if not (loop_closed or cls._raised_in_orbax(unraisable)):
                previous_hook(unraisable)

        sys.unraisablehook = hook

    @staticmethod
    def _raised_in_orbax(unraisable: Any) -> bool:
        """An abandoned Orbax coroutine ('Exception ignored in: <coroutine object
        _read_array_index_and_device_put …>') or an error raised from Orbax's own code."""
        code = getattr(unraisable.object, "cr_code", None)
        files = [code.co_filename] if code is not None else []
        frame = unraisable.exc_traceback
        while frame is not None:
            files.append(frame.tb_frame.f_code.co_filename)
            frame = frame.tb_next
        return any(f"{os.sep}orbax{os.sep}" in name for name in files)

    @staticmethod
    def _keep_log(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        return not (from_orbax or "exception was never retrieved" in record.getMessage())


class Checkpointer:
    """A CheckpointManager over `directory` keeping the last `keep` complete steps."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        _FailureReports.install()
        self.directory = paths.resolve(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            # Half-written steps (from a killed run) live in *.orbax-checkpoint-tmp-* directories:
            # they are never listed as steps, and are removed when a run starts.
            cleanup_tmp_directories=True,
            # The step's directory is made before save() returns: a directory that cannot be written
            # fails the save at once, instead of leaving Orbax's writer threads waiting for it.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        # Orbax's default array layout is OCDBT (a few large files per process). gcp-storage-emulator
        # does not implement the conditional writes it commits with ('Malformed StorageGeneration'),
        # so against an emulator the steps use the plain zarr layout (one object per array chunk)
        # unless SEALLM_JAX_EMULATOR_OCDBT=1 (fake-gcs-server); real GCS and S3 keep OCDBT.
        # Restores read either layout.
        use_ocdbt = paths.ocdbt_supported(self.directory)
        handlers = {name: ocp.StandardCheckpointHandler(use_ocdbt=use_ocdbt) for name in ("params", "opt_state")}
        handlers["meta"] = ocp.JsonCheckpointHandler()
        self.manager = ocp.CheckpointManager(paths.epath(self.directory), options=options, item_names=ITEMS,
                                             item_handlers=handlers)
        self._pending_step: int | None = None  # the step whose save may still be running

    def latest_step(self) -> int | None:
        """The newest complete (finalized) step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def step_dir(self, step: int) -> str:
        return paths.join(self.directory, str(step))

    def save(self, step: int, *, params: Any, opt_state: Any, rng: jax.Array,
             data_state: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> None:
        """Start saving `step` (returns while the write continues in the background).

        Raises CheckpointSaveError if this save, or the previous one still in the background, fails.
        """
        self.wait()  # a failure of the previous save is reported as that step's
        meta = {"step": int(step), "rng": np.asarray(jax.device_get(rng)).tolist(),
                "data_state": dict(data_state or {}), **dict(extra or {})}
        self._pending_step = int(step)
        self._surface_save_errors(lambda: self.manager.save(int(step), args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), force=True))

    def wait(self) -> None:
        """Block until the pending asynchronous save is complete on disk (CheckpointSaveError if it failed)."""
        self._surface_save_errors(self.manager.wait_until_finished)
        self._pending_step = None

    def check(self) -> None:
        """Without blocking: raise CheckpointSaveError if a background save has already failed."""
        # Only a finished save is waited for: Orbax's check_for_errors would take the error away from
        # its own finalize thread, which would then go on to delete the older steps.
        if self._pending_step is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def _surface_save_errors(self, operation: Callable[[], Any]) -> None:
        try:
            operation()
        except Exception as error:  # noqa: BLE001 - any failure to write is reported the same way
            step, self._pending_step = self._pending_step, None
            raise self._save_failed(step, error) from error

    def _save_failed(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        """The error for a failed save, after checking which complete steps are still on disk."""
        try:
            self.manager.reload()
            steps = sorted(s for s in self.all_steps() if s != step)
        except Exception:  # noqa: BLE001 - the directory itself may be gone
            steps = []
        intact = [s for s in steps if not missing_files(self.step_dir(s))]
        if intact:
            remains = (f"Its complete checkpoints (step{'s' if len(intact) > 1 else ''} {_list(intact)}) are "
                       "intact: fix the directory (free space, permissions), then rerun the same command to "
                       f"resume from step {intact[-1]}")
        else:
            remains = ("It holds no complete checkpoint: fix the directory (free space, permissions), then "
                       "rerun the same command, which starts from the beginning")
        what = f"step {step}" if step is not None else "a checkpoint"
        return CheckpointSaveError(f"saving {what} to {self.directory} failed ({describe_error(error)}); "
                                   f"training stopped. {remains}")

    def restore(self, step: int, *, abstract_params: Any, abstract_opt_state: Any) -> dict[str, Any]:
        """Restore `step` into the shardings carried by the abstract trees (ShapeDtypeStruct.sharding)."""
        restored = self.manager.restore(int(step), args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            meta=ocp.args.JsonRestore()))
        meta = dict(restored["meta"])
        return {"params": restored["params"], "opt_state": restored["opt_state"], "meta": meta,
                "rng": np.asarray(meta["rng"], np.uint32)}

    def restore_newest(self, *, abstract_params: Any, abstract_opt_state: Any, on_damage: str = "fallback",
                       log: Callable[[str], None] = print) -> tuple[int, dict[str, Any]] | None:
        """(step, restored) of the newest step that restores on every process; None without steps.

        A step that fails to restore on any process is damaged. on_damage='fallback' tries the next
        older step and, once one restores, moves the damaged ones aside to STEP.damaged (never
        deletes them); 'error' raises DamagedCheckpointError at the first damaged step. When no step
        restores, DamagedCheckpointError lists them all and nothing is moved, so a rerun cannot
        silently start from scratch. Every process must call this (the processes agree per step).
        """
        if on_damage not in ON_DAMAGE:
            raise ConfigError(f"checkpoint.on_damage={on_damage!r}: expected one of {', '.join(ON_DAMAGE)}")
        steps = sorted(self.all_steps(), reverse=True)
        damaged: list[tuple[int, str]] = []
        for step in steps:
            restored, reason = self._try_restore(step, abstract_params, abstract_opt_state)
            # A damaged file may be read by one process only: every process learns every outcome.
            reasons = distributed.gather_text(reason)
            failures = [(process, text) for process, text in enumerate(reasons) if text]
            if not failures:
                self._move_aside(damaged, resumed_step=step, log=log)
                return step, restored
            del restored
            if len(reasons) > 1:
                reason = "; ".join(f"process {process}: {text}" for process, text in failures)
            damaged.append((step, reason))
            if on_damage == "error":
                raise DamagedCheckpointError(
                    f"checkpoint {self.step_dir(step)} cannot be restored ({reason}); rerun with "
                    "--config.checkpoint.on_damage=fallback to resume from the newest step that restores "
                    "(damaged steps are moved aside, not deleted)")
        if damaged:
            tried = "; ".join(f"step {step}: {reason}" for step, reason in damaged)
            raise DamagedCheckpointError(
                f"no checkpoint in {self.directory} can be restored (tried {tried}); nothing was moved "
                "or deleted. Restore the directory from a copy, or move it away to start from scratch")
        return None

    def _try_restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[dict | None, str]:
        """(restored, '') or (None, why the step does not restore)."""
        missing = missing_files(self.step_dir(step))
        if missing:
            return None, f"{', '.join(missing)} missing"
        try:
            restored = self.restore(step, abstract_params=abstract_params, abstract_opt_state=abstract_opt_state)
        except Exception as error:  # noqa: BLE001 - whatever the damage, the step does not restore
            return None, describe_error(error)
        absent = [key for key in _META_KEYS if key not in restored["meta"]]
        if absent:
            return None, f"meta/metadata lacks {', '.join(absent)}"
        if restored["meta"]["step"] != step:
            return None, f"meta/metadata is for step {restored['meta']['step']}"
        return restored, ""

    def _move_aside(self, damaged: list[tuple[int, str]], *, resumed_step: int, log: Callable[[str], None]) -> None:
        """Rename the damaged steps to STEP.damaged (process 0), so that Orbax no longer lists them."""
        if not damaged:
            return
        if jax.process_index() == 0:
            for step, reason in damaged:
                target = self.step_dir(step) + DAMAGED_SUFFIX
                for copy in itertools.count(2):  # a step damaged before keeps its first copy
                    if not paths.exists(target):
                        break
                    target = f"{self.step_dir(step)}{DAMAGED_SUFFIX}.{copy}"
                paths.rename(self.step_dir(step), target)
                log(f"checkpoint {self.step_dir(step)} cannot be restored ({reason}); moved it to "
                    f"{target} and resuming from step {resumed_step}")
        distributed.barrier("seallm_jax.checkpoint.damaged_moved_aside")
        self.manager.reload()


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, int]:
    """(checkpoint directory, step) for a workdir, a checkpoints directory, or one step's directory."""
    path = paths.resolve(path)
    if paths.isdir(paths.join(path, CHECKPOINT_SUBDIR)):
        path = paths.join(path, CHECKPOINT_SUBDIR)
    if _STEP_DIR.match(paths.basename(path)) and paths.isdir(paths.join(path, "params")):
        return paths.dirname(path), int(paths.basename(path))
    if not paths.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    steps = ocp.utils.checkpoint_steps(paths.epath(path))  # finalized steps only: temporary directories are skipped
    if not steps:
        raise FileNotFoundError(f"{path} holds no complete checkpoint (expected step directories with params/)")
    return path, max(steps)


def load_params(ckpt_or_workdir: str | os.PathLike, abstract_params: Any | None = None) -> Any:
    """The params of the latest complete step of a workdir (or of the given step directory).

    `abstract_params`: a tree of `jax.ShapeDtypeStruct` (with `.sharding` to restore onto a mesh);
    None restores host numpy arrays (what an HF export needs on one machine).
    """
    directory, step = resolve_checkpoint(ckpt_or_workdir)
    item_dir = paths.epath(paths.join(directory, str(step), "params"))
    if abstract_params is None:
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        metadata = checkpointer.metadata(item_dir).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        return checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    # Leaves without a sharding go to this process's first device: Orbax would otherwise take the
    # saved sharding, whose devices (e.g. another process's, in a multi-process run) may not exist here.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree.map(
        lambda leaf: leaf if getattr(leaf, "sharding", None) is not None
        else jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract_params)
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    return checkpointer.restore(item_dir, args=ocp.args.StandardRestore(abstract_params))
