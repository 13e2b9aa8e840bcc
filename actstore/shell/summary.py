"""Summaries of stores for `actstore info` and `actstore ls` (plain dicts, JSON-ready)."""

from __future__ import annotations

from typing import Any, NamedTuple

from actstore.store import format as fmt
from actstore.store.activation_store import ActivationStore, read_root_attrs
from actstore.store.errors import one_line
from actstore.store.location import Location
from actstore.store.spec import DTYPE_ITEMSIZE
from actstore.store.stats import HookStats


def describe(store: ActivationStore) -> dict[str, Any]:
    """Everything `actstore info --json` prints. Byte counts cover committed shards."""
    done = store.shards_done()
    problem = store.problem()
    records = [store.commit_record(s) for s in done]
    rows_done = sum(r["rows"][1] - r["rows"][0] for r in records)
    hooks: dict[str, Any] = {}
    raw_total = compressed_total = 0
    float8 = fmt.is_float8(store.spec.dtype)
    for hook in store.hooks:
        path = fmt.activation_path(hook)
        d = store.layout.d_model[hook]
        # an 8-bit hook's bytes include its row scales (4 bytes a row, raw)
        paths = (path, fmt.scale_path(hook)) if float8 else (path,)
        raw = rows_done * (d * DTYPE_ITEMSIZE[store.spec.dtype] + (4 if float8 else 0))
        compressed = sum(size for r in records for key, size in _sizes(r)
                         if key.startswith(tuple(p + "/" for p in paths)))
        hooks[hook] = {"array": path, "d_model": d, "dtype": store.spec.dtype,
                       "raw_bytes": raw, "compressed_bytes": compressed,
                       "compression_ratio": raw / compressed if compressed else None}
        if float8:
            stats = HookStats.merge_all((HookStats.from_dict(r["stats"][hook]) for r in records),
                                        d)
            hooks[hook].update(scales=fmt.scale_path(hook), mean_sq_error=stats.mean_sq_error,
                               noise_floor_fvu=stats.noise_floor)
        raw_total += raw
        compressed_total += compressed
    return {
        "url": store.url, "key": store.key, "complete": problem is None, "problem": problem,
        "num_rows": store.num_rows, "rows_committed": rows_done,
        "shards_done": len(done), "num_shards": store.num_shards,
        "shard_rows": store.layout.shard_rows, "chunk_rows": store.layout.chunk_rows,
        "codec": store.layout.to_dict()["codec"],
        "hooks": hooks,
        "row_index": {name: fmt.index_path(name) for name in fmt.INDEX_ARRAYS},
        "contexts": fmt.CONTEXTS,
        "raw_bytes": raw_total, "compressed_bytes": compressed_total,
        "compression_ratio": raw_total / compressed_total if compressed_total else None,
        "spec": store.spec.to_dict(),
    }


def _sizes(record: dict[str, Any]) -> list[tuple[str, int]]:
    return [(k, int(v["size"])) for k, v in record.get("objects", {}).items()]


class BadStore(NamedTuple):
    """Something under an `ls` root that looks like a store but cannot be opened."""

    url: str
    """Where it is."""
    error: str
    """Why it cannot be opened, in one line."""


def find_stores(root: Location, max_depth: int = 2) -> list[ActivationStore]:
    """Stores at `root` or up to `max_depth` folders below it, sorted by URL (bad ones are
    left out; `scan_stores` names them)."""
    return scan_stores(root, max_depth)[0]


def scan_stores(root: Location, max_depth: int = 2
                ) -> tuple[list[ActivationStore], list[BadStore]]:
    """The good stores at `root` or up to `max_depth` folders below it, and the bad ones (a
    root metadata file that cannot be read or does not describe a store we can open)."""
    good: list[ActivationStore] = []
    bad: list[BadStore] = []
    if root.exists(fmt.META):
        try:
            if read_root_attrs(root) is None:
                meta = root.get_json(fmt.META)  # raises if it is not JSON
                if meta.get("node_type") == "group" and "actstore" not in meta.get(
                        "attributes", {}):
                    raise ValueError("a zarr group without actstore attributes")
            good.append(ActivationStore.open(root.url))
        except Exception as e:  # one bad store must not hide the others
            bad.append(BadStore(root.url, one_line(e)))
        return good, bad
    if max_depth > 0:
        for name in root.list(""):
            child = root.child(name)
            if root.fs.isdir(child.root):
                g, b = scan_stores(child, max_depth - 1)
                good += g
                bad += b
    return sorted(good, key=lambda s: s.url), sorted(bad)


def summary_line(store: ActivationStore) -> str:
    s = store.spec
    done = len(store.shards_done())
    return (f"{store.key}  {store.url}  model={s.model} hooks={','.join(s.hooks)} "
            f"dataset={s.dataset} ctx={s.context_length} dtype={s.dtype} rows={store.num_rows} "
            f"shards={done}/{store.num_shards}")
