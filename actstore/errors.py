"""Errors the store raises. Each says what is wrong and where, so a user can act on it."""

from __future__ import annotations


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
