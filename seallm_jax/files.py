"""Writing outputs so that a failure leaves nothing half-written: every file or directory the library
writes for the user appears whole (write to a temporary sibling, then rename) or not at all.

Also the checks on output paths that the command line runs before any work starts. Remote outputs
(gs://, s3://; seallm_jax.paths) are written locally first and uploaded whole when complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

from seallm_jax import paths
from seallm_jax.errors import RemotePathError, UserError


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
    staging = paths.local_staging("upload")
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """The whole file at once: locally through a temporary sibling and a rename; remotely one object
    upload (an object appears whole or not at all)."""
    with atomic_file(path) as staging, open(staging, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def local_copy(url: str, *, cache_dir: str | None = None, only: Sequence[str] | None = None) -> str:
    """A local directory holding the remote directory `url`, copied once per host and reused.

    The copy lives in CACHE/remote/<sha256(url)[:16]>-<name> (CACHE: `cache_dir`, else paths.cache_root()).
    It is made whole or not at all (atomic_directory, if_exists='keep': processes of one host racing
    for it keep one copy), and every file's size is checked against the object's. A cached copy is
    reused while every remote object still has its size; a changed directory is copied again.
    `only`: copy just these files (names relative to `url`), e.g. ("config.json",).
    A local `url` is returned as it is.
    """
    if not paths.is_remote(url):
        return url
    url = paths.check_bucket(url, "remote directory")
    if only is not None:
        listing = {name: paths.size(paths.join(url, name)) for name in only if paths.isfile(paths.join(url, name))}
    else:
        listing = dict(paths.walk_files(url))
    if not listing:
        wanted = f" ({', '.join(only)})" if only else ""
        raise RemotePathError(f"remote directory {url}: no such directory, or it holds none of the files "
                              f"needed{wanted}")
    key = url if only is None else f"{url}\n{sorted(only)}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    target = os.path.join(cache_dir or os.path.join(paths.cache_root(), "remote"), f"{digest}-{paths.basename(url)}")
    if os.path.isdir(target) and dict(paths.walk_files(target)) == listing:
        return target
    if os.path.isdir(target):  # stale: the remote directory changed since it was copied
        shutil.rmtree(target)
    fs, key = paths._fs(url)
    with atomic_directory(target, if_exists="keep") as staging:
        for name, expected in listing.items():
            local = os.path.join(staging, *name.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            fs.get_file(f"{key.rstrip('/')}/{name}", local)
            if os.path.getsize(local) != expected:
                raise RemotePathError(f"copying {url}/{name}: got {os.path.getsize(local)} bytes, the object "
                                      f"has {expected}; rerun to copy it again")
    return target
