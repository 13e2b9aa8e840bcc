"""Where a store lives: a URL turned into an fsspec filesystem, a root path and a zarr store.

The store needs four things from a backend beyond what zarr does: whole-object atomic puts (a
reader never sees half a shard), exclusive creation (two writers cannot both commit or lease a
shard), durability before a commit marker is written, and listing. Local disk gets them from
rename, link and fsync; object stores (s3, gcs) from single PUTs and If-None-Match; fsspec's
memory filesystem from its own `xb` mode.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
from fsspec.implementations.local import LocalFileSystem
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from actstore.store.errors import BackendMissingError, StoreAccessError, StoreError

#: protocol -> (the package fsspec needs for it, the actstore extra that installs that package).
BACKENDS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"),
            "gcs": ("gcsfs", "gcs")}


def require_backend(url: str) -> None:
    """Fail in one line, naming the extra to install, when `url` needs a cloud backend that
    cannot be imported; fsspec would raise it deep inside the first call, as a traceback."""
    for part in url.split("::"):  # chained URLs (simplecache::s3://...) need every backend
        protocol = fsspec.utils.get_protocol(part).lower()
        if protocol not in BACKENDS:
            continue
        package, extra = BACKENDS[protocol]
        try:
            importlib.import_module(package)
        except ImportError as e:
            why = "is not installed" if e.name == package else f"cannot be imported ({e})"
            raise BackendMissingError(
                f"{protocol}:// needs {package}, which {why}: pip install 'actstore[{extra}]' "
                "(or 'actstore[cloud]' for both s3:// and gs://)") from None


def url_to_fs(url: str, **storage_options: Any) -> tuple[Any, str]:
    """fsspec's `url_to_fs`, with a missing backend said first (`require_backend`): the one
    place where a URL becomes a filesystem."""
    require_backend(url)
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return fs, str(path)


@dataclass(frozen=True)
class Location:
    """A store's root on one filesystem. Paths given to methods are relative to the root."""

    url: str
    """The URL as the user gave it (used in messages)."""
    fs: Any
    """The fsspec filesystem."""
    root: str
    """Root path inside `fs`, without protocol and without a trailing slash."""

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any] | None = None) -> Location:
        """Resolve `url` (plain path, file://, memory://, s3://, gs://) to a Location."""
        fs, root = url_to_fs(url, **(storage_options or {}))
        return cls(url=url, fs=fs, root=root.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def child(self, rel: str) -> Location:
        """The location of a sub-path, e.g. a store under an `ls` root."""
        return Location(url=f"{self.url.rstrip('/')}/{rel}", fs=self.fs, root=self.path(rel))

    def zarr_store(self, read_only: bool = False) -> Store:
        """A zarr store over the same root (LocalStore on disk: it is faster than fsspec's)."""
        if self.is_local:
            return LocalStore(self.root, read_only=read_only)
        if self.fs.async_impl:
            # zarr drives the filesystem from its own event loop: it needs an async instance.
            afs = type(self.fs)(**{**self.fs.storage_options, "asynchronous": True})
        else:
            afs = AsyncFileSystemWrapper(self.fs, asynchronous=True)
        return FsspecStore(afs, path=self.root, read_only=read_only)

    def preflight(self, flag: str) -> None:
        """Fail in one line, before any work, when this root cannot take a store: a file, a
        folder that cannot be written, a bucket that does not exist."""
        if self.is_local:
            if os.path.exists(self.root) and not os.path.isdir(self.root):
                raise StoreAccessError(f"{flag} {self.url} is a file, not a folder")
            try:
                os.makedirs(self.root, exist_ok=True)
                fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=self.root)
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                raise StoreAccessError(f"{flag} {self.url} is not writable: {e.strerror}"
                                       ) from None
            return
        protocol = self.fs.protocol
        protocols = {protocol} if isinstance(protocol, str) else set(protocol)
        if not protocols & {"s3", "s3a", "gs", "gcs"}:
            return  # memory:// and others: nothing to check
        bucket = self.root.split("/", 1)[0]
        with access_errors(self.url):
            found = self.fs.exists(bucket)
        if not found:
            raise StoreAccessError(f"bucket {bucket!r} of {flag} {self.url} does not exist (or "
                                   "these credentials cannot see it); create it first")

    # --- objects ---------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def get(self, rel: str) -> bytes:
        if self.is_local:
            return _read_local(self.path(rel), 0, None)
        return bytes(self.fs.cat_file(self.path(rel)))

    def get_range(self, rel: str, start: int, end: int | None = None) -> bytes:
        """Bytes [start, end) of an object; a negative start counts from its end. An empty
        range is empty on every backend (s3fs would answer `start == end` with the whole
        object, and a start past the end with EINVAL)."""
        if end is not None and 0 <= end <= start:
            self.size(rel)  # a missing object is still FileNotFoundError
            return b""
        if self.is_local:
            return _read_local(self.path(rel), start, end)
        try:
            return bytes(self.fs.cat_file(self.path(rel), start=start, end=end))
        except OSError as e:  # asked only after a failure: no extra request per read
            if e.errno == errno.EINVAL and start >= 0 and start >= self.size(rel):
                return b""
            raise

    def get_json(self, rel: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.get(rel))
        return result

    def put(self, rel: str, data: bytes) -> None:
        """Write a whole object atomically and durably: readers see the old or the new bytes."""
        self.put_many({rel: data})

    def put_many(self, objects: dict[str, bytes]) -> None:
        """Write several objects, each atomically; all are durable when this returns.

        On disk: every file is written to a temp name and fsync'd, renamed into place, and
        each folder is fsync'd once (so the renames survive a crash). Object stores get one
        concurrent batch of PUTs.
        """
        if not self.is_local:
            self.fs.pipe({self.path(k): v for k, v in objects.items()})
            return
        folders = set()
        for rel, data in objects.items():
            path = self.path(rel)
            _local_publish(path, data, exclusive=False)
            folders.add(os.path.dirname(path))
        for folder in folders:
            _fsync_dir(folder)

    def put_exclusive(self, rel: str, data: bytes) -> None:
        """Create an object that must not exist yet; FileExistsError if it does (on an object
        store, unless it holds these very bytes: our own create, retried after a lost answer).

        Used for leases and commit markers. Not fsync'd: losing one in a crash only means the
        shard is done again, and the data a marker names was made durable before it.
        """
        if self.is_local:
            _local_publish(self.path(rel), data, exclusive=True)
            return
        try:
            if self.fs.async_impl:
                # Object stores decide atomically on the server: s3fs sends If-None-Match: *.
                self.fs.pipe_file(self.path(rel), data, mode="create")
            else:
                with self.fs.open(self.path(rel), "xb") as f:
                    f.write(data)
        except FileExistsError:
            # A create whose answer a network fault lost is retried (by the client library,
            # or by us) and then finds its own object: ours if it holds these very bytes (a
            # lease or marker names its writer and the time to the microsecond).
            with contextlib.suppress(FileNotFoundError):
                if self.get(rel) == data:
                    return
            raise

    def delete(self, rel: str) -> None:
        path = self.path(rel)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)
        if self.is_local:
            # Object stores have no folders; on disk an empty one left behind would show up
            # as an unknown node to zarr's listing.
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))

    def list(self, rel: str) -> list[str]:
        """Names directly under `rel` ([] if it does not exist)."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def du(self, rel: str) -> int:
        """Total bytes of all objects under `rel`."""
        try:
            return int(self.fs.du(self.path(rel), total=True))
        except FileNotFoundError:
            return 0

    def invalidate(self) -> None:
        """Forget cached listings (s3fs caches them; another process may have written)."""
        self.fs.invalidate_cache()


# Raised by cloud SDKs when no usable credentials are found; matched by name so that neither
# botocore nor google-auth has to be installed.
_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError",
                      "RefreshError", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@contextlib.contextmanager
def access_errors(url: str) -> Iterator[None]:
    """Turn a backend's credential or permission failure into a StoreAccessError."""
    try:
        yield
    except StoreError:
        raise
    except Exception as e:
        names = {cls.__name__ for cls in type(e).__mro__}
        if isinstance(e, PermissionError) or names & _CREDENTIAL_ERRORS:
            raise StoreAccessError(
                f"cannot access {url}: {type(e).__name__}: {e}. Check the credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for s3://, "
                "GOOGLE_APPLICATION_CREDENTIALS for gs://), the endpoint (AWS_ENDPOINT_URL_S3) "
                "and the permissions on the bucket or folder.") from e
        raise


