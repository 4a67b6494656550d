"""The capacity table: per cell and task, how long a dependency each seed bridges, at the best learning rate.

- A seed's **capacity** on a line (a cell's configurations that differ only in the dependency length) is the
  longest length it succeeded at contiguously from the line's shortest length, by the report's success rule
  (:func:`rnnbench.report_points.succeeded`); None ("< first length") when the shortest failed. A seed whose
  climb ended at a run that is missing or unfinished has a lower bound only: its line is *incomplete*.
- A **row** is a cell's lines on one task that differ only in ``optim.lr``: the learning rate is a tuning axis.
  Per learning rate, the capacity over seeds is summarised by its median (the lower middle value for an even
  count, so always a tested length; None counts as below every length), min and max. The **best learning
  rate** has the highest median capacity; ties go to the higher minimum over seeds, then to the smaller learning
  rate. **Robustness** at length T: the fraction of the learning rates whose median capacity reaches T.
- **What the ladder saved**: the runs a capacity sweep did not launch (above a failure) against the full grid,
  in runs and CPU-seconds: measured for the runs that ran (wall time x torch threads); estimated for those not
  run from the row's measured full-budget runs (a run above its seed's failure fails, so it never stops early),
  each with its training time rescaled to the skipped length by the per-step time a + b T fitted to the row's
  ``time/steps_per_second``.

Writes ``capacity.md``, ``capacity.csv`` and ``capacity.png`` (:func:`write_capacity`); the numbers go to the
report's ``summary.json`` under ``capacity``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnbench.report_points import NOT_RUN, Line, Panel, succeeded

CAPACITY_FILES = ("capacity.md", "capacity.csv", "capacity.png")
LR_KEY = "optim.lr"
METHOD = ("run: wall time x torch threads of every run that ran (a seed-parallel job's shared equally by its "
          "members); not run: a run above its seed's failure would "
          "fail, so it would use its full step budget: the median over the row's measured full-budget (not solved, "
          "not diverged) runs of their CPU-seconds, each with its training time (trainer.steps / "
          "time/steps_per_second) rescaled from its length to the skipped one by the per-step time a + b T fitted "
          "(least squares) to the row's measured time/steps_per_second, start-up and evaluations kept as measured")
RULE = ("capacity of a seed: the longest dependency length it succeeded at contiguously from the shortest tested "
        "length (null: the shortest failed); per learning rate the median over seeds (the lower middle value for "
        "an even count), min and max; best learning rate: the highest median capacity, ties to the higher minimum, "
        "then to the smaller learning rate; robustness at T: the fraction of learning rates whose median reaches T (null while an incomplete "
        "learning rate's median, a lower bound, is below T)")


def seed_capacity(line: Line, seed: int) -> tuple[int | None, bool]:
    """(capacity, complete): the seed's contiguous capacity on ``line``; complete is False when its climb ended
    at a missing or unfinished run (the capacity is then a lower bound)."""
    capacity = None
    for point in sorted(line.points, key=lambda p: p.dependency_length):
        if succeeded(point.seeds.get(seed), point.threshold):
            capacity = point.dependency_length
            continue
        return capacity, seed in point.seeds and point.status_of(seed) in ("FINISHED", NOT_RUN)
    return capacity, True


def _median(values: Sequence[int | None]) -> int | None:
    return (statistics.median_low([v or 0 for v in values]) or None) if values else None


def _rank(value: int | None) -> int:
    return value or 0


@dataclass
class Option:
    """One learning rate of a row: its line and the seeds' capacities."""

    line: Line
    lr: float | None
    capacities: dict[int, int | None]
    complete: bool

    @property
    def median(self) -> int | None:
        return _median(list(self.capacities.values()))

    @property
    def low(self) -> int | None:
        return min(self.capacities.values(), key=_rank) if self.capacities else None

    @property
    def high(self) -> int | None:
        return max(self.capacities.values(), key=_rank) if self.capacities else None

    def key(self) -> tuple[int, int, float]:
        return _rank(self.median), _rank(self.low), -(self.lr or 0.0)


