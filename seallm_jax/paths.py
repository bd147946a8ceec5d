"""Paths the library reads and writes for the user, local or in object storage (gs://, s3://): one
way to name, test, read, write, copy and list them, through etils.epath over fsspec (gcsfs, s3fs).

etils.epath is what Orbax itself uses for a checkpoint's directories (its arrays go through
TensorStore), so the workdir, the run files and the checkpoints all reach the bucket the same way.
epath would pick tf.io.gfile for remote paths whenever TensorFlow is installed (the tfds extra
installs it), which neither reads STORAGE_EMULATOR_HOST nor speaks s3://; it is pinned to fsspec here.

Emulators: STORAGE_EMULATOR_HOST (gcsfs, google-cloud-storage) and TENSORSTORE_GCS_HTTP_URL
(TensorStore, i.e. Orbax's arrays) name the same server; either one set is copied to the other, so a
Cloud Storage emulator is one variable. AWS_ENDPOINT_URL does the same for S3-compatible servers.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

from seallm_jax.errors import REMOTE_SCHEMES, MissingDataError, RemotePathError, require_dir, require_local

# Before any remote epath call: its backend choice is cached on first use.
os.environ["EPATH_USE_TF"] = "false"

SCHEMES = REMOTE_SCHEMES
# Where local_copy() keeps remote directories (one copy per host, reused by every run on it).
CACHE_ENV = "SEALLM_JAX_CACHE"


def is_remote(path: str | os.PathLike) -> bool:
    """True for gs://… and s3://… (object storage), False for local paths."""
    return os.fspath(path).startswith(SCHEMES)


def resolve(path: str | os.PathLike) -> str:
    """A local path made absolute, or a remote URL normalised (no trailing slash, no '//' inside);
    remote paths never go through os.path (it would make 'gs:/bucket' a local directory)."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    parts = [part for part in rest.split("/") if part]
    if not parts:
        raise RemotePathError(f"{path!r} names no bucket: expected {scheme}://BUCKET/PATH")
    return f"{scheme}://{'/'.join(parts)}"


def join(base: str | os.PathLike, *names: str) -> str:
    """os.path.join for local paths; '/'-joined for remote ones."""
    base = os.fspath(base)
    if not is_remote(base):
        return os.path.join(base, *names)
    return "/".join([base.rstrip("/"), *(name.strip("/") for name in names)])


def basename(path: str | os.PathLike) -> str:
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def dirname(path: str | os.PathLike) -> str:
    return os.fspath(path).rstrip("/").rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path)


def bucket_of(path: str | os.PathLike) -> str:
    """'gs://bucket' for 'gs://bucket/a/b'."""
    scheme, rest = os.fspath(path).split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def epath(path: str | os.PathLike):  # -> etils.epath.Path
    """The etils.epath.Path of `path` (what Orbax takes), after configuring emulators."""
    from etils import epath as _epath

    if is_remote(path):
        configure_object_storage()
    return _epath.Path(os.fspath(path))


def configure_object_storage() -> None:
    """Listings are never cached. Every client is pointed at an emulator when one is named:
    STORAGE_EMULATOR_HOST and TENSORSTORE_GCS_HTTP_URL are made equal; with an emulator, TensorStore
    is given the test token (emulators take any) and gcsfs skips the Storage Control gRPC API, which
    emulators lack."""
    import fsspec.config

    # No cached directory listings: other processes (and Orbax) add and remove steps in the same
    # bucket, and a listing cached by this process would not show them.
    for protocol in ("gcs", "gs", "s3"):
        fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False
    gcs = os.environ.get("STORAGE_EMULATOR_HOST") or os.environ.get("TENSORSTORE_GCS_HTTP_URL")
    if gcs:
        if "://" not in gcs:
            gcs = f"http://{gcs}"
        os.environ.setdefault("STORAGE_EMULATOR_HOST", gcs)
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", gcs)
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def emulated(path: str | os.PathLike) -> bool:
    """True when `path` is gs:// and a Cloud Storage emulator is named (STORAGE_EMULATOR_HOST or
    TENSORSTORE_GCS_HTTP_URL)."""
    return os.fspath(path).startswith("gs://") and bool(
        os.environ.get("STORAGE_EMULATOR_HOST") or os.environ.get("TENSORSTORE_GCS_HTTP_URL"))


def ocdbt_supported(path: str | os.PathLike) -> bool:
    """Whether Orbax may write its default OCDBT layout at `path`: everywhere but a Cloud Storage
    emulator, unless SEALLM_JAX_EMULATOR_OCDBT=1 says the emulator implements the conditional writes
    OCDBT commits with (fake-gcs-server does; gcp-storage-emulator does not)."""
    return not emulated(path) or os.environ.get("SEALLM_JAX_EMULATOR_OCDBT", "") == "1"


def _fs(path: str):
    """The fsspec filesystem and the scheme-less key of a remote path."""
    import fsspec

    configure_object_storage()
    scheme, key = path.split("://", 1)
    protocol = "gcs" if scheme == "gs" else scheme
    options = {}
    if scheme == "s3" and os.environ.get("AWS_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    return fsspec.filesystem(protocol, **options), key


# ---- queries and plain operations (local: os; remote: the bucket) ---------------------------------

def exists(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names (not paths) in a directory; remote: the objects and prefixes right under it."""
    path = os.fspath(path)
    if not is_remote(path):
        return sorted(os.listdir(path))
    return sorted(child.name for child in epath(path).iterdir())


