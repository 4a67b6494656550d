"""Grouping and aggregation of run records (pure: no store, no files).

A **group** is one configuration: every resolved setting but the seed (``rnnbench.identity.group_key``). A
**line** is the groups that differ only in the dependency length (the x axis); a **point** is one group on
its line, with one slot per planned seed. Several lines of one cell on one task are kept apart and labelled
by the settings that differ between them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rnnbench.report_data import RunRecord
from rnnbench.report_plan import Plan
from rnnbench.report_points import Line, Panel, Point

DEFAULT_THRESHOLD = 0.99
X_DEFAULT = "task.dependency_length"


@dataclass
class Selection:
    """Which run counts for each (group, seed): the newest FINISHED one, else the newest of any status."""

    counted: dict[tuple[str, int], RunRecord]
    duplicates: list[RunRecord]
    """Older FINISHED runs of a (group, seed) that has a newer FINISHED run: a configuration run twice."""
    replaced: list[RunRecord]
    """Unfinished runs of a (group, seed) for which another run counts."""


def select(records: Iterable[RunRecord]) -> Selection:
    slots: dict[tuple[str, int], list[RunRecord]] = {}
    for record in sorted(records, key=lambda r: r.start_time, reverse=True):
        slots.setdefault((record.group_key, record.seed), []).append(record)
    counted, duplicates, replaced = {}, [], []
    for slot, runs in slots.items():
        finished = [r for r in runs if r.status == "FINISHED"]
        chosen = finished[0] if finished else runs[0]
        counted[slot] = chosen
        duplicates += finished[1:]
        replaced += [r for r in runs if r.status != "FINISHED" and r is not chosen]
    return Selection(counted, duplicates, replaced)


def _slug(text: str) -> str:
    """A piece of an MLflow metric name (letters, digits, ``_ - . : /`` and spaces)."""
    text = re.sub(r"[^\w.\-:/ ]", "_", text).replace("..", "__")
    return re.sub(r"/+", "/", text).strip("/")


def _line_key(settings: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A line's settings: all but the dependency length, and but ``task.train_length`` where it equals the
    dependency length (a length-generalisation run's default: its lengths sweep together)."""
    length = settings.get(X_DEFAULT)
    return tuple(sorted((k, v) for k, v in settings.items()
                        if k != X_DEFAULT and not (k == "task.train_length" and v == length)))


def threshold_of(settings: dict[str, str], threshold: float | None) -> float:
    """The success threshold of a configuration: ``threshold`` when given, else its ``trainer.solved_threshold``
    (the threshold its runs and a capacity sweep used; 0.99 when the runs do not record it)."""
    if threshold is not None:
        return threshold
    try:
        return float(settings.get("trainer.solved_threshold", DEFAULT_THRESHOLD))
    except ValueError:
        return DEFAULT_THRESHOLD


