"""The length-generalisation section of the report: each configuration's final metric against the test length.

Written when a counted run logged its metric at test lengths (``task.test_lengths``: ``final/<metric>_at_L``,
:mod:`rnnbench.lengths`); nothing otherwise.

- A **curve** is one point of the main report (a configuration and its planned seeds: the report's selection
  and run rules, :mod:`rnnbench.report_compute`) that has test lengths. A length-generalisation sweep trains
  each cell at one length, so a line has one curve; a line trained at several lengths has one per length,
  labelled with it.
- At each test length L: the median over the FINISHED seeds that logged ``<metric>_at_L``, their min and max, and
  how many they are of the planned seeds; the memoryless baseline there (``baseline/<metric>_at_L``).
- The **trained range**: every length up to ``task.train_length``, or ``task.dependency_length`` alone.
- **Mean beyond training**: the mean of the medians at the test lengths above the trained range (Delétang et
  al. 2023 score a model by its accuracy averaged over the test lengths beyond training).

Writes ``generalisation.md``, ``generalisation.csv`` and ``generalisation.png`` (one panel per task); the numbers
go to ``summary.json`` under ``generalisation``.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnbench.report_points import Line, Panel, Point

GENERALISATION_FILES = ("generalisation.md", "generalisation.csv", "generalisation.png")


def at_pattern(metric: str) -> re.Pattern[str]:
    return re.compile(re.escape(metric) + r"_at_(\d+)$")


def baseline_name(metric: str, length: int) -> str:
    return f"baseline/{metric.split('/', 1)[-1]}_at_{length}"


@dataclass
class Curve:
    """One configuration's metric against the test length."""

    panel: Panel
    line: Line
    point: Point
    trained: int
    """The longest training length."""
    trained_text: str
    values: dict[int, list[float]]
    """Test length -> the finished seeds' values, in seed order."""
    baselines: dict[int, float] = field(default_factory=dict)
    label: str = ""

    @property
    def lengths(self) -> list[int]:
        return sorted(self.values)

    def median(self, length: int) -> float | None:
        values = self.values.get(length) or []
        return statistics.median(values) if values else None

    def low(self, length: int) -> float | None:
        values = self.values.get(length) or []
        return min(values) if values else None

    def high(self, length: int) -> float | None:
        values = self.values.get(length) or []
        return max(values) if values else None

    @property
    def beyond(self) -> float | None:
        """The mean of the medians at the test lengths above the trained range (None: none above it)."""
        medians = [m for length in self.lengths if length > self.trained and (m := self.median(length)) is not None]
        return sum(medians) / len(medians) if medians else None


def _trained(point: Point) -> tuple[int, str]:
    params = next((r.params for r in point.records), {})
    text = params.get("task.train_length", "null")
    if text not in ("null", "None", "") and text.isdigit():
        return int(text), f"lengths up to {text}"
    return point.dependency_length, f"length {point.dependency_length}"


def curves(panels: Sequence[Panel], metrics: Mapping[str, Mapping[str, float]], metric: str) -> list[Curve]:
    """The curves of ``panels`` whose runs logged ``metric`` at test lengths; ``metrics``: run id -> metrics."""
    pattern = at_pattern(metric)
    out: list[Curve] = []
    for panel in panels:
        for line in panel.lines:
            mine: list[Curve] = []
            for point in line.points:
                values: dict[int, list[float]] = {}
                baselines: dict[int, list[float]] = {}
                for record in point.finished:
                    run = metrics.get(record.run_id, {})
                    for key, value in run.items():
                        found = pattern.match(key)
                        if found:
                            values.setdefault(int(found.group(1)), []).append(float(value))
                    for length in values:
                        base = run.get(baseline_name(metric, length))
                        if base is not None:
                            baselines.setdefault(length, []).append(float(base))
                if not values:
                    continue
                trained, text = _trained(point)
                mine.append(Curve(panel, line, point, trained, text, values,
                                  {n: statistics.median(b) for n, b in baselines.items()}))
            for curve in mine:
                curve.label = line.label + (f" (trained on {curve.trained_text})" if len(mine) > 1 else "")
            out += mine
    return out


def panels_of(found: Sequence[Curve]) -> list[Panel]:
    """The panels of ``found``, in order, each once."""
    out: list[Panel] = []
    for c in found:
        if not any(p is c.panel for p in out):
            out.append(c.panel)
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _entry(curve: Curve, length: int) -> str:
    median = curve.median(length)
    if median is None:
        return ""
    n = len(curve.values[length])
    spread = "" if n == 1 else f"{_fmt(curve.low(length))}-{_fmt(curve.high(length))}, "
    text = f"{_fmt(median)} ({spread}{n}/{curve.point.planned})"
    return f"**{text}**" if median >= curve.point.threshold else text


