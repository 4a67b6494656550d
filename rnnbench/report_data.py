"""Reading runs and sweep plans from the tracking store into :class:`RunRecord` s (no aggregation here)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from rnnbench import identity
from rnnbench.errors import RnnbenchError
from rnnbench.report_plan import Plan, plan_from_jobs
from rnnbench.store import search_all

SWEEP_RUNS_ARTIFACT = "sweep/runs.json"
GROUP_KEY_TAG = "rnnbench.group_key"
DERIVED_PARAMS = ("model.resolved_hidden_size", "model.num_parameters", "model.path")
"""Params the runner logs beside the config: facts computed from it, not settings."""
DESCRIBE_FACTS = ("sequence_length", "min_sequence_length", "max_sequence_length", "classes", "lag_min",
                  "lag_median", "lag_max", "lag_kind", "lag_method")
"""``task.describe()`` keys that are not config fields of the built-in tasks (used when a task is unknown)."""


@dataclass
class RunRecord:
    """What the report needs from one run."""

    run_id: str
    status: str
    task: str
    cell: str
    seed: int
    dependency_length: int
    group_key: str
    settings: dict[str, str]
    """Every resolved setting of the run but the seed (``identity.group_settings``, derived facts dropped)."""
    x: float | None = None
    value: float | None = None
    value_source: str = ""
    """The metric that gave ``value``: the requested one, or the fallback (last ``eval/...``) of an older run."""
    baseline: float | None = None
    diverged: bool = False
    run_key: str = ""
    start_time: int = 0
    tagged: bool = True
    """Whether the run carried its group key tag (else it was computed from the run's params)."""
    params: dict[str, str] = field(default_factory=dict, repr=False)
    duration_s: float | None = None
    """Wall time from the run's start to its end (None while it runs)."""
    steps_per_second: float | None = None
    """``time/steps_per_second``: the training loop's rate (evaluations aside)."""
    threads: int = 1
    """``rnnbench.threads``: the torch threads the run used (its CPU-seconds are about duration x threads)."""
    members: int = 1
    """``rnnbench.seed_parallel``: the runs trained together in its process (they share its time)."""
    outcome: str = ""


@lru_cache(maxsize=None)
def task_config_fields(task: str) -> frozenset[str] | None:
    """The config fields of an installed task (``task.<field>`` params are settings), None when unknown."""
    import dataclasses

    try:
        from rnnbench.manager import get_registry

        spec = get_registry().tasks.get(task)
    except Exception:
        return None
    return None if spec is None else frozenset(f.name for f in dataclasses.fields(spec.config))


def config_settings(params: Mapping[str, str], task: str) -> dict[str, str]:
    """The group settings of a run from its params: the flattened config less the seed and volatile keys,
    less what the runner logs beside the config (derived model facts and ``task.describe()`` facts)."""
    fields = task_config_fields(task)
    out = {}
    for key, value in identity.group_settings(params).items():
        if key in DERIVED_PARAMS:
            continue
        if key.startswith("task."):
            name = key[len("task."):]
            if (name not in fields) if fields is not None else (name in DESCRIBE_FACTS):
                continue
        out[key] = value
    return out


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def fallback_metric(metric: str) -> str | None:
    """An older run without ``final/<m>`` is read from its last ``eval/<m>`` (the training curve's last point)."""
    return "eval/" + metric[len("final/"):] if metric.startswith("final/") else None


def metric_value(metrics: Mapping[str, float], metric: str) -> tuple[float | None, str]:
    """A run's ``metric`` (or its fallback, :func:`fallback_metric`) and the name it was read from ("": none)."""
    if metric in metrics:
        return metrics[metric], metric
    alt = fallback_metric(metric)
    if alt is not None and alt in metrics:
        return metrics[alt], alt
    return None, ""


def record_of(run: Any, metric: str = "final/accuracy", x_key: str = "task.dependency_length") -> RunRecord | None:
    """A :class:`RunRecord` of an MLflow run, or None for a run that is not an rnnbench job (a sweep parent)."""
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    cell = params.get("cell.name") or tags.get("rnnbench.cell")
    task = params.get("task.name") or tags.get("rnnbench.task")
    if not cell or not task or "task.dependency_length" not in params:
        return None
    value, source = metric_value(metrics, metric)
    settings = config_settings(params, task)
    group = tags.get(GROUP_KEY_TAG) or identity.group_key(settings)
    x_text = params.get(x_key)
    try:
        x = float(x_text) if x_text is not None else None
    except ValueError:
        x = None
    return RunRecord(
        run_id=run.info.run_id,
        status=run.info.status,
        task=task,
        cell=cell,
        seed=int(params.get("seed", 0)),
        dependency_length=int(params["task.dependency_length"]),
        group_key=group,
        settings=settings,
        x=x,
        value=_finite(value),
        value_source=source,
        baseline=_finite(metrics.get("baseline/" + metric.split("/", 1)[-1])),
        diverged=tags.get("rnnbench.outcome") == "diverged",
        run_key=tags.get("rnnbench.run_key", ""),
        start_time=int(run.info.start_time or 0),
        tagged=GROUP_KEY_TAG in tags,
        params=dict(params),
        duration_s=(run.info.end_time - run.info.start_time) / 1000 if run.info.end_time and run.info.start_time
        else None,
        steps_per_second=_finite(metrics.get("time/steps_per_second")),
        threads=int(tags.get("rnnbench.threads") or 1) if str(tags.get("rnnbench.threads") or "1").isdigit() else 1,
        outcome=tags.get("rnnbench.outcome", ""),
        members=int(tags.get("rnnbench.seed_parallel") or 1) if str(tags.get("rnnbench.seed_parallel") or "1").isdigit()
        else 1,
    )


def sweep_listing(client: Any, parent_id: str) -> dict[str, Any]:
    """The parent's ``sweep/runs.json`` (written when the sweep ends), or {} when it has none."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent_id, SWEEP_RUNS_ARTIFACT, tmp)
            return dict(json.loads(Path(path).read_text()))
    except Exception:
        return {}


def reused_run_ids(client: Any, parent_id: str) -> list[str]:
    return list(sweep_listing(client, parent_id).get("reused_run_ids", []))


def plan_of_parent(client: Any, parent: Any, listing: Mapping[str, Any] | None = None) -> Plan:
    """What the sweep of ``parent`` planned: from its ``sweep/runs.json``, else (a sweep still running, or
    one whose end was never recorded) from the manifest in its sweep directory, when this machine can read it."""
    listing = sweep_listing(client, parent.info.run_id) if listing is None else listing
    if listing.get("plan"):
        return Plan.from_json(listing["plan"])
    if listing.get("jobs"):
        return plan_from_jobs(listing["jobs"])
    folder = parent.data.tags.get("rnnbench.sweep.dir")
    manifest = Path(folder) / ".rnnbench" / f"jobs-{parent.info.run_id}.jsonl" if folder else None
    if manifest is None or not manifest.is_file():
        return Plan()
    lines = []
    for text in manifest.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return plan_from_jobs(lines)


def _get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise RnnbenchError(f"no run {run_id!r} in {client.tracking_uri}") from exc


def runs_of_parent(client: Any, parent_id: str, plan: Plan | None = None) -> list[Any]:
    """The children of sweep parent ``parent_id`` plus the earlier runs a re-run of the sweep reused.

    A re-run skips jobs that already finished (same run key); the sweep callback lists those runs in the
    parent's ``sweep/runs.json`` artifact when the sweep ends, so the parent's report covers the whole grid.
    With ``plan``, a planned run key that none of those runs has (a sweep still running, or one whose end was
    never recorded) is looked up in the experiment: its newest FINISHED run counts.
    """
    from mlflow.exceptions import MlflowException

    parent = _get_run(client, parent_id)
    runs = search_all(client, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    have = {r.info.run_id for r in runs}
    for run_id in reused_run_ids(client, parent_id):
        if run_id not in have:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException:
                continue
    keys = {r.data.tags.get("rnnbench.run_key") for r in runs if r.info.status == "FINISHED"}
    for key in (plan.members if plan else {}):
        if key not in keys:
            runs += client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.`rnnbench.run_key` = '{key}' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"], max_results=1,
            )
    return list({r.info.run_id: r for r in runs}.values())


def plan_of_parent_id(client: Any, parent_id: str) -> Plan:
    return plan_of_parent(client, _get_run(client, parent_id))


def _experiment(client: Any, name: str) -> Any:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise RnnbenchError(
            f"no experiment {name!r} in {client.tracking_uri}; available: {', '.join(names) or 'none'}"
        )
    return experiment


def runs_of_experiment(client: Any, name: str) -> list[Any]:
    """The rnnbench runs of experiment ``name`` (sweep parents aside)."""
    experiment = _experiment(client, name)
    return search_all(client, [experiment.experiment_id], "tags.`rnnbench.run_key` != ''")


def plan_of_experiment(client: Any, name: str) -> Plan:
    """The merged plans of the sweeps run in experiment ``name``."""
    experiment = _experiment(client, name)
    plan = Plan()
    for parent in search_all(client, [experiment.experiment_id], "tags.`rnnbench.sweep` = 'true'"):
        plan = plan.merge(plan_of_parent(client, parent))
    return plan
