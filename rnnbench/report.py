"""``rnnbench report``: accuracy against dependency length, read back from the tracking store.

Runs are grouped by task (and variant, model budget and step budget), then by cell, then by dependency
length; the seeds of each (cell, length) are aggregated. A run *succeeds* when its final metric (default
``eval/accuracy``) is at least the threshold (default 0.99); a diverged run always counts as a failure. A
cell *solves* a length when a strict majority of its seeds succeed there, and its headline number is the
longest length it solves.

Written to the output folder (and, for a sweep, logged to its parent run):

    accuracy.png     final metric against dependency length, one panel per task, one line per cell
    loss_curves.png  train/loss of every seed at each cell's longest length
    report.md        the same numbers as Markdown tables
    results.csv      one row per (task group, cell, length)
    summary.json     longest length solved per cell, and the settings of the report

When two finished runs have the same task group, cell, length and seed (a configuration run twice), the
newest counts.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnbench.errors import RnnbenchError

DEFAULT_METRIC = "eval/accuracy"
DEFAULT_THRESHOLD = 0.99
REPORT_FILES = ("accuracy.png", "loss_curves.png", "report.md", "results.csv", "summary.json")
SWEEP_RUNS_ARTIFACT = "sweep/runs.json"


@dataclass
class RunRecord:
    """What the report needs from one run."""

    run_id: str
    status: str
    task: str
    variant: str
    cell: str
    length: int
    seed: int
    budget: str
    steps: int
    value: float | None
    baseline: float | None
    diverged: bool
    start_time: int = 0

    @property
    def group_key(self) -> tuple[str, str, str, int]:
        return (self.task, self.variant, self.budget, self.steps)


@dataclass
class Cell:
    """The seeds of one cell at one dependency length."""

    cell: str
    length: int
    records: list[RunRecord]
    threshold: float

    @property
    def seeds(self) -> int:
        return len(self.records)

    @property
    def diverged(self) -> int:
        return sum(r.diverged for r in self.records)

    @property
    def succeeded(self) -> int:
        return sum(succeeded(r, self.threshold) for r in self.records)

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.records if r.value is not None]

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def low(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def high(self) -> float | None:
        return max(self.values) if self.values else None

    @property
    def baseline(self) -> float | None:
        values = [r.baseline for r in self.records if r.baseline is not None]
        return statistics.median(values) if values else None

    @property
    def solved(self) -> bool:
        """A strict majority of the seeds succeeded."""
        return 2 * self.succeeded > self.seeds

    @property
    def success_text(self) -> str:
        text = f"{self.succeeded}/{self.seeds}"
        return text + (f" ({self.diverged} diverged)" if self.diverged else "")


@dataclass
class Group:
    """One panel of the report: a task variant trained with one model and step budget."""

    task: str
    variant: str
    budget: str
    steps: int
    cells: dict[str, dict[int, Cell]] = field(default_factory=dict)
    slug: str = ""

    @property
    def title(self) -> str:
        return f"{self.task} ({self.variant}), budget {self.budget}, {self.steps} steps"

    @property
    def lengths(self) -> list[int]:
        return sorted({length for by_length in self.cells.values() for length in by_length})

    def longest_solved(self) -> dict[str, int | None]:
        """Per cell, the longest dependency length a majority of seeds solved (None: none)."""
        out: dict[str, int | None] = {}
        for cell, by_length in self.cells.items():
            solved = [length for length, c in by_length.items() if c.solved]
            out[cell] = max(solved) if solved else None
        return out


def succeeded(record: RunRecord, threshold: float) -> bool:
    return not record.diverged and record.value is not None and record.value >= threshold


def _baseline_key(metric: str) -> str:
    return "baseline/" + metric.split("/", 1)[-1]


def _budget(params: dict[str, str]) -> str:
    budget = params.get("model.param_budget", "null")
    if budget not in ("null", "None", ""):
        return f"<={budget} params"
    return f"hidden {params.get('model.hidden_size', '?')}"


def record_of(run: Any, metric: str = DEFAULT_METRIC) -> RunRecord | None:
    """A :class:`RunRecord` of an MLflow run, or None for a run that is not an rnnbench job (a sweep parent)."""
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    cell = params.get("cell.name") or tags.get("rnnbench.cell")
    task = params.get("task.name") or tags.get("rnnbench.task")
    if not cell or not task or "task.dependency_length" not in params:
        return None
    value = metrics.get(metric)
    baseline = metrics.get(_baseline_key(metric))
    return RunRecord(
        run_id=run.info.run_id,
        status=run.info.status,
        task=task,
        variant=params.get("task.variant", "default"),
        cell=cell,
        length=int(params["task.dependency_length"]),
        seed=int(params.get("seed", 0)),
        budget=_budget(params),
        steps=int(params.get("trainer.steps", 0)),
        value=None if value is None or not math.isfinite(value) else float(value),
        baseline=None if baseline is None or not math.isfinite(baseline) else float(baseline),
        diverged=tags.get("rnnbench.outcome") == "diverged",
        start_time=int(run.info.start_time or 0),
    )


def select(records: Iterable[RunRecord]) -> tuple[list[RunRecord], list[RunRecord], list[RunRecord]]:
    """Split into (counted, superseded, unfinished): finished runs count, newest per (group, cell, length, seed)."""
    newest: dict[tuple[Any, ...], RunRecord] = {}
    superseded: list[RunRecord] = []
    unfinished: list[RunRecord] = []
    for record in sorted(records, key=lambda r: r.start_time, reverse=True):
        if record.status != "FINISHED":
            unfinished.append(record)
            continue
        key = (record.group_key, record.cell, record.length, record.seed)
        if key in newest:
            superseded.append(record)
        else:
            newest[key] = record
    return list(newest.values()), superseded, unfinished


def aggregate(records: Iterable[RunRecord], threshold: float = DEFAULT_THRESHOLD) -> list[Group]:
    """Group finished records by task group, cell and length (see :func:`select` for which runs count)."""
    counted, _, _ = select(records)
    groups: dict[tuple[str, str, str, int], Group] = {}
    for record in counted:
        group = groups.setdefault(record.group_key, Group(record.task, record.variant, record.budget, record.steps))
        by_length = group.cells.setdefault(record.cell, {})
        by_length.setdefault(record.length, Cell(record.cell, record.length, [], threshold)).records.append(record)
    ordered = [groups[key] for key in sorted(groups)]
    per_task: dict[str, int] = {}
    for group in ordered:
        per_task[group.task] = per_task.get(group.task, 0) + 1
    for group in ordered:
        group.slug = group.task if per_task[group.task] == 1 else _slug(
            f"{group.task}-{group.variant}-{group.budget}-{group.steps}"
        )
        group.cells = {cell: dict(sorted(group.cells[cell].items())) for cell in sorted(group.cells)}
        for by_length in group.cells.values():
            for c in by_length.values():
                c.records.sort(key=lambda r: r.seed)
    return ordered


def _slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text.replace("<=", "le"))
    return "-".join(part for part in keep.split("-") if part)


def summary_metrics(groups: Sequence[Group]) -> dict[str, float]:
    """Metrics for a sweep's parent run: ``longest_solved/<cell>`` (``longest_solved/<task>/<cell>`` with
    several tasks; 0 when no length was solved) and ``success_rate/...`` over all lengths."""
    out: dict[str, float] = {}
    for group in groups:
        prefix = "" if len(groups) == 1 else f"{group.slug}/"
        for cell, longest in group.longest_solved().items():
            out[f"longest_solved/{prefix}{cell}"] = float(longest or 0)
            cells = list(group.cells[cell].values())
            seeds = sum(c.seeds for c in cells)
            out[f"success_rate/{prefix}{cell}"] = sum(c.succeeded for c in cells) / seeds if seeds else 0.0
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def csv_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    rows = []
    for group in groups:
        for cell, by_length in group.cells.items():
            for length, c in by_length.items():
                rows.append(
                    {
                        "task": group.task,
                        "variant": group.variant,
                        "budget": group.budget,
                        "steps": group.steps,
                        "cell": cell,
                        "dependency_length": length,
                        "seeds": c.seeds,
                        "succeeded": c.succeeded,
                        "diverged": c.diverged,
                        "success": c.success_text,
                        "solved": c.solved,
                        "median": c.median,
                        "min": c.low,
                        "max": c.high,
                        "baseline": c.baseline,
                        "run_ids": " ".join(r.run_id for r in c.records),
                    }
                )
    return rows


def markdown(groups: Sequence[Group], metric: str, threshold: float, source: str, notes: Sequence[str] = ()) -> str:
    lines = [
        "# rnnbench report",
        "",
        f"Source: {source}. Metric: final `{metric}`; a seed succeeds at >= {threshold:g} (a diverged run "
        "fails); a cell solves a length when a majority of its seeds succeed. Cells show the median over seeds "
        "and the successful seeds.",
        "",
        *(f"- {note}" for note in notes),
        *([""] if notes else []),
        "![accuracy against dependency length](accuracy.png)",
        "",
    ]
    for group in groups:
        lengths = group.lengths
        lines += [f"## {group.title}", "", "| cell | longest solved | " + " | ".join(f"T={t}" for t in lengths) + " |"]
        lines.append("|---|---|" + "---|" * len(lengths))
        longest = group.longest_solved()
        for cell, by_length in group.cells.items():
            entries = []
            for t in lengths:
                c = by_length.get(t)
                entries.append("" if c is None else f"{_fmt(c.median)} ({c.success_text})")
            solved = longest[cell] if longest[cell] is not None else "none"
            lines.append(f"| {cell} | {solved} | " + " | ".join(entries) + " |")
        baselines = [c.baseline for by in group.cells.values() for c in by.values() if c.baseline is not None]
        if baselines:
            lines += ["", f"Memoryless baseline (chance): {_fmt(statistics.median(baselines))}."]
        lines.append("")
    lines += ["![training loss at the longest length](loss_curves.png)", ""]
    return "\n".join(lines)


def _grid(n: int) -> tuple[int, int]:
    cols = 1 if n == 1 else 2
    return (n + cols - 1) // cols, cols


def accuracy_figure(groups: Sequence[Group], metric: str, threshold: float) -> Any:
    """Median final metric against dependency length (log axis), min-max shaded, with the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    rows, cols = _grid(len(groups))
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
    for ax, group in zip(axes.flat, groups):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (cell, by_length) in enumerate(group.cells.items()):
            color = colors[i % len(colors)]
            pts = [(t, c) for t, c in by_length.items() if c.median is not None]
            if pts:
                xs = [t for t, _ in pts]
                ax.plot(xs, [c.median for _, c in pts], marker="o", color=color, label=cell)
                ax.fill_between(xs, [c.low for _, c in pts], [c.high for _, c in pts], color=color, alpha=0.15)
            bad = [(t, c) for t, c in by_length.items() if c.diverged]
            if bad:
                ax.scatter([t for t, _ in bad], [0.0] * len(bad), marker="x", color=color, s=60, zorder=3,
                           label=f"{cell}: diverged seeds")
        lengths = group.lengths
        base = [(t, statistics.median(b)) for t in lengths
                if (b := [c.baseline for by in group.cells.values() if t in by and (c := by[t]).baseline is not None])]
        if base:
            ax.plot([t for t, _ in base], [v for _, v in base], linestyle="--", color="black", linewidth=1,
                    label="chance (memoryless baseline)")
        ax.axhline(threshold, linestyle=":", color="grey", linewidth=1, label=f"success threshold {threshold:g}")
        ax.set_xscale("log")
        ax.set_xticks(lengths)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(lengths) == 1:
            ax.set_xlim(lengths[0] / 1.5, lengths[0] * 1.5)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("dependency length T (log scale)")
        ax.set_ylabel(f"final {metric} (median over seeds, min-max shaded)")
        ax.set_title(group.title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def loss_figure(groups: Sequence[Group], histories: dict[str, list[tuple[int, float]]]) -> Any:
    """train/loss of every seed of each cell at the longest length that cell was run at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = _grid(len(groups))
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
    for ax, group in zip(axes.flat, groups):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        drawn = False
        for i, (cell, by_length) in enumerate(group.cells.items()):
            length = max(by_length)
            for j, record in enumerate(by_length[length].records):
                points = histories.get(record.run_id, [])
                if not points:
                    continue
                ax.plot([s for s, _ in points], [v for _, v in points], color=colors[i % len(colors)],
                        alpha=0.8, linewidth=1, label=f"{cell} (T={length})" if j == 0 else None)
                drawn = True
        ax.set_yscale("log" if drawn else "linear")
        ax.set_xlabel("training step")
        ax.set_ylabel("train/loss")
        ax.set_title(f"{group.title}\ntrain/loss of each seed at each cell's longest length", fontsize="medium")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def loss_histories(client: Any, groups: Sequence[Group], key: str = "train/loss") -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for group in groups:
        for by_length in group.cells.values():
            for record in by_length[max(by_length)].records:
                history = client.get_metric_history(record.run_id, key)
                out[record.run_id] = sorted((m.step, m.value) for m in history if math.isfinite(m.value))
    return out


@dataclass
class Report:
    groups: list[Group]
    summary: dict[str, Any]
    metrics: dict[str, float]
    markdown: str
    files: dict[str, Path]


def build_report(
    runs: Sequence[Any],
    out_dir: Path,
    client: Any | None = None,
    metric: str = DEFAULT_METRIC,
    threshold: float = DEFAULT_THRESHOLD,
    source: str = "",
) -> Report:
    """Aggregate ``runs`` (MLflow runs) and write the report files into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in (record_of(run, metric) for run in runs) if r is not None]
    if not records:
        raise RnnbenchError(f"no rnnbench runs to report in {source or 'the selection'}")
    counted, superseded, unfinished = select(records)
    if not counted:
        raise RnnbenchError(
            f"none of the {len(records)} runs in {source or 'the selection'} finished "
            f"({', '.join(sorted({r.status for r in unfinished}))}); nothing to report"
        )
    if all(r.value is None for r in counted) and not any(r.diverged for r in counted):
        available = sorted({k for run in runs for k in run.data.metrics})
        raise RnnbenchError(f"metric {metric!r} was not logged by any run; available: {', '.join(available)}")
    groups = aggregate(counted, threshold)
    notes = []
    if superseded:
        notes.append(f"{len(superseded)} older finished run(s) of the same configuration and seed were superseded.")
    if unfinished:
        notes.append(
            f"{len(unfinished)} run(s) that did not finish were left out: "
            + ", ".join(f"{r.cell} T={r.length} seed {r.seed} ({r.status})" for r in unfinished[:20])
            + (" ..." if len(unfinished) > 20 else "")
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / name for name in REPORT_FILES}

    fig = accuracy_figure(groups, metric, threshold)
    fig.savefig(files["accuracy.png"], dpi=110)
    plt.close(fig)
    histories = loss_histories(client, groups) if client is not None else {}
    fig = loss_figure(groups, histories)
    fig.savefig(files["loss_curves.png"], dpi=90)
    plt.close(fig)

    text = markdown(groups, metric, threshold, source or "the selected runs", notes)
    files["report.md"].write_text(text)
    rows = csv_rows(groups)
    with files["results.csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metrics = summary_metrics(groups)
    summary = {
        "source": source,
        "metric": metric,
        "threshold": threshold,
        "success_rule": "final metric >= threshold and not diverged; solved = a strict majority of seeds succeed",
        "runs": {"counted": len(counted), "superseded": len(superseded), "unfinished": len(unfinished),
                 "diverged": sum(r.diverged for r in counted)},
        "groups": [
            {
                "task": g.task,
                "variant": g.variant,
                "budget": g.budget,
                "steps": g.steps,
                "slug": g.slug,
                "lengths": g.lengths,
                "longest_solved": g.longest_solved(),
            }
            for g in groups
        ],
        "metrics": metrics,
    }
    files["summary.json"].write_text(json.dumps(summary, indent=2) + "\n")
    return Report(groups, summary, metrics, text, files)


def headline(report: Report) -> str:
    """A short Markdown table: longest length solved per cell and task group."""
    lines = ["| task | cell | longest solved |", "|---|---|---|"]
    for group in report.groups:
        for cell, longest in group.longest_solved().items():
            lines.append(f"| {group.task} ({group.variant}) | {cell} | {longest if longest is not None else 'none'} |")
    return "\n".join(lines)


def attach(client: Any, run_id: str, report: Report, extra_figures: dict[str, Any] | None = None) -> None:
    """Log the report to ``run_id``: files under ``report/``, summary metrics, and a run description."""
    import time

    from mlflow.entities import Metric, RunTag

    for path in report.files.values():
        if path.exists():
            client.log_artifact(run_id, str(path), "report")
    for name, fig in (extra_figures or {}).items():
        client.log_figure(run_id, fig, f"report/{name}")
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in report.metrics.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    note = (
        "Sweep report: accuracy against dependency length is in the Artifacts tab, report/accuracy.png.\n\n"
        + headline(report)
    )
    client.log_batch(run_id, tags=[RunTag("mlflow.note.content", note[:8000])])


def resolve_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``; made absolute."""
    from rnnbench.tracking import resolve_tracking_uri

    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("sqlite:///") and not Path(resolved[len("sqlite:///") :]).exists():
        raise RnnbenchError(
            f"no tracking store at {resolved}: run a sweep first, or pass --tracking-uri / set MLFLOW_TRACKING_URI"
        )
    return resolved


def search_all(client: Any, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    """Every run matching ``filter_string`` (pages through ``search_runs``)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_of_parent(client: Any, parent_id: str) -> list[Any]:
    """The children of sweep parent ``parent_id`` plus the earlier runs a re-run of the sweep reused.

    A re-run skips jobs that already finished (same run key); the sweep callback lists those runs in the
    parent's ``sweep/runs.json`` artifact, so the parent's report covers the whole grid.
    """
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(parent_id)
    except MlflowException as exc:
        raise RnnbenchError(f"no run {parent_id!r} in {client.tracking_uri}") from exc
    runs = search_all(client, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    have = {r.info.run_id for r in runs}
    for run_id in reused_run_ids(client, parent_id):
        if run_id not in have:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException:
                continue
    return runs


def reused_run_ids(client: Any, parent_id: str) -> list[str]:
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent_id, SWEEP_RUNS_ARTIFACT, tmp)
            return list(json.loads(Path(path).read_text()).get("reused_run_ids", []))
    except Exception:
        return []


def runs_of_experiment(client: Any, name: str) -> list[Any]:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise RnnbenchError(
            f"no experiment {name!r} in {client.tracking_uri}; available: {', '.join(names) or 'none'}"
        )
    return search_all(client, [experiment.experiment_id], "tags.`rnnbench.run_key` != ''")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rnnbench report",
        description="Accuracy against dependency length for the runs of an experiment or of a sweep's parent run.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--experiment", help="experiment name (default: rnnbench)")
    which.add_argument("--parent", metavar="RUN_ID", help="a sweep's parent run: its children and reused runs")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    parser.add_argument("--out", default="rnnbench-report", type=Path, help="output folder (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="success: final metric >= this (default: %(default)s)")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help="final metric to compare, higher is better "
                        "(default: %(default)s)")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="also write the accuracy plot to FILE")
    parser.add_argument("--attach", action="store_true", help="with --parent: log the report to the parent run")
    args = parser.parse_args(list(argv))
    if args.attach and not args.parent:
        parser.error("--attach needs --parent")
    if not 0.0 < args.threshold <= 1.0:
        parser.error(f"--threshold={args.threshold} must be in (0, 1]")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        from rnnbench.tracking import check_server

        check_server(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if args.parent:
        runs = runs_of_parent(client, args.parent)
        source = f"sweep parent run {args.parent} in {uri}"
    else:
        name = args.experiment or "rnnbench"
        runs = runs_of_experiment(client, name)
        source = f"experiment {name!r} in {uri}"
    report = build_report(runs, args.out, client, args.metric, args.threshold, source)
    if args.plot:
        import shutil

        args.plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report.files["accuracy.png"], args.plot)
    if args.attach:
        attach(client, args.parent, report)
    print(headline(report))
    print(f"\nrnnbench: report written to {args.out.resolve()}" + (f" and {args.plot}" if args.plot else ""),
          file=sys.stderr)
    return 0
