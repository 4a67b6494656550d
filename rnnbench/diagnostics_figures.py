"""Figures of the gradient-flow diagnostics: one run's heatmap and latest curve, and several runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HEATMAP_FILE = "gradient_heatmap.png"
LATEST_FILE = "gradient_latest.png"


def _log10_rows(rows: list[list[float | None]]) -> Any:
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(values)
    out[~np.isfinite(out)] = np.nan
    return out


def draw_run_figures(raw: dict[str, Any], folder: Path, title: str) -> list[Path]:
    """Write ``gradient_heatmap.png`` and ``gradient_latest.png`` of one run's raw numbers into ``folder``."""
    import numpy as np
    from matplotlib.figure import Figure

    steps = raw["steps"]
    rows = raw["grad_norm"]
    length = max(len(r) for r in rows)
    rows = [list(r) + [None] * (length - len(r)) for r in rows]
    logs = _log10_rows(rows)  # (measurements, T)

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    edges = np.array(steps, dtype=float)
    if len(edges) == 1:
        step_edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    else:
        mids = (edges[1:] + edges[:-1]) / 2
        step_edges = np.concatenate([[edges[0] - (mids[0] - edges[0])], mids, [edges[-1] + (edges[-1] - mids[-1])]])
    mesh = ax.pcolormesh(step_edges, np.arange(length + 1) - 0.5, logs.T, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label=r"$\log_{10}\,\|\partial L / \partial h_t\|$")
    ax.set_xlabel("training step")
    ax.set_ylabel("time step t")
    ax.set_title(f"Gradient norm through time: {title}")
    heatmap = folder / HEATMAP_FILE
    fig.savefig(heatmap, dpi=110)

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    t = np.arange(length)
    for index, (step, row) in enumerate(zip(steps, rows)):
        values = np.array([np.nan if v is None or v <= 0 else v for v in row], dtype=float)
        latest = index == len(rows) - 1
        ax.plot(t, values, color="C0" if latest else "0.6", alpha=1.0 if latest else 0.25 + 0.5 * index / len(rows),
                linewidth=2.0 if latest else 0.8, label=f"step {step}" if latest else None)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
    ax.set_title(f"Gradient norm through time at step {steps[-1]}: {title}")
    ax.legend(loc="best")
    ax.grid(True, which="major", alpha=0.3)
    latest_path = folder / LATEST_FILE
    fig.savefig(latest_path, dpi=110)
    return [heatmap, latest_path]


def gradient_flow_figure(runs: list[dict[str, Any]], normalize: bool = True) -> Figure:
    """Gradient-through-time curves of several runs: one panel per cell, side by side, one curve per length.

    Each element of ``runs`` is a run's raw numbers, as written to ``diagnostics/gradient_flow.json`` and
    returned by :func:`load_run_arrays`. Keys used:

    - ``grad_norm``: list of rows, one per measurement (training step), each ``[||g_0||, ..., ||g_{T-1}||]``
      (``null`` where non-finite); the last row (the latest measurement) is drawn. A flat list is one row.
    - ``cell`` (panel), ``dependency_length`` (curve colour and label), optional ``task``, ``steps`` (the
      training step of each row) and ``label`` (overrides the curve's label).

    The x-axis is the number of steps before the output step (``T - 1 - t``), so curves of different lengths
    line up; with ``normalize`` the y-axis is ``||g_t|| / ||g_{T-1}||`` (log scale), else ``||g_t||``.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    cells: list[str] = []
    for run in runs:
        name = str(run.get("cell") or "?")
        if name not in cells:
            cells.append(name)
    lengths = sorted({int(r["dependency_length"]) for r in runs if r.get("dependency_length") is not None})
    cmap = colormaps["viridis"]
    colour = {n: cmap(0.85 * i / max(1, len(lengths) - 1)) for i, n in enumerate(lengths)}
    width = max(1, len(cells))
    fig = Figure(figsize=(3.6 * width + 0.6, 4.2), layout="constrained")
    axes = fig.subplots(1, width, sharey=True, squeeze=False)[0]
    tasks = sorted({str(r["task"]) for r in runs if r.get("task")})
    for ax, cell in zip(axes, cells):
        mine = [r for r in runs if str(r.get("cell") or "?") == cell]
        mine.sort(key=lambda r: (r.get("dependency_length") or 0))
        for run in mine:
            rows = run.get("grad_norm") or []
            if rows and not isinstance(rows[0], (list, tuple)):
                rows = [rows]
            if not rows:
                continue
            row = np.array([np.nan if v is None else float(v) for v in rows[-1]], dtype=float)
            if normalize:
                end = row[-1]
                row = row / end if np.isfinite(end) and end > 0 else np.full_like(row, np.nan)
            row[~(row > 0)] = np.nan
            lag = np.arange(len(row))[::-1]
            n = run.get("dependency_length")
            label = run.get("label") or (f"T={n}" if n is not None else f"length {len(row)}")
            steps = run.get("steps")
            if steps and not run.get("label"):
                label += f" (step {steps[-1]})"
            ax.plot(lag, row, color=colour.get(int(n)) if n is not None else None, linewidth=1.6, label=label)
        ax.set_yscale("log")
        ax.set_title(cell)
        ax.set_xlabel("time steps before the output (T - 1 - t)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel(
        r"$\|\partial L/\partial h_t\| \,/\, \|\partial L/\partial h_{T-1}\|$" if normalize
        else r"$\|\partial L/\partial h_t\|$"
    )
    fig.suptitle("Gradient norm through time" + (f" on {', '.join(tasks)}" if tasks else ""))
    return fig