@dataclass
class Row:
    """A cell's lines on one task that differ only in the learning rate."""

    panel: Panel
    cell: str
    label: str
    options: list[Option]

    @property
    def best(self) -> Option:
        return max(self.options, key=Option.key)

    @property
    def lengths(self) -> list[int]:
        return sorted({p.dependency_length for o in self.options for p in o.line.points})

    @property
    def robustness(self) -> dict[int, float | None]:
        """The fraction of learning rates whose median capacity reaches T; None (not known yet) where an
        incomplete learning rate's median, a lower bound, is below T."""
        return {t: None if any(not o.complete and _rank(o.median) < t for o in self.options)
                else sum(_rank(o.median) >= t for o in self.options) / len(self.options) for t in self.lengths}

    @property
    def parameters(self) -> str:
        counts = sorted({int(r.params["model.num_parameters"]) for p in self.best.line.points for r in p.records
                         if str(r.params.get("model.num_parameters", "")).isdigit()})
        return "-" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"

    @property
    def complete(self) -> bool:
        return all(o.complete for o in self.options)


def _lr(line: Line) -> float | None:
    try:
        return float(line.settings[LR_KEY])
    except (KeyError, ValueError):
        return None


def capacity_rows(panels: Sequence[Panel]) -> list[Row]:
    """One row per cell and task (and per other setting that differs between the cell's lines there)."""
    rows: list[Row] = []
    for panel in panels:
        families: dict[tuple[Any, ...], list[Line]] = {}
        for line in panel.lines:
            key = (line.cell, tuple(sorted((k, v) for k, v in line.settings.items() if k != LR_KEY)))
            families.setdefault(key, []).append(line)
        by_cell: dict[str, list[tuple[Any, ...]]] = {}
        for key in families:
            by_cell.setdefault(key[0], []).append(key)
        for cell, keys in by_cell.items():
            differing = sorted({k for key in keys for k, _ in key[1]
                                if len({dict(other[1]).get(k) for other in keys}) > 1})
            for key in keys:
                settings = dict(key[1])
                shown = ", ".join(f"{k}={settings.get(k, '-')}" for k in differing)
                label = cell + (f" ({shown})" if differing else "")
                options = []
                for line in sorted(families[key], key=lambda ln: _lr(ln) or 0.0):
                    seeds = sorted({s for p in line.points for s in p.seeds})
                    found = {s: seed_capacity(line, s) for s in seeds}
                    options.append(Option(line, _lr(line), {s: c for s, (c, _) in found.items()},
                                          all(ok for _, ok in found.values())))
                rows.append(Row(panel, cell, label, options))
    return sorted(rows, key=lambda r: (r.panel.task, r.label))


def capacity_text(option: Option, lengths: Sequence[int], short: bool = False) -> str:
    """``200 [100-400]``; ``< 25`` when below the first length; ``>= 1600`` at the top of the ladder."""
    def one(value: int | None) -> str:
        if value is None:
            return f"< {lengths[0]}" if lengths else "none"
        return f">= {value}" if lengths and value >= lengths[-1] else str(value)

    text = one(option.median)
    if not short and (option.low, option.high) != (option.median, option.median):
        text += f" [{one(option.low).replace('>= ', '')}-{one(option.high).replace('>= ', '')}]"
    return text


def _entry(row: Row) -> str:
    best = row.best
    text = f"**{capacity_text(best, row.lengths)}**"
    if best.lr is not None:
        text += f" at lr {best.lr:g}"
    text += f", {row.parameters} params"
    return text + ("" if row.complete else " (incomplete)")


# --- what the ladder saved ---------------------------------------------------------------------------------


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares a + b T through (T, seconds per step); proportional through one length."""
    ts = {t for t, _ in points}
    if len(ts) < 2:
        t, s = points[0][0], statistics.mean(s for _, s in points)
        return 0.0, s / t
    mt, ms = statistics.mean(t for t, _ in points), statistics.mean(s for _, s in points)
    b = sum((t - mt) * (s - ms) for t, s in points) / sum((t - mt) ** 2 for t, _ in points)
    if b <= 0:
        return ms, 0.0
    return ms - b * mt, b


def _cpu(record: Any) -> float:
    """A run's CPU-seconds: wall time x threads, shared equally by the runs trained together in one process."""
    return record.duration_s * record.threads / record.members


