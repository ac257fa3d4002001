"""Object storage for base paths and config files: s3://, gs://, az:// and abfs:// through fsspec.

TensorFlow loads from local disk here, so a remote version is copied into a local cache first,
atomically (a temporary folder, then a rename), and only once it is complete and stable: it must
hold a model file, and its listing (names, sizes, ETags) must not change between two looks, so a
version still being uploaded is never loaded. The cache keeps only the versions the policy wants.
Credentials and endpoints come the standard way of each store (environment, config files,
instance metadata); TF Serving's S3_ENDPOINT / S3_USE_HTTPS are honoured too. The store clients
are optional extras (pyserving[s3], [gcs], [azure]), imported on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
import time
from typing import Any, Iterator

from .layout import MODEL_FILES, version_number

log = logging.getLogger("pyserving.storage")

# scheme -> (fsspec protocol, the pyserving extra that installs its client)
SCHEMES = {"s3": ("s3", "s3"), "s3a": ("s3", "s3"), "gs": ("gcs", "gcs"), "gcs": ("gcs", "gcs"),
           "az": ("az", "azure"), "abfs": ("abfs", "azure"), "abfss": ("abfs", "azure")}
# A version seen for the first time is looked at again after this, and offered only if unchanged.
STABLE_SECONDS = 1.0


class StorageError(OSError):
    """A remote path that can't be read: a missing client library, an outage, a bad URL."""


def is_remote(path: str) -> bool:
    return path.split("://", 1)[0].lower() in SCHEMES if "://" in path else False


def filesystem(path: str) -> Any:
    """The fsspec filesystem for a remote path (listings never cached: polls must see changes)."""
    scheme = path.split("://", 1)[0].lower()
    protocol, extra = SCHEMES[scheme]
    if protocol == "gcs" and os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs asks GCS's control-plane gRPC API for each bucket's layout, which emulators lack
        # (a 60 s timeout per bucket): off for them, before gcsfs is imported.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    try:
        import fsspec

        store = fsspec.get_filesystem_class(protocol)
        # What the URL itself says (the account of abfss://container@ACCOUNT.dfs.core.windows.net/,
        # an object version, ...), as fsspec.url_to_fs takes it, then our environment's settings.
        return store(use_listings_cache=False, skip_instance_cache=False,
                     **{**store._get_kwargs_from_urls(path), **_store_options(protocol)})
    except ImportError as e:
        raise StorageError(f"Reading {scheme}:// paths needs the store's client: "
                           f"pip install 'pyserving[{extra}]' ({e})") from None


def folder_bytes(folders: list[str]) -> int:
    """The bytes of the files under these folders, local or remote (0 for one that can't be read:
    its load fails with the reason). Symbolic links inside are not followed."""
    total = 0
    for folder in folders:
        try:
            if is_remote(folder):
                total += int(filesystem(folder).du(folder, total=True))
                continue
            for parent, _dirs, files in os.walk(folder):
                total += sum(os.lstat(os.path.join(parent, f)).st_size for f in files)
        except (OSError, ValueError):
            continue
    return total


def _store_options(protocol: str) -> dict[str, Any]:
    if protocol != "s3":
        return {}  # gcsfs and adlfs read their standard variables (STORAGE_EMULATOR_HOST, AZURE_*)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint and os.environ.get("S3_ENDPOINT"):  # TF Serving's S3 variables
        endpoint = os.environ["S3_ENDPOINT"]
        if "://" not in endpoint:
            https = os.environ.get("S3_USE_HTTPS", "1") not in ("0", "false")
            endpoint = ("https://" if https else "http://") + endpoint
    client: dict[str, Any] = {"endpoint_url": endpoint} if endpoint else {}
    if os.environ.get("S3_VERIFY_SSL", "1") in ("0", "false"):
        client["verify"] = False
    return {"client_kwargs": client} if client else {}


def read_bytes(path: str) -> bytes:
    try:
        fs = filesystem(path)
        return fs.cat_file(_strip(fs, path))
    except StorageError:
        raise
    except Exception as e:  # each store raises its own kinds
        raise StorageError(f"Cannot read {path}: {_reason(e)}") from None


class RemoteVersions:
    """Lists the versions under remote base paths, offering each only once complete and stable."""

    def __init__(self) -> None:
        self._fingerprints: dict[str, tuple] = {}  # version path -> listing last seen
        self._waiting: set[str] = set()  # versions already logged as not ready

    def list_versions(self, base_path: str) -> dict[int, str]:
        fs = filesystem(base_path)
        try:
            entries = fs.ls(_strip(fs, base_path), detail=True)
            versions = {}
            for entry in entries:
                name = posixpath.basename(entry["name"].rstrip("/"))
                number = version_number(name)
                if entry.get("type") == "directory" and number is not None and number not in versions:
                    path = f"{base_path.rstrip('/')}/{name}"
                    if self._ready(fs, path):
                        versions[number] = path
            return versions
        except FileNotFoundError as e:
            raise StorageError(f"{base_path} does not exist ({_reason(e)})") from None
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(_reason(e)) from None

    def _ready(self, fs: Any, path: str) -> bool:
        seen = _fingerprint(fs, path)
        if path not in self._fingerprints:
            time.sleep(STABLE_SECONDS)  # first sight: look again before trusting it
            self._fingerprints[path], seen = seen, _fingerprint(fs, path)
        stable = seen == self._fingerprints[path]
        self._fingerprints[path] = seen
        complete = any(posixpath.basename(name) in MODEL_FILES and "/" not in name for name, *_ in seen)
        if stable and complete:
            self._waiting.discard(path)
            return True
        if path not in self._waiting:  # once per version, not on every poll
            self._waiting.add(path)
            log.info("Version %s is %s: it will load once complete and unchanged", path,
                     "still changing" if not stable else "incomplete (no model file yet)")
        return False


