"""``rnnbench report``: accuracy against dependency length, read back from the tracking store.

Runs are grouped by configuration: every resolved setting but the seed (``rnnbench.identity``). A *line* is
the configurations of one cell that differ only in the dependency length (or the x axis chosen with ``--x``);
several lines of one cell are labelled by the settings that differ between them. A seed *succeeds* when its
run FINISHED, did not diverge and its final metric (default ``final/accuracy``) is at least the threshold
(default: the configuration's ``trainer.solved_threshold``, 0.99 unless changed; a capacity sweep climbs
by the same rule). The denominator is the planned seeds: a sweep's plan where there is one, else every seed seen
for the configuration; a missing, RUNNING, KILLED or FAILED seed is a failure and marks the length incomplete.
A length is *solved* when a strict majority of its planned seeds succeed; a line's headline number, the
*longest solved*, is the largest length L such that every tested length up to L is solved (none: null).
A seed's *capacity* is the longest length it succeeded at contiguously from the shortest; ``report_capacity``
tabulates it per cell and task at the best learning rate (``capacity.md``, ``capacity.csv``, ``capacity.png``).

This module is the command (arguments, refused in one line before anything is read or written) and re-exports
the pieces: ``report_data`` (runs and plans from the store), ``report_plan`` (a sweep's planned seeds),
``report_points`` and ``report_compute`` (the rules and the grouping, pure), ``report_draw`` (figures),
``report_write`` (report.md, results.csv, summary.json), ``report_lengths`` (accuracy against test length, when
runs have ``task.test_lengths``), ``report_build`` (the report, attaching it to a sweep's parent).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rnnbench.commands import SubcommandParser
from rnnbench.errors import RnnbenchError
from rnnbench.report_build import DEFAULT_METRIC, REPORT_FILES, Report, attach, build_report, headline
from rnnbench.report_compute import DEFAULT_THRESHOLD, aggregate, select, summary_metrics
from rnnbench.report_data import (
    SWEEP_RUNS_ARTIFACT,
    RunRecord,
    plan_of_experiment,
    plan_of_parent_id,
    record_of,
    reused_run_ids,
    runs_of_experiment,
    runs_of_parent,
)
from rnnbench.report_plan import Plan, plan_from_jobs
from rnnbench.store import search_all
from rnnbench.report_points import Line, Panel, Point, succeeded

__all__ = [
    "DEFAULT_METRIC", "DEFAULT_THRESHOLD", "REPORT_FILES", "SWEEP_RUNS_ARTIFACT", "Line", "Panel", "Plan", "Point",
    "Report", "RunRecord", "aggregate", "attach", "build_report", "headline", "main", "parse_args", "plan_from_jobs",
    "plan_of_experiment", "plan_of_parent_id", "record_of", "resolve_uri", "reused_run_ids", "runs_of_experiment",
    "runs_of_parent", "search_all", "select", "succeeded", "summary_metrics",
]

X_CHOICES = ("dependency_length", "lag_min", "lag_median", "lag_max")


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:  # nan fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: a number in (0, 1]")
    return value


def _metric(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("'' is not allowed: a metric name such as final/accuracy")
    return text


def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_paths(args: argparse.Namespace) -> None:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise RnnbenchError(f"--out {out}: is an existing file; expected a folder for the report (created if missing)")
    if not out.exists() and not _first_existing(out).is_dir():
        raise RnnbenchError(f"--out {out}: {_first_existing(out)} is a file, so the folder cannot be created")
    if args.plot is not None:
        plot: Path = args.plot
        if plot.suffix.lower() != ".png":
            raise RnnbenchError(f"--plot {plot}: expected a .png file path")
        if plot.is_dir():
            raise RnnbenchError(f"--plot {plot}: is an existing folder; expected a .png file path")
        if not plot.parent.exists() and not _first_existing(plot.parent).is_dir():
            raise RnnbenchError(f"--plot {plot}: {_first_existing(plot.parent)} is a file, not a folder")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = SubcommandParser(
        prog="rnnbench report",
        description="Accuracy against dependency length for the runs of an experiment or of a sweep's parent run. "
        "A length is solved when a strict majority of the planned seeds finish at or above the threshold; the "
        "longest solved length is the largest L with every tested length up to L solved.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--experiment", help="experiment name (default: rnnbench)")
    which.add_argument("--parent", metavar="RUN_ID", help="a sweep's parent run: its children and reused runs")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    parser.add_argument("--out", default="rnnbench-report", type=Path, help="output folder (default: %(default)s)")
    parser.add_argument("--threshold", type=_threshold, default=None,
                        help="success: final metric >= this, in (0, 1] (default: each configuration's "
                        f"trainer.solved_threshold, {DEFAULT_THRESHOLD} unless changed)")
    parser.add_argument("--metric", type=_metric, default=DEFAULT_METRIC,
                        help="metric to compare, higher is better (default: %(default)s; runs logged before it "
                        "existed fall back to their last eval/... value, which the report notes)")
    parser.add_argument("--x", choices=X_CHOICES, default="dependency_length",
                        help="x axis: the run's param task.<X> (default: %(default)s)")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="also write the accuracy plot to FILE (.png)")
    parser.add_argument("--attach", action="store_true", help="with --parent: log the report to the parent run")
    args = parser.parse_args(list(argv))
    if args.attach and not args.parent:
        parser.error("--attach needs --parent RUN_ID")
    _check_paths(args)
    return args


def resolve_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``; made absolute."""
    from rnnbench.tracking import resolve_tracking_uri

    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("sqlite:///") and not Path(resolved[len("sqlite:///") :]).exists():
        raise RnnbenchError(
            f"no tracking store at {resolved}: run a sweep first, or pass --tracking-uri / set MLFLOW_TRACKING_URI"
        )
    return resolved


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_uri(args.tracking_uri)
    from rnnbench import store

    client = store.client(uri, create=False)
    if args.parent:
        plan = plan_of_parent_id(client, args.parent)
        runs = runs_of_parent(client, args.parent, plan)
        source = f"sweep parent run {args.parent} in {uri}"
    else:
        name = args.experiment or "rnnbench"
        runs, plan = runs_of_experiment(client, name), plan_of_experiment(client, name)
        source = f"experiment {name!r} in {uri}"
    report = build_report(runs, args.out, client, args.metric, args.threshold, source, plan, f"task.{args.x}")
    if args.plot:
        import shutil

        args.plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report.files["accuracy.png"], args.plot)
    if args.attach:
        attach(client, args.parent, report)
    print(headline(report))
    print(f"\nrnnbench: report written to {args.out.resolve()} (open {report.files['index.html'].name} in a browser)"
          + (f" and {args.plot}" if args.plot else ""), file=sys.stderr)
    if args.attach:
        from rnnbench.ui import browse_lines, ensure_view

        experiment_id = client.get_run(args.parent).info.experiment_id
        ensure_view(client, experiment_id)  # an experiment from before rnnbench stored its runs view
        print("rnnbench: attached to the parent run\n  " + "\n  ".join(
            browse_lines(uri, experiment_id, args.parent, report=True)), file=sys.stderr)
    return 0
