"""Build a report from MLflow runs (records -> panels -> files) and attach it to a sweep's parent run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnbench.errors import RnnbenchError
from rnnbench import report_draw as draw, report_write as write
from rnnbench.report_compute import X_DEFAULT, aggregate, metric_name, select, summary_metrics
from rnnbench.report_data import RunRecord, fallback_metric, record_of
from rnnbench.report_html import figures_as_text, write_html
from rnnbench.report_capacity import CAPACITY_FILES, write_capacity
from rnnbench.report_lengths import generalisation_headline, write_generalisation
from rnnbench.report_plan import Plan
from rnnbench.report_points import Panel, fmt_x

DEFAULT_METRIC = "final/accuracy"
REPORT_FILES = ("index.html", "accuracy.png", "loss_curves.png", "report.md", "results.csv", "summary.json",
                *CAPACITY_FILES)


@dataclass
class Report:
    panels: list[Panel]
    summary: dict[str, Any]
    metrics: dict[str, float]
    markdown: str
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)
    pages: dict[str, str] = field(default_factory=dict)
    """The Markdown of index.html's sections, with their figures (report.md and capacity.md name them)."""


def _check(records: list[RunRecord], runs: Sequence[Any], metric: str, x_key: str, source: str, plan: Plan) -> None:
    """Refuse, before anything is written, what cannot be reported honestly."""
    if not records and not plan.groups:
        raise RnnbenchError(f"no rnnbench runs to report in {source or 'the selection'}")
    finished = [r for r in records if r.status == "FINISHED"]
    if finished and all(r.value is None and not r.diverged for r in finished):
        available = sorted({k for run in runs for k in run.data.metrics})
        raise RnnbenchError(f"metric {metric!r} was not logged by any run; available: {', '.join(available)}")
    if x_key != X_DEFAULT:
        lacking = [r for r in records if r.x is None]
        if lacking:
            raise RnnbenchError(
                f"--x {x_key.rsplit('.', 1)[-1]}: {len(lacking)} of {len(records)} runs have no param {x_key} "
                f"(e.g. run {lacking[0].run_id}, logged before its task described it); use --x dependency_length"
            )


def _listed(items: list[str], limit: int = 20) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _notes(records: list[RunRecord], panels: list[Panel], metric: str, x_key: str) -> tuple[list[str], dict[str, int]]:
    selection = select(records)
    notes = []
    if selection.duplicates:
        notes.append(
            f"{len(selection.duplicates)} older FINISHED run(s) repeat the run key of a newer FINISHED run (the same "
            "configuration and seed run twice); the newest counts. Superseded: "
            + _listed([r.run_id for r in selection.duplicates])
        )
    if selection.replaced:
        notes.append(f"{len(selection.replaced)} unfinished run(s) were replaced by a later run of the same "
                     "configuration and seed.")
    alt = fallback_metric(metric)
    fallback = [r for r in selection.counted.values() if alt and r.value_source == alt]
    if fallback:
        notes.append(f"{len(fallback)} run(s) have no `{metric}` (logged before the final held-out evaluation "
                     f"existed): their last `{alt}` (the training curve's last point) was used instead.")
    gaps = [(line, p, seed, r) for panel in panels for line in panel.lines for p in line.points
            for seed, r in p.seeds.items() if (r is None and seed not in p.not_run) or (r and r.status != "FINISHED")]
    if gaps:
        notes.append(
            f"{len(gaps)} planned seed(s) have no finished run and count as failures: "
            + _listed([f"{line.label} {write.x_name(x_key)}={fmt_x(p.x)} seed {seed} "
                       f"({'MISSING' if r is None else r.status})" for line, p, seed, r in gaps])
        )
    counts = {
        "counted": sum(r.status == "FINISHED" for r in selection.counted.values()),
        "duplicates": len(selection.duplicates),
        "replaced": len(selection.replaced),
        "unfinished": sum(r is not None for *_, r in gaps),
        "missing": sum(r is None for *_, r in gaps),
        "planned": sum(p.planned for panel in panels for line in panel.lines for p in line.points),
        "diverged": sum(p.diverged for panel in panels for line in panel.lines for p in line.points),
        "metric_fallback": len(fallback),
    }
    return notes, counts


