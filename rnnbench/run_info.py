"""What a training run says about itself in MLflow: its params and the short tags the UI's runs table shows.

- Params are the resolved config flattened to dotted keys, less what does nothing: no ``diagnostics.*`` when
  diagnostics are off; ``model.hidden_size`` is the hidden size the model has (with ``model.param_budget`` the
  budget decides it, and the config's ``model.hidden_size`` is unused). Beside them: the task's facts
  (``task.describe()``), ``model.resolved_hidden_size`` (the same number, kept for queries written before),
  ``model.num_parameters`` and ``model.path``.
- Tags ``cell``, ``task``, ``length`` (the dependency length) and ``seed``: short names for the runs table
  (:data:`rnnbench.ui.RUN_TAGS`) and for searches such as ``tags.length = '100'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rnnbench import identity


def run_params(resolved: Mapping[str, Any], facts: Mapping[str, Any], hidden: int, num_parameters: int,
               path: str) -> dict[str, str]:
    """A run's MLflow params from its resolved config, its task's ``describe()`` facts and the built model."""
    params = identity.flatten(resolved)
    if not (resolved.get("diagnostics") or {}).get("enabled", False):
        params = {k: v for k, v in params.items() if not k.startswith("diagnostics.")}
    if "model.hidden_size" in params:
        params["model.hidden_size"] = str(hidden)
    params.update({f"task.{k}": str(v) for k, v in facts.items() if f"task.{k}" not in params})
    params.update({"model.resolved_hidden_size": str(hidden), "model.num_parameters": str(num_parameters),
                   "model.path": path})
    return params


def run_tags(cell: str, task: str, dependency_length: int, seed: int) -> dict[str, str]:
    """The tags ``cell``, ``task``, ``length`` and ``seed`` of a run."""
    return {"cell": str(cell), "task": str(task), "length": str(dependency_length), "seed": str(seed)}