def _per_step(record: Any) -> float:
    """Seconds per training step of one run (a seed-parallel job's step shared by its members)."""
    return 1.0 / (record.steps_per_second * record.members)


def _rescaled(record: Any, ratio: float) -> float:
    """CPU-seconds of a full-budget run with its training time scaled by ``ratio`` (start-up and evaluations
    kept as measured)."""
    training = int(record.params["trainer.steps"]) * _per_step(record) * record.threads
    return max(_cpu(record) - training, 0.0) + training * ratio


def ladder_savings(rows: Sequence[Row]) -> dict[str, Any]:
    """Runs and CPU-seconds run, and not run above a failure (estimated), over the rows' planned seeds."""
    run_n = skipped_n = unestimated = 0
    run_cpu = skipped_cpu = 0.0
    for row in rows:
        records = [r for o in row.options for p in o.line.points for r in p.records if r.duration_s is not None]
        run_n += len(records)
        run_cpu += sum(_cpu(r) for r in records)
        timed = [(float(r.dependency_length), _per_step(r)) for r in records if r.steps_per_second]
        a, b = _fit(timed) if timed else (0.0, 0.0)

        def per_step(t: float) -> float:
            return a + b * t

        # a run not launched would have failed: the measured full-budget runs, rescaled to its length
        full = [r for r in records if r.status == "FINISHED" and r.outcome not in ("solved", "diverged")
                and r.steps_per_second and str(r.params.get("trainer.steps", "")).isdigit()]
        for option in row.options:
            for point in option.line.points:
                skipped = point.not_run_count
                skipped_n += skipped
                if not skipped:
                    continue
                if not full or per_step(float(point.dependency_length)) <= 0:
                    unestimated += skipped
                    continue
                target = per_step(float(point.dependency_length))
                skipped_cpu += skipped * statistics.median(_rescaled(r, target / per_step(float(r.dependency_length)))
                                                           for r in full)
    grid_cpu = run_cpu + skipped_cpu
    return {
        "runs": {"run": run_n, "not_run": skipped_n, "grid": run_n + skipped_n,
                 "saved_fraction": round(skipped_n / (run_n + skipped_n), 4) if run_n + skipped_n else None},
        "cpu_seconds": {"run": round(run_cpu, 1), "not_run_estimated": round(skipped_cpu, 1),
                        "grid_estimated": round(grid_cpu, 1),
                        "saved_fraction": round(skipped_cpu / grid_cpu, 4) if grid_cpu else None},
        "not_estimated": unestimated,
        "method": METHOD,
    }


# --- outputs -------------------------------------------------------------------------------------------------


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def capacity_summary(rows: Sequence[Row]) -> dict[str, Any]:
    def option_json(o: Option) -> dict[str, Any]:
        return {"lr": o.lr, "median": o.median, "min": o.low, "max": o.high, "complete": o.complete,
                "seeds": {str(s): c for s, c in sorted(o.capacities.items())}}

    return {
        "rule": RULE,
        "rows": [{"task": r.panel.task, "cell": r.cell, "label": r.label, "lengths": r.lengths,
                  "num_parameters": r.parameters, "complete": r.complete, "best_lr": r.best.lr,
                  "capacity": option_json(r.best), "by_lr": [option_json(o) for o in r.options],
                  "robustness": {str(t): _round(f) for t, f in r.robustness.items()}} for r in rows],
        "ladder": ladder_savings(rows),
    }


