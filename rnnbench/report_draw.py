"""Figures of the report (matplotlib, Agg backend): accuracy against the x axis, training loss curves, and the
capacity per cell and task."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from rnnbench.report_points import Panel, fmt_x


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = 1 if n == 1 else 2
    return (n + cols - 1) // cols, cols


def accuracy_figure(panels: Sequence[Panel], metric: str, thresholds: float | Sequence[float], x_label: str) -> Any:
    """Median final metric over the finished seeds against x (log axis), min-max shaded; solved points filled,
    unsolved ones hollow, incomplete ones ringed in grey; the chance line and the success threshold."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    thresholds = [thresholds] if isinstance(thresholds, (int, float)) else list(thresholds)

    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        ringed = False
        for i, line in enumerate(panel.lines):
            color = colors[i % len(colors)]
            longest = line.longest_solved
            label = f"{line.label}: longest solved {fmt_x(longest) if longest is not None else 'none'}"
            pts = [p for p in line.points if p.median is not None]
            if pts:
                xs = [p.x for p in pts]
                ax.plot(xs, [p.median for p in pts], color=color, label=label)
                ax.fill_between(xs, [p.low for p in pts], [p.high for p in pts], color=color, alpha=0.15)
                ax.scatter([p.x for p in pts if p.solved], [p.median for p in pts if p.solved], color=color,
                           zorder=3)
                ax.scatter([p.x for p in pts if not p.solved], [p.median for p in pts if not p.solved],
                           facecolors="white", edgecolors=color, zorder=3)
            else:
                ax.plot([], [], color=color, label=label)
            bad = [p for p in line.points if p.diverged]
            if bad:
                ax.scatter([p.x for p in bad], [0.0] * len(bad), marker="x", color=color, s=60, zorder=3,
                           label=f"{line.label}: diverged seeds")
            gaps = [p for p in line.points if not p.complete]
            if gaps:
                ax.scatter([p.x for p in gaps], [p.median if p.median is not None else 0.0 for p in gaps], s=160,
                           facecolors="none", edgecolors="grey", linewidths=1.5, zorder=2,
                           label=None if ringed else "incomplete (seeds missing or unfinished)")
                ringed = True
        xs = panel.xs
        base = []
        for x in xs:
            values = [p.baseline for line in panel.lines for p in line.points if p.x == x and p.baseline is not None]
            if values:
                base.append((x, statistics.median(values)))
        if base:
            ax.plot([x for x, _ in base], [v for _, v in base], linestyle="--", color="black", linewidth=1,
                    label="chance (memoryless baseline)")
        for threshold in sorted({p.threshold for line in panel.lines for p in line.points} or set(thresholds)):
            ax.axhline(threshold, linestyle=":", color="grey", linewidth=1, label=f"success threshold {threshold:g}")
        if xs and min(xs) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        if xs:
            ax.set_xticks(xs)
            ax.set_xticklabels([fmt_x(x) for x in xs])
        if len(xs) == 1 and xs[0] > 0:
            ax.set_xlim(xs[0] / 1.5, xs[0] * 1.5)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(f"{x_label} (log scale)" if xs and min(xs) > 0 else x_label)
        ax.set_ylabel(f"{metric} (median of finished seeds, min-max shaded)")
        ax.set_title(panel.title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def loss_figure(panels: Sequence[Panel], histories: dict[str, list[tuple[int, float]]]) -> Any:
    """train/loss of every seed of each line at the longest x that line has runs at."""
    plt = _pyplot()
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        drawn = False
        for i, line in enumerate(panel.lines):
            with_runs = [p for p in line.points if p.records]
            if not with_runs:
                continue
            point = with_runs[-1]
            for j, record in enumerate(point.records):
                points = histories.get(record.run_id, [])
                if not points:
                    continue
                ax.plot([s for s, _ in points], [v for _, v in points], color=colors[i % len(colors)],
                        alpha=0.8, linewidth=1, label=f"{line.label} (x={fmt_x(point.x)})" if j == 0 else None)
                drawn = True
        ax.set_yscale("log" if drawn else "linear")
        ax.set_xlabel("training step")
        ax.set_ylabel("train/loss")
        ax.set_title(f"{panel.title}\ntrain/loss of each seed at each line's longest x", fontsize="medium")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def loss_histories(client: Any, panels: Sequence[Panel], key: str = "train/loss") -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for panel in panels:
        for line in panel.lines:
            with_runs = [p for p in line.points if p.records]
            for record in with_runs[-1].records if with_runs else []:
                history = client.get_metric_history(record.run_id, key)
                out[record.run_id] = sorted((m.step, m.value) for m in history if math.isfinite(m.value))
    return out


def capacity_figure(rows: Sequence[Any]) -> Any:
    """Per task, each row's (``report_capacity.Row``) capacity on a log length axis: the seeds (dots), their median (diamond) and min-max
    (bar) at the best learning rate; "< first length" drawn left of the first length with a "<" marker."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    tasks = sorted({r.panel.task for r in rows}) or ["-"]
    n_rows, cols = _grid(len(tasks))
    height = max(2.6, 0.45 * max((sum(r.panel.task == t for r in rows) for t in tasks), default=1) + 1.6)
    fig, axes = plt.subplots(n_rows, cols, figsize=(6.4 * cols, height * n_rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        mine = sorted((r for r in rows if r.panel.task == task), key=lambda r: r.label, reverse=True)
        lengths = sorted({t for r in mine for t in r.lengths})
        if not lengths:
            continue
        below = lengths[0] / 1.7
        for y, row in enumerate(mine):
            best = row.best
            xs = [c if c is not None else below for c in best.capacities.values()]
            jitter = [0.16 + 0.07 * (i % 3) for i in range(len(xs))]  # seeds just above their row's bar
            ax.scatter(xs, [y + j for j in jitter], s=14, color="tab:blue", alpha=0.7, zorder=3)
            lo, hi = best.low or below, best.high or below
            ax.plot([lo, hi], [y, y], color="tab:blue", linewidth=2, alpha=0.5)
            med = best.median
            ax.scatter([med or below], [y], marker="D" if med is not None else "<", s=60, color="tab:red", zorder=4)
        ax.set_yticks(range(len(mine)))
        ax.set_yticklabels([f"{r.label}" + (f"  (lr {r.best.lr:g})" if r.best.lr is not None else "") for r in mine],
                           fontsize="small")
        ax.set_xscale("log")
        ax.set_xticks([below, *lengths])
        ax.set_xticklabels([f"<{lengths[0]}", *map(str, lengths)], fontsize="small")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(below / 1.3, lengths[-1] * 1.3)
        ax.set_ylim(-0.6, len(mine) - 0.2)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_xlabel("capacity: longest dependency length T solved from the shortest (log scale)")
        ax.set_title(mine[0].panel.title if mine else task, fontsize="medium")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle("seeds (dots), median (red), min-max (bar) at the best learning rate", fontsize="small")
    fig.tight_layout()
    return fig


def generalisation_figure(curves: Sequence[Any], metric: str) -> Any:
    """Per task, each curve's (``report_lengths.Curve``) metric against the test length (log axis): the median over
    the finished seeds, min-max shaded; the trained range shaded grey (a dotted line per curve when they differ),
    the memoryless baseline dashed and the success threshold dotted."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from rnnbench.report_lengths import panels_of

    panels = panels_of(curves)
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, panels):
        mine = [c for c in curves if c.panel is panel]
        lengths = sorted({n for c in mine for n in c.lengths})
        trained = sorted({c.trained for c in mine})
        left, right = min(lengths[0], trained[0]) / 1.4, max(lengths[-1], trained[-1]) * 1.25
        if len(trained) == 1:
            ax.axvspan(left, trained[0], color="grey", alpha=0.12, label=f"trained range (up to {trained[0]})")
        for i, curve in enumerate(mine):
            color = colors[i % len(colors)]
            xs = [n for n in curve.lengths if curve.median(n) is not None]
            beyond = curve.beyond
            label = curve.label + (f": mean beyond training {beyond:.3f}" if beyond is not None else "")
            ax.plot(xs, [curve.median(n) for n in xs], marker="o", color=color, label=label)
            ax.fill_between(xs, [curve.low(n) for n in xs], [curve.high(n) for n in xs], color=color, alpha=0.15)
            if len(trained) > 1:
                ax.axvline(curve.trained, linestyle=":", color=color, linewidth=1)
        chance = [(n, statistics.median([c.baselines[n] for c in mine if n in c.baselines]))
                  for n in lengths if any(n in c.baselines for c in mine)]
        if chance:
            ax.plot([n for n, _ in chance], [v for _, v in chance], linestyle="--", color="black", linewidth=1,
                    label="chance (memoryless baseline)")
        for threshold in sorted({c.point.threshold for c in mine}):
            ax.axhline(threshold, linestyle=":", color="grey", linewidth=1, label=f"success threshold {threshold:g}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths])
        ax.set_xlim(left, right)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("test length (log scale)")
        ax.set_ylabel(f"{metric} at the test length\n(median of finished seeds, min-max shaded)")
        ax.set_title(panel.title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
