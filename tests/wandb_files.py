"""W&B's offline run files (`run-<id>.wandb`) read back with W&B's own record definitions
(`wandb.proto.wandb_internal_pb2.Record`): the file is W&B's LevelDB-style log (a 7-byte
header, then 32 KiB blocks of records split into FULL / FIRST / MIDDLE / LAST fragments, each
with a 7-byte header: checksum, length, type). wandb 0.31 has no Python reader of its own (its
core reads them in Go), so the framing is read here and each record parsed by wandb's protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every record of a .wandb file, as wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding at the end
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def history(folder: Path) -> list[dict[str, Any]]:
    """Every history row logged in the offline runs under `folder` (a run's `wandb/`), in
    the order the processes wrote them: {key: value}, with `_step`."""
    rows = []
    for f in sorted(folder.glob("offline-run-*/run-*.wandb")):
        for r in records(f):
            if r.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in r.history.item})
    return rows
