"""What a benchmark ran on: CPU, cores, memory, GPU, the disk under the work folder, versions."""

from __future__ import annotations

import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("actstore", "torch", "transformers", "zarr", "numcodecs", "pyarrow", "numpy")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def disk(path: str) -> dict[str, Any]:
    """The filesystem holding `path`: its device and size (from /proc/mounts)."""
    real = os.path.realpath(path)
    best = ("", "unknown", "unknown")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mount, kind = line.split()[:3]
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and \
                    len(mount) >= len(best[0]):
                best = (mount, dev, kind)
    except OSError:
        pass
    usage = shutil.disk_usage(real)
    return {"path": real, "mount": best[0], "device": best[1], "filesystem": best[2],
            "total_bytes": usage.total, "free_bytes": usage.free}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe(work: str) -> dict[str, Any]:
    """The machine, as the report's header gives it."""
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_bytes": props.total_memory,
               "count": torch.cuda.device_count(), "cuda": torch.version.cuda}
    return {"host": platform.node(), "os": platform.platform(), "cpu": cpu_model(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_bytes": memory_bytes(), "gpu": gpu, "disk": disk(work),
            "versions": versions()}