def makedirs(path: str | os.PathLike) -> None:
    """A directory and its parents; remote: nothing to make (prefixes exist once an object does)."""
    path = os.fspath(path)
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def size(path: str | os.PathLike) -> int:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.getsize(path)
    fs, key = _fs(path)
    return int(fs.info(key)["size"])


def read_bytes(path: str | os.PathLike) -> bytes:
    path = os.fspath(path)
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    return epath(path).read_bytes()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def copy_file(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """One file, any side local or remote."""
    source, destination = os.fspath(source), os.fspath(destination)
    if not is_remote(source) and not is_remote(destination):
        shutil.copy2(source, destination)
    elif is_remote(source) and not is_remote(destination):
        fs, key = _fs(source)
        fs.get_file(key, destination)
    elif not is_remote(source):
        fs, key = _fs(destination)
        fs.put_file(source, key)
    else:
        fs, key = _fs(source)
        fs.copy(key, _fs(destination)[1])


def rename(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """A file or directory moved; remotely a copy of every object, then their deletion (object
    stores have no rename): used only for small steps such as moving a damaged checkpoint aside."""
    source, destination = os.fspath(source), os.fspath(destination)
    if not is_remote(source):
        os.rename(source, destination)
        return
    fs, key = _fs(source)
    # A server-side copy, then the deletion (gcsfs's mv first tries a move API that only some
    # buckets, and no emulator, offer).
    fs.copy(key, _fs(destination)[1], recursive=True)
    fs.rm(key, recursive=True)


def rmtree(path: str | os.PathLike) -> None:
    path = os.fspath(path)
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
    elif exists(path):
        fs, key = _fs(path)
        fs.rm(key, recursive=True)


def walk_files(path: str | os.PathLike) -> Iterator[tuple[str, int]]:
    """(relative name with '/', size in bytes) of every file under a directory, local or remote."""
    path = os.fspath(path)
    if not is_remote(path):
        for root, _, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                yield os.path.relpath(full, path).replace(os.sep, "/"), os.path.getsize(full)
        return
    fs, key = _fs(path)
    prefix = key.rstrip("/") + "/"
    for name, info in sorted(fs.find(key, detail=True).items()):
        if info.get("type") != "directory" and name.startswith(prefix):
            yield name[len(prefix):], int(info["size"])


def upload_directory(local: str, remote: str) -> None:
    """Every file of `local` to `remote`, the deepest first and the top-level files (config.json,
    manifest.json: what readers look for first) last, so a reader that finds those finds the rest."""
    fs, key = _fs(remote)
    names = [name for name, _ in walk_files(local)]
    for name in sorted(names, key=lambda name: (-name.count("/"), name)):
        fs.put_file(os.path.join(local, *name.split("/")), f"{key.rstrip('/')}/{name}")


# ---- checks before work starts --------------------------------------------------------------------

def check_bucket(path: str | os.PathLike, what: str = "path") -> str:
    """The normalised `path` once its bucket is known to exist and to be reachable with the
    credentials at hand; a one-line RemotePathError naming the path otherwise. Local paths pass."""
    path = os.fspath(path)
    if not is_remote(path):
        return path
    path = resolve(path)
    bucket = bucket_of(path)
    configure_object_storage()
    problem = _credentials_problem(path)
    if problem is None:
        try:
            fs, key = _fs(bucket)
            found = fs.exists(key)
        except Exception as error:  # noqa: BLE001 - whatever the client raises, the bucket is unusable
            problem = f"cannot reach {bucket} ({_first_line(error)})"
        else:
            problem = None if found else f"bucket {bucket} does not exist (create it first, or fix the name)"
    if problem is not None:
        raise RemotePathError(f"{what} {path}: {problem}")
    return path


def _credentials_problem(path: str) -> str | None:
    """Why no request can be signed for `path`, or None (emulators need no credentials)."""
    if path.startswith("gs://"):
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            return None
        try:
            import google.auth

            google.auth.default()
        except Exception as error:  # noqa: BLE001 - DefaultCredentialsError and transport errors alike
            return (f"no Google Cloud credentials ({_first_line(error)}); on a TPU VM the VM's service "
                    "account is used, elsewhere run `gcloud auth application-default login` or set "
                    "GOOGLE_APPLICATION_CREDENTIALS")
        return None
    try:
        import botocore.session

        if botocore.session.get_session().get_credentials() is None:
            return ("no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile "
                    "in ~/.aws/credentials)")
    except Exception as error:  # noqa: BLE001 - a malformed profile file
        return f"AWS credentials cannot be read ({_first_line(error)})"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


# ---- a remote directory read locally ----------------------------------------------------------------

def cache_root() -> str:
    """$SEALLM_JAX_CACHE, else ~/.cache/seallm_jax: the host's cache of downloaded directories."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "seallm_jax")


STAGING_PREFIX = "seallm-jax-staging-"
# A staging directory left by a process that no longer exists is removed once nothing in it has been written
# for this long (a process in another PID namespace sharing the temporary directory looks dead from here).
STALE_STAGING_SECONDS = 3600


def local_staging(kind: str) -> str:
    """A fresh local temporary directory for files made here and then uploaded (a remote export, a remote
    workdir's metrics): `$TMPDIR/seallm-jax-staging-<kind>-<pid>-XXXXXXXX`. Its user removes it when done; one
    left behind by a process that was killed (a preempted host, SIGKILL) is removed by the next call on the host
    (`remove_stale_staging`), so that repeated preemptions do not fill the disk with half-made exports."""
    if not kind.isalpha():
        raise ValueError(f"staging kind {kind!r}: letters only")
    remove_stale_staging()
    return tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{kind}-{os.getpid()}-")


def remove_stale_staging(*, older_than: float = STALE_STAGING_SECONDS) -> list[str]:
    """Remove the staging directories (`local_staging`) whose process is gone and in which nothing was written
    for `older_than` seconds; returns their paths."""
    import re
    import time

    pattern = re.compile(rf"^{re.escape(STAGING_PREFIX)}[A-Za-z]+-(\d+)-")
    root = tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        path = os.path.join(root, name)
        if not match or _process_exists(int(match.group(1))) or _last_write(path) > time.time() - older_than:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


def _last_write(directory: str) -> float:
    newest = 0.0
    for parent, _, files in os.walk(directory):
        for name in [None, *files]:
            try:
                newest = max(newest, os.stat(os.path.join(parent, name) if name else parent).st_mtime)
            except OSError:
                pass
    return newest


def require_model_dir(path: str | os.PathLike, *, remote_ok: bool = False) -> str:
    """`path` as a string if it looks like a model directory seallm-jax reads (a Hugging Face
    directory, an Orbax checkpoint or a training workdir: all hold a config.json); otherwise a
    `UserError` that says what is there. Cheap: run it before importing JAX.
    `remote_ok`: the command reads gs:// and s3:// directories too (seallm_jax.paths); without it a
    remote path is a one-line error asking for a local one."""
    if is_remote(path):
        if not remote_ok:
            require_local(path, "model directory")
        path = check_bucket(path, "model directory")
        if not isfile(join(path, "config.json")):
            raise MissingDataError(f"model directory {path!r} has no config.json (or does not exist); expected "
                                   "an Orbax checkpoint (`convert hf-to-orbax`) or a training workdir")
        return path
    path = require_dir(path, "model directory")
    if not os.path.exists(os.path.join(path, "config.json")):
        found = sorted(os.listdir(path))
        shown = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "") if found else "nothing"
        raise MissingDataError(f"model directory {path!r} has no config.json (it holds: {shown}); expected a Hugging "
                               "Face model directory, an Orbax checkpoint (`convert hf-to-orbax`) or a training workdir")
    return path

