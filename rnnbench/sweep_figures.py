"""The sweep parent's gradient-flow figures, drawn from the runs of the sweep that measured diagnostics."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("rnnbench")


def gradient_flow_figures(client: Any, runs: list[Any]) -> dict[str, Any]:
    """Gradient-flow figures (``rnnbench.diagnostics``) of the sweep's runs that recorded diagnostics.

    One figure per task, named ``gradient_flow.png`` (``gradient_flow_<task>.png`` with several tasks), drawn
    from one finished run per (task, cell, length). Runs without diagnostics are skipped; no figure when none
    has them or the diagnostics module does not offer the figure.
    """
    try:
        from rnnbench.diagnostics_figures import gradient_flow_figure
        from rnnbench.diagnostics_runs import load_run_arrays
    except ImportError:
        try:
            from rnnbench.diagnostics import gradient_flow_figure, load_run_arrays  # before the split
        except ImportError:
            return {}
    chosen: dict[tuple[str, str, str], Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
        params = run.data.params
        if run.info.status != "FINISHED" or params.get("diagnostics.enabled", "").lower() != "true":
            continue
        key = (params.get("task.name", ""), params.get("cell.name", ""), params.get("task.dependency_length", ""))
        chosen.setdefault(key, run)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for (task, _, _), run in sorted(chosen.items()):
        try:
            raw = load_run_arrays(run.info.run_id, client=client)
        except Exception as exc:  # no diagnostics artifact, or one this version cannot read
            log.debug("no gradient-flow arrays for run %s: %s", run.info.run_id, exc)
            continue
        if raw.get("grad_norm"):
            by_task.setdefault(task, []).append(raw)
    figures: dict[str, Any] = {}
    for task, raws in by_task.items():
        name = "gradient_flow.png" if len(by_task) == 1 else f"gradient_flow_{task}.png"
        try:
            figures[name] = gradient_flow_figure(raws)
        except Exception as exc:
            log.warning("gradient-flow figure for %s failed: %s", task, exc)
    return figures
