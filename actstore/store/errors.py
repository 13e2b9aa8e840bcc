"""Errors the store raises. Each says what is wrong and where, so a user can act on it."""

from __future__ import annotations

import errno


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