def markdown(found: Sequence[Curve], metric: str, source: str) -> str:
    lines = [
        "# Length generalisation",
        "",
        f"Source: {source}. Metric: `{metric}` at each test length L (`{metric}_at_L`: the final evaluation of the "
        "trained model on the task built at L). Each entry: the median over the finished seeds, their min-max, and "
        "the seeds that logged it / the planned seeds, **bold** where the median reaches the success threshold. "
        "*Mean beyond training*: the mean of the medians at the test lengths above the trained range.",
        "",
        f"![{metric} against test length](generalisation.png)",
        "",
    ]
    for panel in panels_of(found):
        mine = [c for c in found if c.panel is panel]
        lengths = sorted({n for c in mine for n in c.lengths})
        lines += [f"## {panel.title}", "",
                  "| line | trained on | " + " | ".join(f"L={n}" for n in lengths) + " | mean beyond training |",
                  "|---|---|" + "---|" * len(lengths) + "---|"]
        for c in mine:
            lines.append(f"| {c.label} | {c.trained_text} | " + " | ".join(_entry(c, n) for n in lengths)
                         + f" | {_fmt(c.beyond)} |")
        chance = [statistics.median([c.baselines[n] for c in mine if n in c.baselines]) if any(
            n in c.baselines for c in mine) else None for n in lengths]
        if any(v is not None for v in chance):
            lines.append("| chance (memoryless baseline) | | " + " | ".join(_fmt(v) for v in chance) + " | |")
        lines.append("")
    return "\n".join(lines)


def csv_rows(found: Sequence[Curve]) -> list[dict[str, Any]]:
    rows = []
    for c in found:
        for length in c.lengths:
            rows.append({
                "task": c.panel.task, "line": c.label, "cell": c.line.cell, "trained_length": c.trained,
                "trained_on": c.trained_text, "test_length": length, "median": c.median(length),
                "min": c.low(length), "max": c.high(length), "seeds": len(c.values[length]),
                "planned": c.point.planned, "baseline": c.baselines.get(length),
                "run_ids": " ".join(r.run_id for r in c.point.finished),
            })
    return rows


def summary(found: Sequence[Curve], metric: str) -> dict[str, Any]:
    return {
        "metric": metric,
        "curves": [{
            "task": c.panel.task, "label": c.label, "cell": c.line.cell, "group_key": c.point.group_key,
            "trained_length": c.trained, "trained_on": c.trained_text, "lengths": c.lengths,
            "mean_beyond_training": c.beyond,
            "points": {str(n): {"median": c.median(n), "min": c.low(n), "max": c.high(n), "seeds": len(c.values[n]),
                                "planned": c.point.planned, "baseline": c.baselines.get(n)} for n in c.lengths},
        } for c in found],
    }


def generalisation_headline(data: Mapping[str, Any]) -> str:
    """A short Markdown table from ``summary(...)``: each curve's median at each test length."""
    lengths = sorted({int(n) for c in data["curves"] for n in c["lengths"]})
    rows = ["| task | line | trained on | " + " | ".join(f"L={n}" for n in lengths) + " |",
            "|---|---|---|" + "---|" * len(lengths)]
    for c in data["curves"]:
        cells = [_fmt(c["points"][str(n)]["median"]) if str(n) in c["points"] else "" for n in lengths]
        rows.append(f"| {c['task']} | {c['label']} | {c['trained_on']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_generalisation(panels: Sequence[Panel], metrics: Mapping[str, Mapping[str, float]], metric: str,
                         out_dir: Path, source: str) -> tuple[dict[str, Any] | None, dict[str, Path]]:
    """Write the section's files into ``out_dir`` when some run has test lengths; returns (summary, files), or
    (None, {}) when none has."""
    from rnnbench import report_write as write
    from rnnbench.report_draw import _pyplot, generalisation_figure

    found = curves(panels, metrics, metric)
    if not found:
        return None, {}
    files = {name: out_dir / name for name in GENERALISATION_FILES}
    files["generalisation.md"].write_text(markdown(found, metric, source))
    write.write_csv(files["generalisation.csv"], csv_rows(found))
    fig = generalisation_figure(found, metric)
    fig.savefig(files["generalisation.png"], dpi=110)
    _pyplot().close(fig)
    return summary(found, metric), files