def _fingerprint(fs: Any, path: str) -> tuple:
    root = _strip(fs, path).rstrip("/") + "/"
    files = fs.find(root, detail=True)
    return tuple(sorted((name[len(root):], info.get("size"), info.get("ETag") or info.get("etag")
                         or info.get("md5Hash") or info.get("mtime"))
                        for name, info in files.items()))


# What the cache names its copies ("<hash>-<version>"): only those are ever deleted (a copy being
# made is ".partial-...", and --model_cache_dir may hold other things).
_ENTRY = re.compile(r"^[0-9a-f]{16}-\d+$")
_LOCKS = ".locks"


def safe_relative_key(key: str, source: str) -> str:
    """A listed object's path below its version folder, refused (StorageError) if it would name
    anything outside it once joined to a local folder: '..', '.', empty parts, backslashes, NULs.
    Object stores allow every one of those in a key; a local file system gives them meaning."""
    prefix = source.rstrip("/") + "/"
    if not key.startswith(prefix):
        raise StorageError(f"the store listed {key!r}, which is not below {source}")
    relative = key[len(prefix):]
    parts = relative.split("/")
    if not relative or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise StorageError(f"object key {key!r} would leave the version's folder: the version is not loaded")
    return relative


class VersionCache:
    """Local copies of remote versions, for TensorFlow to load; only the wanted ones are kept.

    Workers of one server (--num_workers) share the folder: a copy is made once whole and renamed in
    (a worker that loses the race uses the winner's copy), deletions take an entry's lock, and a
    copy being loaded holds it shared, so no worker deletes what another is reading."""

    def __init__(self, root: str = "") -> None:
        self._given = root
        self._root = ""  # made on the first copy: a server of local models never needs one

    @property
    def root(self) -> str:
        if not self._root:
            self._root = self._given or tempfile.mkdtemp(prefix="pyserving-models-")
            os.makedirs(self._root, exist_ok=True)
        return self._root

    def local_path(self, remote: str) -> str:
        digest = hashlib.sha256(remote.encode()).hexdigest()[:16]
        return os.path.join(self.root, f"{digest}-{posixpath.basename(remote.rstrip('/'))}")

    @contextlib.contextmanager
    def using(self, remote: str) -> Iterator[str]:
        """The version's local copy, kept from deletion (by any worker) while the block runs."""
        name = os.path.basename(self.local_path(remote))
        with self._entry_lock(name, fcntl.LOCK_SH):
            yield self.fetch(remote)

    def fetch(self, remote: str) -> str:
        """The version's local copy, downloaded whole before it appears (runs in a load thread)."""
        local = self.local_path(remote)
        if os.path.isdir(local):
            return local
        name = os.path.basename(local)
        partial = tempfile.mkdtemp(prefix=f".partial-{name}-", dir=self.root)
        try:
            start = time.perf_counter()
            fs = filesystem(remote)
            source = _strip(fs, remote).rstrip("/")
            files = fs.find(source + "/", detail=True)
            names = list(files)
            targets = [os.path.join(partial, *safe_relative_key(key, source).split("/")) for key in names]
            for target in targets:
                os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get(names, targets)  # lists: the async stores fetch the files concurrently
            self._move_in(partial, local)
        except StorageError as e:  # the load fails with it, and the manager logs it
            shutil.rmtree(partial, ignore_errors=True)
            raise StorageError(f"Cannot copy {remote}: {e}") from None
        except Exception as e:
            shutil.rmtree(partial, ignore_errors=True)
            raise StorageError(f"Cannot copy {remote}: {_reason(e)}") from None
        seconds = time.perf_counter() - start
        size = sum(info.get("size") or 0 for info in files.values())
        log.info("Copied %s (%.1f MiB) in %.2f s", remote, size / 2**20, seconds)
        return local

    def _move_in(self, partial: str, local: str) -> None:
        try:
            os.rename(partial, local)
        except OSError:
            if not os.path.isdir(local):
                raise
            shutil.rmtree(partial, ignore_errors=True)  # another worker's copy came first: the same files

    def keep_only(self, remotes: set[str]) -> None:
        """Delete the local copies of versions no longer wanted (a loaded model keeps its memory;
        TensorFlow reads a version's files only while loading it)."""
        if not self._root:
            return
        wanted = {os.path.basename(self.local_path(r)) for r in remotes}
        for name in os.listdir(self.root):
            if name in wanted or not _ENTRY.match(name):
                continue  # wanted, or not ours (a copy being made is named .partial-...)
            try:
                with self._entry_lock(name, fcntl.LOCK_EX | fcntl.LOCK_NB):
                    shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
            except OSError:
                pass  # a worker is loading it (or its lock can't be taken): not deleted this poll

    @contextlib.contextmanager
    def _entry_lock(self, name: str, mode: int) -> Iterator[None]:
        folder = os.path.join(self.root, _LOCKS)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        # Neither the lock folder nor a lock file is ever reached through a symlink planted there.
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def close(self) -> None:
        if self._root and not self._given:
            shutil.rmtree(self._root, ignore_errors=True)


def _strip(fs: Any, path: str) -> str:
    """fsspec's path for a URL, 'bucket/key', as the store's own listings name it: the same form
    for abfss://container@account.dfs.core.windows.net/key as for az://container/key."""
    return fs._strip_protocol(path)


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"[:500]
