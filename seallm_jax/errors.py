"""The errors a user can fix, and nothing else.

Every error that the person at the keyboard can fix (a missing file, a malformed config, a language
the data does not have, a mesh that does not fit the devices) is a `UserError`. The command line
prints its message in one line, `seallm-jax <command>: error: <message>`, and exits 2; anything
else is a bug and keeps its traceback (exit 1). Library callers catch `UserError` the same way.

Each subclass also derives from the built-in exception it used to be (`ValueError`,
`FileNotFoundError`), so `except ValueError` in existing code keeps working.

This module imports nothing heavy: the command line uses it before JAX is loaded.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class UserError(Exception):
    """Bad input the user can fix; the message names the culprit and, where it helps, the fix."""


REMOTE_SCHEMES = ("gs://", "s3://")  # object storage (seallm_jax.paths reads and writes it)


class RemotePathError(UserError):
    """A gs:// or s3:// path that cannot be used: no such bucket, no credentials, or a command that
    needs a local path."""


class ConfigError(UserError, ValueError):
    """A model or training config that cannot be used (unknown key, unsupported value, bad mesh)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the model: names the file or tensor."""


class DataFormatError(UserError, ValueError):
    """Malformed input data; the message names the file and line."""


class MissingDataError(UserError, FileNotFoundError):
    """Data the command needs is not where it was asked to be; the message says where to put it."""


class UnknownLanguageError(UserError, ValueError):
    """A language code that the corpus, the neuron file or the task does not have."""


def require_file(path: str | os.PathLike, what: str) -> str:
    """`path` as a string if it is a non-empty regular file; otherwise a `UserError` naming `what`."""
    path = require_local(path, what)
    if not os.path.exists(path):
        raise MissingDataError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise DataFormatError(f"{what} {path!r} is empty")
    return path


def require_dir(path: str | os.PathLike, what: str) -> str:
    """`path` as a string if it is an existing directory; otherwise a `UserError` naming `what`."""
    path = require_local(path, what)
    if not os.path.exists(path):
        raise MissingDataError(f"{what} {path!r} does not exist")
    if not os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a file, not a directory")
    return path


def close_progress_bars() -> None:
    """Close every live tqdm progress bar, so that what is printed next (an error line) starts a line
    of its own: a bar rewrites its line with carriage returns and ends it only when it closes, in a
    terminal and in a log file or pipe alike. A bar left on screen keeps its last state."""
    tqdm_std = sys.modules.get("tqdm.std")
    if tqdm_std is None:
        return  # tqdm never imported: no bar exists
    bars, classes = set(), [tqdm_std.tqdm]
    while classes:  # each tqdm subclass (tqdm.auto's included) may keep its own set of live bars
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        bars.update(getattr(cls, "_instances", ()))
    for bar in sorted(bars, key=lambda bar: -abs(getattr(bar, "pos", 0))):  # nested bars first
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error being reported
            pass


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written; the message names the directory and the complete
    checkpoints that remain in it."""


class DamagedCheckpointError(CheckpointError):
    """A saved step that cannot be restored (with `checkpoint.on_damage='error'`), or no step that
    restores at all; the message lists every step tried and why it failed."""


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# What a dtype argument takes: "bfloat16", jnp.bfloat16 (a scalar type), np.float32, np.dtype("float32").
DTypeLike = "str | type | np.dtype"



def check_dtype(dtype: DTypeLike, what: str = "--dtype") -> str:
    """The name of a compute dtype the model runs in ("float32", "bfloat16", "float16"), given as
    JAX users write it: the name, `jnp.float32` / `jnp.bfloat16`, `np.float32` or an `np.dtype`.
    Anything else is a `ConfigError` naming `what`."""
    name = dtype if isinstance(dtype, str) else _dtype_name(dtype)
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"{what} {dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)} "
                          "(a name, jnp.float32 / jnp.bfloat16 or a NumPy dtype)")
    return name


def _dtype_name(dtype: object) -> str | None:
    """numpy's name for a dtype-like object, or None when it is not one."""
    import numpy as np  # not at module level: the command line checks string dtypes before numpy loads

    inner = getattr(dtype, "dtype", None)  # jnp.float32 is a scalar type carrying its np.dtype
    try:
        return (inner if isinstance(inner, np.dtype) else np.dtype(dtype)).name  # type: ignore[arg-type]
    except TypeError:
        return None


def require_local(path: str | os.PathLike, what: str) -> str:
    """`path` if it is local; a RemotePathError naming it where only a local path will do."""
    path = os.fspath(path)
    if path.startswith(REMOTE_SCHEMES):
        raise RemotePathError(f"{what} {path!r} is in object storage; this needs a local path "
                              "(copy it to local disk first)")
    return path
