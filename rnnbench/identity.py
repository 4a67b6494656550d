"""Run identity: what makes two runs the same run, and two runs of one configuration (internal).

- The **run key** hashes every resolved setting that changes what a run computes (seed included): a rerun with
  the same key resumes or skips the earlier run.
- The **group key** is the run key less the seed: runs that share it are seeds of one configuration, and only
  such runs are ever aggregated in a report.
- A job with ``trainer.seeds=K`` is K members, seeds ``seed .. seed + K - 1``, one run key each.

The runner, the sweep's skip logic and the report all use these functions, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

VOLATILE: tuple[str, ...] = (
    "tracking", "trainer.progress", "trainer.checkpoint_dir", "trainer.resume", "trainer.threads",
    "trainer.log_every", "trainer.seeds", "diagnostics",
)
"""Settings that do not change a run's numbers: left out of the run key (prefixes of dotted keys)."""

GROUP_VOLATILE: tuple[str, ...] = VOLATILE + ("seed",)

UNSET: dict[str, str] = {"task.train_length": "null", "task.test_lengths": "[]", "trainer.cuda_graphs": "True"}
"""Settings added after runs were recorded, left out of every key (and of a group's settings) while they hold
these values (as :func:`flatten` writes them): off, they change nothing, and the runs recorded before they
existed keep their keys."""


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"dotted.key": "text"}``, as it is logged to MLflow params."""
    out: dict[str, str] = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = "null" if tree is None else json.dumps(tree) if isinstance(tree, list) else str(tree)
    return out


def _kept(flat: Mapping[str, str], dropped: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in flat.items()
            if not any(k == p or k.startswith(p + ".") for p in dropped) and UNSET.get(k) != v}


def _digest(kept: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(kept), sort_keys=True).encode()).hexdigest()[:16]


def run_key(resolved: Mapping[str, Any]) -> str:
    """A stable hash of everything that determines the run's numbers, seed included."""
    return _digest(_kept(flatten(resolved), VOLATILE))


def group_key(resolved: Mapping[str, Any]) -> str:
    """The run key less the seed: equal for the seeds of one configuration."""
    return _digest(_kept(flatten(resolved), GROUP_VOLATILE))


def group_settings(flat: Mapping[str, str]) -> dict[str, str]:
    """The settings that define a group, from flattened config (e.g. a run's MLflow params). With a
    ``model.param_budget`` the budget decides the hidden size: ``model.hidden_size`` is left out, so the config's
    unused value (a sweep's plan) and the size the run logs (its params) describe the same configuration."""
    kept = _kept(flat, GROUP_VOLATILE)
    if kept.get("model.param_budget", "null") not in ("null", "None", ""):
        kept.pop("model.hidden_size", None)
    return kept


def member_seeds(seed: int, members: int) -> list[int]:
    """The seeds of a job's members: ``seed .. seed + members - 1``."""
    return [seed + k for k in range(members)]


def member_resolved(resolved: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """A copy of a job's resolved config for the member with ``seed``."""
    return dict(resolved, seed=seed)


def job_run_keys(resolved: Mapping[str, Any]) -> list[str]:
    """The run keys of a job's members, in member order."""
    members = int(resolved.get("trainer", {}).get("seeds", 1) or 1)
    return [run_key(member_resolved(resolved, s)) for s in member_seeds(int(resolved["seed"]), members)]


def checkpoint_path(checkpoint_dir: str, original_cwd: Path, key: str) -> Path:
    """Where the run with ``key`` keeps its checkpoint; a relative folder is taken from ``original_cwd``."""
    folder = Path(checkpoint_dir)
    return (folder if folder.is_absolute() else original_cwd / folder) / f"{key}.pt"
