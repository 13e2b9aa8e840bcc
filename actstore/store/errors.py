"""Errors the store raises. Each says what is wrong and where, so a user can act on it."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


class StoreError(Exception):
    """Base class of every error raised by actstore's store layer."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No actstore store exists at the URL."""


class SpecMismatchError(StoreError):
    """An existing store was produced by a different spec than the one asked for."""

    def __init__(self, url: str, differences: dict[str, tuple[object, object]]) -> None:
        self.differences = differences
        lines = [f"  {field}: store has {old!r}, asked for {new!r}"
                 for field, (old, new) in sorted(differences.items())]
        super().__init__(
            f"store at {url} was made from a different spec; fields that differ:\n"
            + "\n".join(lines)
        )


class StoreAccessError(StoreError):
    """The backend refused access: missing or wrong credentials, or no permission."""


class BackendMissingError(StoreAccessError):
    """The package that reaches a URL's backend (s3fs, gcsfs) is not installed; the message
    names the actstore extra that installs it."""


class StoreFullError(StoreError, OSError):
    """The filesystem is full (or over quota); what was committed before is intact."""


class StoreBusyError(StoreError):
    """Another job holds the store's writer lock."""


class ShardLeaseError(StoreError):
    """Another writer holds the shard, or this writer's lease on it was broken."""


class ShardCommittedError(StoreError):
    """The shard is already committed; committed shards are never rewritten."""


class CorruptChunkError(StoreError):
    """A chunk failed its checksum or could not be decoded."""


class FormatError(StoreError):
    """Data given to or found in the store does not have the expected shape, dtype or layout."""


#: Errors of cloud SDKs that a later attempt can get past (matched by name, so that neither
#: botocore nor aiohttp has to be installed).
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectionClosedError", "ServerDisconnectedError", "ClientOSError",
                    "ClientPayloadError", "ClientConnectorError", "ServerTimeoutError",
                    "ResponseStreamingError", "IncompleteReadError", "TransportError"}
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
"""A full filesystem, or a full quota."""
_FATAL_ERRNOS = {*NO_SPACE_ERRNOS, errno.EROFS, errno.EACCES, errno.EPERM}


def transient(e: BaseException) -> bool:
    """True for a fault that may pass (network, server busy), False for one that will not
    (bad data, no space, no permission, a missing bucket)."""
    if isinstance(e, StoreError | PermissionError | FileNotFoundError | IsADirectoryError |
                  NotADirectoryError | FileExistsError):
        return False
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    if {c.__name__ for c in type(e).__mro__} & _TRANSIENT_NAMES:
        return True
    return isinstance(e, OSError) and e.errno not in _FATAL_ERRNOS


def one_line(error: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull", "os error 28")
LOW_SPACE = 1 << 20
"""Free bytes below which a failed write is taken for a full disk: torch.save's zip writer and
safetensors report one without its errno ("unexpected pos 704 vs 598")."""


def no_space(e: BaseException, out: str | Path | None = None) -> str | None:
    """What failed for lack of space behind `e` (its errno, found also inside
    torch.distributed.checkpoint's per-rank `failures` or a chained exception, or its text),
    or — when none says so — a folder left with under LOW_SPACE free; else None."""
    found = _errno_or_text(e, 0)
    if found is not None or out is None:
        return found
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return None
    return f"{type(e).__name__} with {free} bytes free" if free < LOW_SPACE else None


def _errno_or_text(e: BaseException, depth: int) -> str | None:
    if depth > 8:
        return None
    if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
        return str(e.filename or e.strerror)
    if any(t in str(e) for t in _FULL_TEXT):
        return f"{type(e).__name__}: {str(e)[:200]}"
    failures = getattr(e, "failures", None)
    inner = list(failures.values()) if isinstance(failures, dict) else []
    for nested in [*inner, e.__cause__, e.__context__]:
        if isinstance(nested, BaseException) and (found := _errno_or_text(nested, depth + 1)):
            return found
    return None


def interrupted(e: BaseException) -> bool:
    """Whether Ctrl-C is where `e` comes from: a KeyboardInterrupt, or an error raised while
    one unwound (torch.save's zip writer, stopped mid-file, then fails with "unexpected pos";
    a cleanup that trips over the half-done work), found through its cause and context."""
    todo, seen = [e], set()
    while todo:
        e = todo.pop()
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        todo += [c for c in (e.__cause__, e.__context__) if c is not None and id(c) not in seen]
    return False


@contextlib.contextmanager
def full_disk(message: Callable[[str], str], folder: str | Path | None = None
              ) -> Iterator[None]:
    """A full disk (or quota) inside the block becomes one `StoreFullError` whose text is
    `message(what failed)`: what survives and how to go on, instead of a traceback from deep
    inside a writer.

    Without `folder` (the store's own writes) only an OSError with a no-space errno counts,
    and keeps its errno. With `folder` (the trainer's run folder, written by torch.save,
    safetensors and torch.distributed.checkpoint, which hide the errno) the cause is looked
    for deeper (`no_space`: chained errors, per-rank failures, the text, the folder's free
    space), and the error says ENOSPC."""
    try:
        yield
    except BaseException as e:  # torch.distributed.checkpoint's CheckpointException is one
        if interrupted(e) or isinstance(e, SystemExit | GeneratorExit):
            raise
        if folder is None:
            if not (isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS):
                raise
            code, what = e.errno, str(e.filename or e.strerror)
        else:
            code, found = errno.ENOSPC, no_space(e, folder)
            if found is None:
                raise
            what = found
        raise StoreFullError(code, message(what)) from e
