"""Writing outputs so that a failure leaves nothing half-written: every file or directory the library
writes for the user appears whole (write to a temporary sibling, then rename) or not at all.

Also the checks on output paths that the command line runs before any work starts. Remote outputs
(gs://, s3://; seallm_jax.paths) are written locally first and uploaded whole when complete.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from seallm_jax import paths
from seallm_jax.errors import UserError


def check_output_file(path: str | os.PathLike, what: str = "output file") -> str:
    """`path` as a string if a file can be written there (it is not a directory and its parent is
    not a file); checked before the work that produces it. A remote path: its bucket must exist."""
    path = os.fspath(path)
    if paths.is_remote(path):
        path = paths.check_bucket(path, what)
        if paths.isdir(path):
            raise UserError(f"{what} {path!r} is a directory; give a file name")
        return path
    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a directory; give a file name")
    _check_parent(path, what)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> str:
    """`path` as a string if a directory can be written there (it is not an existing file)."""
    path = os.fspath(path)
    if paths.is_remote(path):
        path = paths.check_bucket(path, what)
        if paths.isfile(path):
            raise UserError(f"{what} {path!r} exists and is a file, not a directory")
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path!r} exists and is a file, not a directory")
    _check_parent(path, what)
    return path


def _check_parent(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise UserError(f"{what} {path!r}: {parent!r} is a file, not a directory")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary sibling path (same extension, so writers that go by it still do) to write
    into; on success it replaces `path`, on failure it is removed and `path` is left as it was.
    Remote `path`: the staging file is local and is uploaded as one object on success."""
    path = check_output_file(path)
    if paths.is_remote(path):
        with _remote_staging(path) as staging:
            staging_file = os.path.join(staging, paths.basename(path))
            yield staging_file
            paths.copy_file(staging_file, path)
        return
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    base, extension = os.path.splitext(os.path.basename(path))
    handle, staging = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=extension, dir=parent)
    os.close(handle)
    try:
        yield staging
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, if_exists: str = "replace") -> Iterator[str]:
    """Yields a temporary sibling directory to write into; on success it becomes `path`, on failure
    it is removed: a reader never sees a half-written directory.

    if_exists="replace": an existing `path` stays as it was until the new one is complete, then is
    replaced whole. if_exists="keep" (write-once caches shared by concurrent processes): if `path`
    exists when ours is complete, another writer won the race and ours is discarded.

    Remote `path` (object stores have no rename): the staging directory is local; on success an
    existing `path` is deleted (replace) or kept (keep), then every file is uploaded as one object,
    the top-level files (config.json, manifest.json) last, so a reader that finds them finds the rest.
    """
    if if_exists not in ("replace", "keep"):
        raise ValueError(f"if_exists={if_exists!r}: expected 'replace' or 'keep'")
    path = check_output_dir(path)
    if paths.is_remote(path):
        with _remote_staging(path) as staging:
            yield staging
            if paths.exists(path):
                if if_exists == "keep":
                    return
                paths.rmtree(path)
            paths.upload_directory(staging, path)
        return
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield staging
        if if_exists == "keep" or not os.path.exists(path):
            try:
                os.rename(staging, path)  # also replaces an empty directory
            except OSError:
                if not (if_exists == "keep" and os.path.isdir(path)):  # not a concurrent writer winning
                    raise
        else:
            backup = staging + ".old"
            os.rename(path, backup)
            os.rename(staging, path)
            shutil.rmtree(backup)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _remote_staging(path: str) -> Iterator[str]:
    """A local temporary directory for what will be uploaded to the remote `path`; always removed."""
    staging = tempfile.mkdtemp(prefix=f".{paths.basename(path)}.tmp-")
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
