"""Diagnostics read back from the tracking store, and ``rnnbench diagnostics figure``: the side-by-side
gradient-flow figure of the runs in a store."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnbench.diagnostics import ARTIFACT_DIR, RAW_FILE
from rnnbench.diagnostics_figures import gradient_flow_figure
from rnnbench.errors import ConfigError


def load_run_arrays(run_id: str, tracking_uri: str | None = None, client: Any = None) -> dict[str, Any]:
    """The raw numbers (``diagnostics/gradient_flow.json``) of MLflow run ``run_id``, plus ``run_id``.

    ``cell``, ``task`` and ``dependency_length`` are filled from the run's tags and params when the file lacks
    them. Raises ``FileNotFoundError`` when the run has no diagnostics artifact.
    """
    from rnnbench import store

    client = client or store.client(store.resolve_tracking_uri(tracking_uri), create=False)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{RAW_FILE}", tmp)
        except Exception as exc:
            raise FileNotFoundError(f"run {run_id} has no {ARTIFACT_DIR}/{RAW_FILE} artifact: {exc}") from exc
        raw = json.loads(Path(local).read_text())
    raw["run_id"] = run_id
    if not raw.get("cell") or not raw.get("task") or raw.get("dependency_length") is None:
        run = client.get_run(run_id)
        raw["cell"] = raw.get("cell") or run.data.tags.get("rnnbench.cell", "")
        raw["task"] = raw.get("task") or run.data.tags.get("rnnbench.task", "")
        if raw.get("dependency_length") is None and "task.dependency_length" in run.data.params:
            raw["dependency_length"] = int(run.data.params["task.dependency_length"])
    return raw


def find_runs_arrays(
    tracking_uri: str,
    experiment: str = "rnnbench",
    cells: Sequence[str] | None = None,
    lengths: Sequence[int] | None = None,
    parent_run: str | None = None,
    task: str | None = None,
) -> list[dict[str, Any]]:
    """Raw numbers of the newest finished run of every (cell, task, length) in ``experiment`` that has them."""
    from rnnbench import store

    client = store.client(tracking_uri, create=False)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError("--experiment", experiment, f"an experiment of {tracking_uri}")
    filters = ["attributes.status = 'FINISHED'"]
    if parent_run:
        filters.append(f"tags.`mlflow.parentRunId` = '{parent_run}'")
    if task:
        filters.append(f"tags.`rnnbench.task` = '{task}'")
    runs = store.search_all(client, [found.experiment_id], " and ".join(filters),
                            order_by=["attributes.start_time DESC"])
    seen: set[tuple[str, str, str]] = set()
    out: list[dict[str, Any]] = []
    for run in runs:
        cell = run.data.tags.get("rnnbench.cell", "")
        length = run.data.params.get("task.dependency_length", "")
        key = (cell, run.data.tags.get("rnnbench.task", ""), length)
        if key in seen or (cells and cell not in cells) or (lengths and length not in {str(n) for n in lengths}):
            continue
        try:
            raw = load_run_arrays(run.info.run_id, client=client)
        except FileNotFoundError:
            continue
        if raw.get("grad_norm"):
            seen.add(key)
            out.append(raw)
    order = {c: i for i, c in enumerate(cells or [])}
    out.sort(key=lambda r: (order.get(r["cell"], len(order)), r["cell"], r.get("dependency_length") or 0))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``rnnbench diagnostics figure``: the side-by-side figure of the runs in a tracking store."""
    from rnnbench.tracking import resolve_tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = argparse.ArgumentParser(prog="rnnbench diagnostics")
    sub = parser.add_subparsers(dest="command", required=True)
    fig = sub.add_parser("figure", help="gradient-through-time curves of several runs, one panel per cell")
    fig.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else ./mlflow.db")
    fig.add_argument("--experiment", default="rnnbench")
    fig.add_argument("--cells", nargs="*", help="cells to draw, in this order (default: all)")
    fig.add_argument("--lengths", nargs="*", type=int, help="dependency lengths to draw (default: all)")
    fig.add_argument("--task", default=None, help="only runs on this task")
    fig.add_argument("--parent-run", default=None, help="only the jobs of this sweep (its parent run id)")
    fig.add_argument("--raw", action="store_true", help="plot ||dL/dh_t|| instead of the ratio to the output step")
    fig.add_argument("-o", "--output", type=Path, default=Path("gradient_flow.png"))
    args = parser.parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    runs = find_runs_arrays(uri, args.experiment, args.cells, args.lengths, args.parent_run, args.task)
    if not runs:
        print(f"no finished run with diagnostics in experiment {args.experiment!r} of {uri}")
        return 1
    figure = gradient_flow_figure(runs, normalize=not args.raw)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=120)
    print(f"{args.output}: {len(runs)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