def capacity_markdown(rows: Sequence[Row], summary: dict[str, Any], source: str) -> str:
    tasks = sorted({r.panel.task for r in rows})
    labels = sorted({r.label for r in rows})
    cell = {(r.label, r.panel.task): r for r in rows}
    out = ["# Memory capacity", "", f"Source: {source}. Rule: {RULE}.", "",
           "Each entry: the median capacity over seeds [min-max over seeds] at the best learning rate, and the "
           "parameter count. `< T`: the shortest length T failed; `>= T`: the longest length tested was reached.",
           "", "| cell | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for label in labels:
        out.append(f"| {label} | " + " | ".join(_entry(cell[(label, t)]) if (label, t) in cell else "-"
                                                  for t in tasks) + " |")
    out += ["", "![capacity per cell and task](capacity.png)", "",
            "## Learning-rate robustness", "",
            "The fraction of the learning rates whose median capacity reaches each length (`?`: not known yet, an "
            "incomplete learning rate has not been run that far); per learning rate, the median capacity [min-max] "
            "over seeds.", ""]
    for task in tasks:
        mine = [r for r in rows if r.panel.task == task]
        lengths = sorted({t for r in mine for t in r.lengths})
        out += [f"### {mine[0].panel.title}", "",
                "| cell | best lr | per lr | " + " | ".join(f"T={t}" for t in lengths) + " |",
                "|---|---|---|" + "---|" * len(lengths)]
        for r in mine:
            per = "; ".join(f"{o.lr:g}: {capacity_text(o, r.lengths)}" if o.lr is not None
                            else capacity_text(o, r.lengths) for o in r.options)
            rob = r.robustness
            out.append(f"| {r.label} | {'-' if r.best.lr is None else f'{r.best.lr:g}'} | {per} | "
                       + " | ".join("" if t not in rob else "?" if rob[t] is None else f"{rob[t]:.2g}" for t in lengths)
                       + " |")
        out.append("")
    saved = summary["ladder"]
    runs, cpu = saved["runs"], saved["cpu_seconds"]
    if runs["not_run"]:
        out += ["## What the ladder saved", "",
                f"Runs: {runs['run']} run, {runs['not_run']} not run (above a failure) of a full grid of "
                f"{runs['grid']} ({100 * runs['saved_fraction']:.0f} % saved). CPU-seconds: {cpu['run']:.0f} run, "
                f"{cpu['not_run_estimated']:.0f} estimated for the runs not run "
                f"({100 * (cpu['saved_fraction'] or 0):.0f} % of the full grid's {cpu['grid_estimated']:.0f}). "
                f"Estimate: {saved['method']}.", ""]
    return "\n".join(out)


def capacity_csv_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [{"task": r.panel.task, "cell": r.cell, "label": r.label, "capacity_median": r.best.median,
             "capacity_min": r.best.low, "capacity_max": r.best.high, "capacity": capacity_text(r.best, r.lengths),
             "best_lr": r.best.lr, "num_parameters": r.parameters, "first_length": r.lengths[0] if r.lengths else None,
             "longest_length": r.lengths[-1] if r.lengths else None, "complete": r.complete,
             "learning_rates": " ".join(f"{o.lr:g}" for o in r.options if o.lr is not None),
             "seed_capacities": json.dumps({str(s): c for s, c in sorted(r.best.capacities.items())}),
             "median_by_lr": json.dumps({f"{o.lr:g}" if o.lr is not None else "-": o.median for o in r.options}),
             "robustness": json.dumps({str(t): _round(f) for t, f in r.robustness.items()})} for r in rows]


def write_capacity(panels: Sequence[Panel], out_dir: Path, source: str) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write capacity.md, capacity.csv and capacity.png into ``out_dir``; returns (summary, files)."""
    from rnnbench import report_write as write
    from rnnbench.report_draw import _pyplot, capacity_figure

    rows = capacity_rows(panels)
    summary = capacity_summary(rows)
    files = {name: out_dir / name for name in CAPACITY_FILES}
    files["capacity.md"].write_text(capacity_markdown(rows, summary, source))
    write.write_csv(files["capacity.csv"], capacity_csv_rows(rows))
    fig = capacity_figure(rows)  # report_draw
    fig.savefig(files["capacity.png"], dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return summary, files