def _local_publish(path: str, data: bytes, exclusive: bool) -> None:
    """Write to a temp file, then rename (or link, for exclusive) it into place.

    A replaced object is fsync'd before the rename, so the name never points at bytes that a
    crash could lose; the caller fsyncs the folder. Exclusive creations (leases, markers) are
    not fsync'd (see `Location.put_exclusive`).
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{uuid.uuid4().hex}.", dir=directory)
    try:
        # mkstemp makes the file 0600 whatever the umask; a store on a shared filesystem must
        # be readable as the user's umask says, as zarr's own writes (plain open) are.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if not exclusive:
                f.flush()
                os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # atomic; fails with FileExistsError if the name is taken
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by a set-and-restore."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_local(path: str, start: int, end: int | None) -> bytes:
    """Bytes [start, end) of a local file, cut as a slice is: `os.pread`, as fsspec's open,
    seek and read cost several times the system calls (a loader reads a chunk at a time)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a directory: as fsspec, not an empty object
            raise IsADirectoryError(errno.EISDIR, "not a file", path)
        lo, hi, _ = slice(start, end).indices(st.st_size)
        parts = []
        while lo < hi:  # a single read returns at most ~2 GiB
            part = os.pread(fd, hi - lo, lo)
            if not part:  # the file was cut meanwhile: the caller's length check names it
                break
            parts.append(part)
            lo += len(part)
        return b"".join(parts)
    finally:
        os.close(fd)
