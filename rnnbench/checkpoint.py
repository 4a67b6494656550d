"""Checkpoints that a kill cannot corrupt (internal).

One file per run (its run key): the member's weights and optimiser state under the step-by-step model's names
(so a member of a ``trainer.seeds=K`` job and a single run of the same seed read each other's checkpoints),
every RNG state, and the loop's counters. A write goes to a temporary file, is flushed to disk, the previous
checkpoint is kept as ``<name>.prev`` and the new one renamed into place: a kill at any moment leaves a
readable current or previous checkpoint. A truncated or unreadable file is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnbench.faults import fault

log = logging.getLogger("rnnbench")


def _prev(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically, keeping the checkpoint it replaces as ``<path>.prev``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    fault("checkpoint.write")
    if path.exists():
        os.replace(path, _prev(path))
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        return None
    except Exception as exc:  # truncated, garbage, or from an incompatible version
        log.warning("checkpoint %s is unreadable (%s: %s); it is ignored", path, type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or "step" not in state:
        log.warning("checkpoint %s is not an rnnbench checkpoint; it is ignored", path)
        return None
    return state


def load_all(path: Path) -> list[dict[str, Any]]:
    """The readable checkpoints of a run, newest first: the current one and the one it replaced."""
    for stray in path.parent.glob(f"{path.name}.tmp*") if path.parent.exists() else []:
        stray.unlink(missing_ok=True)  # a write that a kill interrupted
    found = [s for s in (_read(path), _read(_prev(path))) if s is not None]
    return sorted(found, key=lambda s: -s["step"])


def remove(path: Path) -> None:
    for p in (path, _prev(path)):
        p.unlink(missing_ok=True)


def global_rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