def build_report(
    runs: Sequence[Any],
    out_dir: Path,
    client: Any | None = None,
    metric: str = DEFAULT_METRIC,
    threshold: float | None = None,
    source: str = "",
    plan: Plan | None = None,
    x_key: str = X_DEFAULT,
) -> Report:
    """Aggregate ``runs`` (MLflow runs) against ``plan`` (the seeds a sweep planned) and write the report files
    into ``out_dir``: a seed succeeds at ``threshold``, or (None) at its configuration's ``trainer.solved_threshold``.
    Raises :class:`RnnbenchError` before writing anything when there is nothing to report."""
    plan = plan or Plan()
    records = [r for r in (record_of(run, metric, x_key) for run in runs) if r is not None]
    _check(records, runs, metric, x_key, source, plan)
    panels, placement_notes = aggregate(records, plan, threshold, x_key)
    if not panels:
        raise RnnbenchError(f"nothing to report in {source or 'the selection'}: " + " ".join(placement_notes))
    notes, counts = _notes(records, panels, metric, x_key)
    notes += placement_notes
    metrics = summary_metrics(panels)
    thresholds = sorted({p.threshold for panel in panels for line in panel.lines for p in line.points})
    summary = {
        "source": source,
        "metric": metric,
        "threshold": thresholds[0] if len(thresholds) == 1 else thresholds,
        "threshold_source": "--threshold" if threshold is not None else "trainer.solved_threshold",
        "x": x_key,
        "success_rule": write.SUCCESS_RULE,
        "notes": notes,
        "runs": counts,
        "lines": [write.line_summary(panel, line, metric_name(panels, panel, line))
                  for panel in panels for line in panel.lines],
        "panels": [{"task": p.task, "title": p.title, "slug": p.slug, "lengths": [write._json_x(x) for x in p.xs],
                    "longest_solved": {ln.label: write._json_x(ln.longest_solved) for ln in p.lines}}
                   for p in panels],
        "metrics": metrics,
    }
    text = write.markdown(panels, metric, thresholds, source or "the selected runs", x_key, notes)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / name for name in REPORT_FILES}
    plt = draw._pyplot()
    x_label = "dependency length T" if x_key == X_DEFAULT else x_key
    fig = draw.accuracy_figure(panels, metric, thresholds, x_label)
    fig.savefig(files["accuracy.png"], dpi=110)
    plt.close(fig)
    histories = draw.loss_histories(client, panels) if client is not None else {}
    fig = draw.loss_figure(panels, histories)
    fig.savefig(files["loss_curves.png"], dpi=90)
    plt.close(fig)
    files["report.md"].write_text(figures_as_text(text))
    write.write_csv(files["results.csv"], write.csv_rows(panels))
    summary["capacity"], capacity_files = write_capacity(panels, out_dir, source or "the selected runs")
    files.update(capacity_files)
    generalisation, generalisation_files = write_generalisation(
        panels, {run.info.run_id: run.data.metrics for run in runs}, metric, out_dir, source or "the selected runs")
    if generalisation is not None:
        summary["generalisation"] = generalisation
        files.update(generalisation_files)
    write.write_json(files["summary.json"], summary)
    pages = {"report.md": text}
    for name in ("generalisation.md", "capacity.md"):
        if name in files:
            pages[name] = files[name].read_text()
            files[name].write_text(figures_as_text(pages[name]))
    write_html(files["index.html"], pages, out_dir)
    return Report(panels, summary, metrics, text, files, notes, pages)


def headline(report: Report) -> str:
    text = write.headline(report.panels)
    if "generalisation" in report.summary:
        text += "\n\n" + generalisation_headline(report.summary["generalisation"])
    return text


def attach(client: Any, run_id: str, report: Report, extra_figures: dict[str, Any] | None = None) -> None:
    """Log the report to ``run_id``: files under ``report/``, summary metrics, and a run description that links
    to ``report/index.html`` (the page with the figures and tables)."""
    import time

    from mlflow.entities import Metric, RunTag

    from rnnbench.ui import REPORT_PAGE, link

    if extra_figures and "index.html" in report.files:  # the sweep's gradient-flow figures: on the page too
        folder = report.files["index.html"].parent
        sections = {"report.md": report.pages.get("report.md", report.markdown)}
        for name, fig in extra_figures.items():
            fig.savefig(folder / name, dpi=110)
            sections[name.rsplit(".", 1)[0] + ".md"] = f"## Gradient flow\n\n![{name}]({name})\n"
        sections.update({k: v for k, v in report.pages.items() if k not in sections})
        write_html(report.files["index.html"], sections, folder)
    for path in report.files.values():
        if path.exists():
            client.log_artifact(run_id, str(path), "report")
    for name, fig in (extra_figures or {}).items():
        client.log_figure(run_id, fig, f"report/{name}")
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in report.metrics.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    experiment_id = client.get_run(run_id).info.experiment_id
    page = link(None, experiment_id, run_id, REPORT_PAGE)
    note = (
        f"**[Sweep report: accuracy against dependency length]({page})** (the Artifacts tab, {REPORT_PAGE}: "
        "figures and tables on one page; the figures also as report/accuracy.png and report/loss_curves.png)."
        "\n\n" + headline(report)
    )
    client.log_batch(run_id, tags=[RunTag("mlflow.note.content", note[:8000])])