def aggregate(records: Sequence[RunRecord], plan: Plan | None = None, threshold: float | None = None,
              x_key: str = X_DEFAULT) -> tuple[list[Panel], list[str]]:
    """Panels (one per task) of lines of points, and notes on what was left out or could not be placed.
    ``threshold`` None: each configuration's own ``trainer.solved_threshold`` (:func:`threshold_of`)."""
    plan = plan or Plan()
    selection = select(records)
    notes: list[str] = []
    groups: dict[str, dict[str, Any]] = {}
    for (group, seed), record in selection.counted.items():
        info = groups.setdefault(group, {"settings": record.settings, "task": record.task, "cell": record.cell,
                                         "length": record.dependency_length, "x": None, "seeds": {}})
        info["seeds"][seed] = record
        if info["x"] is None and record.x is not None:
            info["x"] = record.x
    x_of_task = {tuple(sorted((k, v) for k, v in r.settings.items() if k.startswith("task."))): r.x
                 for r in records if r.x is not None}
    unplaced = 0
    for group, seeds in plan.seeds().items():
        if group not in groups:
            settings = plan.groups.get(group)
            if not settings or "task.dependency_length" not in settings:
                unplaced += len(seeds)
                continue
            task_settings = tuple(sorted((k, v) for k, v in settings.items() if k.startswith("task.")))
            groups[group] = {"settings": settings, "task": settings.get("task.name", "?"),
                             "cell": settings.get("cell.name", "?"), "length": int(settings["task.dependency_length"]),
                             "x": x_of_task.get(task_settings), "seeds": {}}
        for seed in seeds:
            groups[group]["seeds"].setdefault(seed, None)
    unplaced += len(plan.unplaced)
    if unplaced:
        notes.append(f"{unplaced} planned run(s) of the sweep have no run and no recorded settings; they could "
                     "not be placed on a line and are not counted.")
    not_run: dict[str, dict[int, str]] = {}
    for (group, seed), why in plan.not_run().items():
        not_run.setdefault(group, {})[seed] = why
    by_line: dict[tuple[Any, ...], list[tuple[str, dict[str, Any]]]] = {}
    for group, info in groups.items():
        if info["x"] is None:
            if x_key == X_DEFAULT:
                info["x"] = float(info["length"])
            else:
                notes.append(f"{info['cell']} on {info['task']} at dependency length {info['length']}: "
                             f"{len(info['seeds'])} planned seed(s) without any run logging {x_key}; not shown.")
                continue
        by_line.setdefault(_line_key(info["settings"]), []).append((group, info))
    lines: list[Line] = []
    for key, members in by_line.items():
        lengths = [info["length"] for _, info in members]
        parts = [members] if len(set(lengths)) == len(lengths) else [[m] for m in members]
        if len(parts) > 1:
            notes.append(f"{len(members)} configurations with identical logged settings but different group keys "
                         f"({members[0][1]['cell']} on {members[0][1]['task']}) are shown as separate lines.")
        for part in parts:
            points = sorted((Point(g, info["length"], info["x"], dict(sorted(info["seeds"].items())),
                                   threshold_of(info["settings"], threshold), not_run.get(g, {}))
                             for g, info in part), key=lambda p: (p.x, p.dependency_length))
            first = part[0][1]
            settings = dict(key)
            if len(parts) > 1:
                settings["group_key"] = part[0][0]
            lines.append(Line(first["task"], first["cell"], settings, points))
    _label(lines)
    panels = []
    for task in sorted({line.task for line in lines}):
        mine = sorted((line for line in lines if line.task == task), key=lambda ln: (ln.cell, ln.label))
        panels.append(Panel(task, mine, _slug(task)))
    return panels, notes


def _label(lines: list[Line]) -> None:
    """Set each line's distinguishing settings: those that differ among the lines of its cell and task."""
    by_cell: dict[tuple[str, str], list[Line]] = {}
    for line in lines:
        by_cell.setdefault((line.task, line.cell), []).append(line)
    for same in by_cell.values():
        if len(same) < 2:
            continue
        keys = sorted({k for line in same for k in line.settings})
        differing = [k for k in keys if len({line.settings.get(k, "-") for line in same}) > 1]
        for line in same:
            line.distinguishing = {k: line.settings.get(k, "-") for k in differing}


def metric_name(panels: Sequence[Panel], panel: Panel, line: Line) -> str:
    """``<cell>``, with ``<task>/`` first when there are several tasks and ``/<key>:<value>`` per distinguishing
    setting when the cell has several lines."""
    name = ("" if len(panels) == 1 else f"{panel.slug}/") + line.cell
    return _slug(name + "".join(f"/{k}:{v}" for k, v in line.distinguishing.items()))


def summary_metrics(panels: Sequence[Panel]) -> dict[str, float]:
    """Metrics for a sweep's parent run: ``longest_solved/<name>`` (absent when no length is solved) and
    ``success_rate/<name>`` (successful seeds over planned seeds at every length, 3 decimals)."""
    out: dict[str, float] = {}
    for panel in panels:
        for line in panel.lines:
            name = metric_name(panels, panel, line)
            if line.longest_solved is not None:
                out[f"longest_solved/{name}"] = float(line.longest_solved)
            if line.success_rate is not None:
                out[f"success_rate/{name}"] = line.success_rate
    return out
