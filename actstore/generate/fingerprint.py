"""Content identity of what a store is made from, so that a changed input never reuses a stale
store: local model weights and local corpus files are hashed (SHA-256 of their bytes), a hub
model is pinned to the commit its files came from.

Hashing gigabytes on every `actstore generate` would make reusing a store slow, so a file's
digest is cached under its (real path, size, mtime) in `$ACTSTORE_CACHE_DIR/digests.json`
(default `~/.cache/actstore`), the rule make and rsync use: a file rewritten in place gets a new
mtime and is hashed again. The cache is only an accelerator; without it (read-only home) every
file is hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
CACHE_ENTRIES = 100_000
#: What from_pretrained reads to build the model (weights, their index, its config); the
#: tokenizer has its own hash in the spec, and other files (a README, optimizer state) do not
#: change the activations.
MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
               "pytorch_model*.bin.index.json")


def digest(parts: Iterable[tuple[str, str]]) -> str:
    """`sha256:<16 hex>` of (name, value) pairs, in order."""
    h = hashlib.sha256()
    for name, value in parts:
        h.update(f"{name}\0{value}\0".encode())
    return f"sha256:{h.hexdigest()[:16]}"


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a local file's bytes, from the cache when the file is unchanged."""
    return file_digests([path])[0]


def file_digests(paths: Sequence[str | Path]) -> list[str]:
    """`file_digest` of many files: the cache is read once and written once (a corpus of
    thousands of files must not rewrite it per file)."""
    keys = []
    for path in paths:
        real = os.path.realpath(path)
        st = os.stat(real)
        keys.append((real, f"{real}|{st.st_size}|{st.st_mtime_ns}"))
    cache = _cache_path()
    known = _load(cache)
    new: dict[str, str] = {}
    out = []
    for real, key in keys:
        value = known.get(key)
        if not isinstance(value, str):
            value = new[key] = _sha256(real)
        out.append(value)
    if new:
        _remember(cache, new)
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(path: str, revision: str | None = None,
                      cache_dir: str | None = None) -> str | None:
    """The identity of a model's weights: a digest of a local folder's weight and config files,
    or `commit:<sha>` of the hub snapshot (in the Hugging Face cache, `cache_dir` or the
    user's) that `revision` resolves to; None when neither is known."""
    folder = Path(path)
    if folder.is_dir():
        files = sorted({p for pattern in MODEL_FILES for p in folder.glob(pattern)})
        return digest(zip((p.name for p in files), file_digests(files), strict=True)) \
            if files else None
    from transformers.utils.hub import cached_file, extract_commit_hash

    try:
        resolved = cached_file(path, "config.json", revision=revision, cache_dir=cache_dir)
    except OSError:
        return None
    commit = extract_commit_hash(resolved, None)
    return f"commit:{commit}" if commit else None


def _cache_path() -> Path:
    root = os.environ.get("ACTSTORE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "actstore")
    return Path(root) / "digests.json"


def _load(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(cache: Path, entries: dict[str, str]) -> None:
    """Add entries, atomically (a concurrent writer loses at most its own entries)."""
    with _LOCK:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            data = _load(cache)
            data.update(entries)
            if len(data) > CACHE_ENTRIES:  # the oldest entries go first
                data = dict(list(data.items())[-CACHE_ENTRIES:])
            fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".digests.")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, cache)
        except OSError:
            pass  # an accelerator only: no cache, no harm
