"""Helpers shared by the benchmark scripts: machine facts, background-load measurement, medians, output files.

Each script calls ``torch.set_flush_denormal(True)`` itself right after importing torch, before any parallel op
creates the OpenMP pool (the workers inherit the setting); nothing here runs a torch op at import.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_family_model() -> str:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = (s.strip() for s in line.split(":", 1))
                if key in ("vendor_id", "cpu family", "model", "cpu MHz") and key not in fields:
                    fields[key] = value
                if key == "flags" and "flags" not in fields:
                    flags = value.split()
                    fields["flags"] = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    except OSError:
        pass
    return ", ".join(f"{k} {v}" for k, v in fields.items())


def allocator() -> str:
    """The malloc in use: a preloaded tcmalloc/jemalloc/mimalloc if mapped into this process, else glibc."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if name in maps:
            return name
    tuned = _MALLOC_TUNED or (os.environ.get("MALLOC_MMAP_MAX_") == "0")
    return "glibc, no mmap/trim" if tuned else "glibc"


_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """What every rnnbench job does (``rnnbench.allocator.retain_freed_memory``); returns whether it applied."""
    global _MALLOC_TUNED
    from rnnbench.allocator import retain_freed_memory

    ok = retain_freed_memory()
    _MALLOC_TUNED = _MALLOC_TUNED or ok
    return ok


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info(ftz: bool) -> dict[str, Any]:
    """What a timing depends on: CPU, cores, torch build, threads, allocator, FTZ, load at the start."""
    import torch

    config = torch.__config__.show()
    backends = [line.strip() for line in config.splitlines() if "MKL" in line or "oneDNN" in line or "OpenMP" in line]
    return {
        "cpu": cpu_model(),
        "cpu_detail": cpu_family_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_backends": backends[:4],
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "allocator": allocator(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "ftz": ftz,
        "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "python": platform.python_version(),
        "git": git_commit(),
        "loadavg_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


class LoadMeter:
    """Share of the machine's CPU time used by *other* processes over an interval (0 = quiet, 1 = all cores).

    Compares the busy jiffies of ``/proc/stat`` with this process's (and its waited-for children's) CPU time.
    """

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self.tick = os.sysconf("SC_CLK_TCK")

    def _busy(self) -> float:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0.0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / self.tick

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self) -> tuple[float, float, float]:
        return time.perf_counter(), self._busy(), self._own()

    def stop(self, mark: tuple[float, float, float]) -> float:
        wall = time.perf_counter() - mark[0]
        if wall <= 0:
            return 0.0
        other = (self._busy() - mark[1]) - (self._own() - mark[2])
        return max(0.0, min(1.0, other / (wall * self.cores)))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> float:
    """(max - min) / median: the relative range of repeated timings."""
    if len(values) < 2:
        return 0.0
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else 0.0


def write_json(name: str, payload: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_text(name: str, text: str, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(text)
    return path


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_md(info: dict[str, Any]) -> str:
    keys = ("cpu", "cpu_detail", "cores", "torch", "threads", "allocator", "ftz", "python", "git", "loadavg_start",
            "time")
    return "\n".join(f"- {k}: {info.get(k)}" for k in keys) + "\n"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
