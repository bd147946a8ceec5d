"""Orbax checkpoints of a training run: params, optimizer state, step, RNG and data position.

Saves are asynchronous and atomic (written to a temporary directory, renamed when complete), so a
run killed mid-save resumes from the previous complete step. Every process takes part in a save.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"
ITEMS = ("params", "opt_state", "meta")
_STEP_DIR = re.compile(r"^\d+$")


class Checkpointer:
    """A CheckpointManager over `directory` keeping the last `keep` complete steps."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            # Half-written steps (from a killed run) live in *.orbax-checkpoint-tmp-* directories:
            # they are never listed as steps, and are removed when a run starts.
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        """The newest complete (finalized) step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, *, params: Any, opt_state: Any, rng: jax.Array,
             data_state: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> None:
        """Start saving `step` (returns while the write continues in the background)."""
        meta = {"step": int(step), "rng": np.asarray(jax.device_get(rng)).tolist(),
                "data_state": dict(data_state or {}), **dict(extra or {})}
        self.manager.save(int(step), args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, *, abstract_params: Any, abstract_opt_state: Any) -> dict[str, Any]:
        """Restore `step` into the shardings carried by the abstract trees (ShapeDtypeStruct.sharding)."""
        restored = self.manager.restore(int(step), args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            meta=ocp.args.JsonRestore()))
        meta = dict(restored["meta"])
        return {"params": restored["params"], "opt_state": restored["opt_state"], "meta": meta,
                "rng": np.asarray(meta["rng"], np.uint32)}

    def wait(self) -> None:
        """Block until the pending asynchronous save is complete on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, int]:
    """(checkpoint directory, step) for a workdir, a checkpoints directory, or one step's directory."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
        path = os.path.join(path, CHECKPOINT_SUBDIR)
    if _STEP_DIR.match(os.path.basename(path)) and os.path.isdir(os.path.join(path, "params")):
        return os.path.dirname(path), int(os.path.basename(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    steps = ocp.utils.checkpoint_steps(path)  # finalized steps only: temporary directories are skipped
    if not steps:
        raise FileNotFoundError(f"{path} holds no complete checkpoint (expected step directories with params/)")
    return path, max(steps)


def load_params(ckpt_or_workdir: str | os.PathLike, abstract_params: Any | None = None) -> Any:
    """The params of the latest complete step of a workdir (or of the given step directory).

    `abstract_params`: a tree of `jax.ShapeDtypeStruct` (with `.sharding` to restore onto a mesh);
    None restores host numpy arrays (what an HF export needs on one machine).
    """
    directory, step = resolve_checkpoint(ckpt_or_workdir)
    item_dir = os.path.join(directory, str(step), "params")
    if abstract_params is None:
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        metadata = checkpointer.metadata(item_dir).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        return checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    return checkpointer.restore(item_dir, args=ocp.args.StandardRestore(abstract_params))
