"""The report's text outputs: report.md, results.csv, summary.json and the short headline table."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnbench.report_compute import X_DEFAULT
from rnnbench.report_points import Line, Panel, Point, fmt_x

SUCCESS_RULE = (
    "a seed succeeds when its run FINISHED, did not diverge and its metric >= threshold; a length is solved when "
    "a strict majority of the planned seeds succeed (a missing, RUNNING, KILLED or FAILED seed is a failure, and "
    "so is a seed a capacity sweep did not run because it failed at a shorter length); longest solved is the "
    "largest tested x such that every tested x up to it is solved (null: none)"
)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def x_name(x_key: str) -> str:
    return "T" if x_key == X_DEFAULT else x_key.rsplit(".", 1)[-1]


def longest_text(line: Line) -> str:
    """The headline number of a line, with the solved lengths above its first failure and incompleteness."""
    longest = line.longest_solved
    text = fmt_x(longest) if longest is not None else "none"
    failure = line.first_failure
    above = line.solved_above_failure
    if failure is not None and above:
        text += f"; solved at {', '.join(fmt_x(x) for x in above)} above a failure at {fmt_x(failure.x)}"
    if not line.complete:
        text += " (incomplete)"
    return text


def _entry(point: Point) -> str:
    """``0.995 (2/3)``, bold when solved; diverged seeds and the seeds without a finished run are listed."""
    if point.not_run_count == point.planned:
        return "not run (above a failure)"
    extra = (f", {point.diverged} diverged" if point.diverged else "") + (
        f", {point.not_run_count} not run" if point.not_run_count else "") + (
        f", incomplete: {point.incomplete_text}" if not point.complete else "")
    text = f"{_fmt(point.median)} ({point.successes}/{point.planned}{extra})"
    return f"**{text}**" if point.solved else text


def markdown(panels: Sequence[Panel], metric: str, thresholds: Sequence[float], source: str, x_key: str,
             notes: Sequence[str] = ()) -> str:
    name = x_name(x_key)
    shown = ", ".join(f"{t:g}" for t in thresholds) or "-"
    lines = [
        "# rnnbench report",
        "",
        f"Source: {source}. Metric: `{metric}`; threshold: {shown}; x axis: `{x_key}`. Rule: {SUCCESS_RULE}. "
        "Each entry shows the "
        "median over the finished seeds and successful seeds / planned seeds, **bold** where solved; *incomplete* "
        "lists the planned seeds without a finished run; *not run* counts the seeds a capacity sweep skipped above "
        "a failure. The capacity table is in [capacity.md](capacity.md).",
        "",
        *(f"- {note}" for note in notes),
        *([""] if notes else []),
        "![accuracy against dependency length](accuracy.png)",
        "",
    ]
    for panel in panels:
        xs = panel.xs
        lines += [f"## {panel.title}", "",
                  "| line | longest solved | " + " | ".join(f"{name}={fmt_x(x)}" for x in xs) + " |",
                  "|---|---|" + "---|" * len(xs)]
        for line in panel.lines:
            by_x = {p.x: p for p in line.points}
            entries = ["" if (p := by_x.get(x)) is None else _entry(p) for x in xs]
            lines.append(f"| {line.label} | {longest_text(line)} | " + " | ".join(entries) + " |")
        baselines = [p.baseline for line in panel.lines for p in line.points if p.baseline is not None]
        if baselines:
            lines += ["", f"Memoryless baseline (chance): {_fmt(statistics.median(baselines))}."]
        lines.append("")
    lines += ["![training loss at the longest length](loss_curves.png)", ""]
    return "\n".join(lines)


def csv_rows(panels: Sequence[Panel]) -> list[dict[str, Any]]:
    rows = []
    for panel in panels:
        for line in panel.lines:
            for p in line.points:
                rows.append({
                    "task": panel.task,
                    "cell": line.cell,
                    "line": line.label,
                    "distinguishing": " ".join(f"{k}={v}" for k, v in line.distinguishing.items()),
                    "x": fmt_x(p.x),
                    "dependency_length": p.dependency_length,
                    "seeds": p.planned,
                    "succeeded": p.successes,
                    "finished": len(p.finished),
                    "diverged": p.diverged,
                    "statuses": " ".join(f"{s}:{n}" for s, n in p.statuses.items()),
                    "complete": p.complete,
                    "not_run": p.not_run_count,
                    "success": p.success_text,
                    "solved": p.solved,
                    "median": p.median,
                    "min": p.low,
                    "max": p.high,
                    "baseline": p.baseline,
                    "group_key": p.group_key,
                    "run_ids": " ".join(r.run_id for r in p.records),
                })
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["task"])
        writer.writeheader()
        writer.writerows(rows)


def _json_x(x: float | None) -> float | int | None:
    return None if x is None else int(x) if float(x).is_integer() else x


def line_summary(panel: Panel, line: Line, metric_name: str) -> dict[str, Any]:
    failure = line.first_failure
    return {
        "task": panel.task,
        "cell": line.cell,
        "label": line.label,
        "metric_name": metric_name,
        "distinguishing": line.distinguishing,
        "settings": line.settings,
        "lengths": [_json_x(x) for x in line.xs],
        "longest_solved": _json_x(line.longest_solved),
        "first_failure": None if failure is None else _json_x(failure.x),
        "solved_above_failure": [_json_x(x) for x in line.solved_above_failure],
        "complete": line.complete,
        "success_rate": line.success_rate,
        "points": {
            fmt_x(p.x): {
                "x": _json_x(p.x),
                "dependency_length": p.dependency_length,
                "successes": p.successes,
                "planned": p.planned,
                "solved": p.solved,
                "complete": p.complete,
                "statuses": p.statuses,
                "diverged": p.diverged,
                "not_run": p.not_run_count,
                "threshold": p.threshold,
                "median": p.median,
                "group_key": p.group_key,
                "seeds": {str(seed): (({"status": "NOT_RUN", "reason": p.not_run[seed]} if seed in p.not_run else None)
                                      if r is None else {"run_id": r.run_id, "status": r.status, "value": r.value,
                                                         "diverged": r.diverged})
                          for seed, r in p.seeds.items()},
            }
            for p in line.points
        },
    }


def headline(panels: Sequence[Panel]) -> str:
    """A short Markdown table: longest length solved per line."""
    rows = ["| task | line | longest solved |", "|---|---|---|"]
    for panel in panels:
        for line in panel.lines:
            rows.append(f"| {panel.title.split(',')[0]} | {line.label} | {longest_text(line)} |")
    return "\n".join(rows)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
