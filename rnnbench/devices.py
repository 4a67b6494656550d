"""The device a run uses (``trainer.device``) and the memory free on it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rnnbench.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``trainer.device`` as a torch device; ``auto`` is CUDA when there is one. A CUDA device that this machine
    does not have raises :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("trainer.device", name, "auto or cpu: no CUDA device is available on this machine")
        if ":" in name and int(name.split(":")[1]) >= count:
            raise ConfigError("trainer.device", name, f"cuda:0 to cuda:{count - 1} (this machine has {count})")
    return torch.device(name)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 (or v1) memory limit, if one is set."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 2**60:
                return None
            return max(0, int(limit) - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def available_bytes(device: torch.device) -> int | None:
    """Free memory for a run on ``device``: on CUDA the device's free memory; on the CPU ``MemAvailable``, or
    the room under the cgroup's limit if that is less. None when it cannot be told."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - a driver that cannot tell: do not refuse the run
            return None
    if device.type != "cpu":
        return None
    values = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(values) if values else None
