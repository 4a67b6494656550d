"""``rnnbench report`` on runs written directly into a temporary store with known final metrics (minimal
params; tests/test_report_scenarios.py builds runs from real composed configs)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from rnnbench.errors import RnnbenchError


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def make_run(
    client,
    experiment_id: str,
    cell: str,
    length: int,
    seed: int,
    accuracy: float | None,
    *,
    diverged: bool = False,
    task: str = "adding",
    variant: str = "arjovsky2016",
    baseline: float = 0.15,
    status: str = "FINISHED",
    parent: str | None = None,
    steps: int = 100,
    final: bool = True,
) -> str:
    """A run with minimal params: ``final/accuracy`` (the report's metric) and an ``eval/accuracy`` curve whose
    last point equals it; ``final=False`` is a run logged before the final evaluation existed."""
    from mlflow.entities import Metric, Param

    tags = {"rnnbench.run_key": f"{task}-{cell}-{length}-{seed}-{steps}", "rnnbench.cell": cell, "rnnbench.task": task,
            "rnnbench.outcome": "diverged" if diverged else "learning"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, run_name=f"{cell}-T{length}-s{seed}", tags=tags)
    rid = run.info.run_id
    params = {"cell.name": cell, "task.name": task, "task.variant": variant, "task.dependency_length": str(length),
              "seed": str(seed), "model.param_budget": "null", "model.hidden_size": "8", "trainer.steps": str(steps)}
    metrics = [Metric("baseline/accuracy", baseline, 0, 0)]
    metrics += [Metric("train/loss", 1.0 / (s + 1), 0, s) for s in range(1, 6)]
    if accuracy is not None:
        metrics += [Metric("eval/accuracy", 0.01, 0, 10), Metric("eval/accuracy", accuracy, 0, 20)]
        if final:
            metrics.append(Metric("final/accuracy", accuracy, 0, 20))
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(rid, status)
    return rid


GRID = {
    # (cell, length): [(accuracy, diverged) per seed]
    ("gru", 10): [(1.0, False), (0.995, False), (0.5, False)],
    ("gru", 100): [(0.999, False), (0.2, False), (None, True)],
    ("rnn_tanh", 10): [(0.992, False), (0.3, False), (0.991, False)],
    ("rnn_tanh", 100): [(0.1, False), (0.12, False), (0.999, True)],
    ("lstm", 10): [(0.99, False), (0.99, False), (0.2, False)],
    ("lstm", 100): [(0.995, False), (1.0, False), (0.1, False)],
}


@pytest.fixture
def store(mlflow_uri):
    client = _client(mlflow_uri)
    exp = client.create_experiment("study")
    for (cell, length), seeds in GRID.items():
        for seed, (acc, diverged) in enumerate(seeds):
            make_run(client, exp, cell, length, seed, acc, diverged=diverged)
    return mlflow_uri, client, exp


def test_aggregation_matches_inputs(store, tmp_path):
    from rnnbench.report import build_report, runs_of_experiment

    uri, client, _ = store
    report = build_report(runs_of_experiment(client, "study"), tmp_path, client, threshold=0.99)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == len(GRID)
    for row in rows:
        seeds = GRID[(row["cell"], int(row["dependency_length"]))]
        finite = [a for a, _ in seeds if a is not None]
        ok = [a is not None and a >= 0.99 and not d for a, d in seeds]
        div = sum(d for _, d in seeds)
        assert int(row["seeds"]) == len(seeds)
        assert int(row["succeeded"]) == sum(ok)
        assert int(row["diverged"]) == div
        assert float(row["median"]) == pytest.approx(statistics.median(finite))
        assert float(row["min"]) == pytest.approx(min(finite))
        assert float(row["max"]) == pytest.approx(max(finite))
        assert float(row["baseline"]) == pytest.approx(0.15)
        expected_text = f"{sum(ok)}/{len(seeds)}" + (f" ({div} diverged)" if div else "")
        assert row["success"] == expected_text
        assert (row["solved"] == "True") == (2 * sum(ok) > len(seeds))
    for name in ("accuracy.png", "loss_curves.png", "report.md", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert "0.600 (1/3, 1 diverged)" in (tmp_path / "report.md").read_text()
    assert "**0.995 (2/3)**" in (tmp_path / "report.md").read_text()  # solved entries are bold
    assert report.summary["runs"]["diverged"] == 2


def _point(report, cell: str, length: int):
    (line,) = [ln for panel in report.panels for ln in panel.lines if ln.cell == cell]
    (point,) = [p for p in line.points if p.dependency_length == length]
    return point


def test_diverged_counts_as_failure_even_above_threshold(store, tmp_path):
    from rnnbench.report import build_report, runs_of_experiment

    _, client, _ = store
    report = build_report(runs_of_experiment(client, "study"), tmp_path, client)
    (panel,) = report.panels
    point = _point(report, "rnn_tanh", 100)
    assert point.values and max(point.values) >= 0.99  # the diverged seed's last accuracy was high
    assert point.successes == 0 and point.diverged == 1


def test_longest_solved_majority_rule(store, tmp_path):
    from rnnbench.report import build_report, runs_of_experiment

    _, client, _ = store
    report = build_report(runs_of_experiment(client, "study"), tmp_path, client)
    expected = {}
    for cell in {c for c, _ in GRID}:
        solved = [t for (c, t), seeds in GRID.items() if c == cell
                  and 2 * sum(a is not None and a >= 0.99 and not d for a, d in seeds) > len(seeds)]
        expected[cell] = max(solved) if solved else None
    assert {line.cell: line.longest_solved for line in report.panels[0].lines} == expected
    assert expected == {"gru": 10, "rnn_tanh": 10, "lstm": 100}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {line["cell"]: line["longest_solved"] for line in summary["lines"]} == expected
    assert summary["panels"][0]["longest_solved"] == expected
    assert report.metrics["longest_solved/lstm"] == 100.0
    assert report.metrics["longest_solved/gru"] == 10.0


def test_threshold_changes_success(store, tmp_path):
    from rnnbench.report import build_report, runs_of_experiment

    _, client, _ = store
    report = build_report(runs_of_experiment(client, "study"), tmp_path, client, threshold=0.2)
    assert _point(report, "gru", 100).successes == 2  # 0.999 and 0.2; the diverged seed fails


def test_newest_of_duplicate_wins_and_unfinished_counts_as_failure(mlflow_uri, tmp_path):
    """Two FINISHED runs of one run key: the newest counts, and the report says so. A FAILED seed is no longer
    left out: it is a planned seed (seen in the group) that failed, so the length is 1/2, incomplete."""
    import time

    from rnnbench.report import build_report, runs_of_experiment

    client = _client(mlflow_uri)
    exp = client.create_experiment("dups")
    old = make_run(client, exp, "gru", 10, 0, 0.1)
    time.sleep(0.01)
    make_run(client, exp, "gru", 10, 0, 0.999)
    make_run(client, exp, "gru", 10, 1, 0.999, status="FAILED")
    report = build_report(runs_of_experiment(client, "dups"), tmp_path, client)
    point = _point(report, "gru", 10)
    assert point.planned == 2 and point.values == [0.999]
    assert point.successes == 1 and not point.solved and not point.complete
    assert point.statuses == {"FINISHED": 1, "FAILED": 1}
    assert report.summary["runs"] == {"counted": 1, "duplicates": 1, "replaced": 0, "unfinished": 1, "missing": 0,
                                      "planned": 2, "diverged": 0, "metric_fallback": 0}
    text = (tmp_path / "report.md").read_text()
    assert "the newest counts" in text and old in text
    assert "(1/2, incomplete: 1 FAILED)" in text


def test_tasks_are_separate_groups(mlflow_uri, tmp_path):
    from rnnbench.report import build_report, runs_of_experiment

    client = _client(mlflow_uri)
    exp = client.create_experiment("two")
    make_run(client, exp, "gru", 10, 0, 0.999, task="adding")
    make_run(client, exp, "gru", 10, 0, 0.5, task="copy", baseline=0.125)
    report = build_report(runs_of_experiment(client, "two"), tmp_path, client)
    assert [p.task for p in report.panels] == ["adding", "copy"]
    assert report.metrics["longest_solved/adding/gru"] == 10.0
    # nothing solved on copy: no longest_solved metric at all (it used to be 0.0, which reads as a length)
    assert "longest_solved/copy/gru" not in report.metrics
    assert report.metrics["success_rate/copy/gru"] == 0.0


@pytest.mark.slow
def test_cli_report_and_errors(store, tmp_path, cli):
    uri, _, _ = store
    out = tmp_path / "rep"
    proc = cli("report", "--experiment", "study", "--tracking-uri", uri, "--out", str(out),
               "--plot", str(tmp_path / "plot.png"), check=True)
    assert "| adding (arjovsky2016) | lstm | 100 |" in proc.stdout
    assert (out / "accuracy.png").exists() and (tmp_path / "plot.png").exists()

    proc = cli("report", "--experiment", "nope", "--tracking-uri", uri)
    assert proc.returncode == 2
    assert "no experiment 'nope'" in proc.stderr and "study" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = cli("report", "--tracking-uri", f"sqlite:///{tmp_path}/missing.db")
    assert proc.returncode == 2 and "no tracking store" in proc.stderr
    assert not (tmp_path / "missing.db").exists()


def test_empty_experiment_and_unknown_metric(mlflow_uri, tmp_path):
    from rnnbench.report import build_report, runs_of_experiment

    client = _client(mlflow_uri)
    client.create_experiment("empty")
    with pytest.raises(RnnbenchError, match="no rnnbench runs"):
        build_report(runs_of_experiment(client, "empty"), tmp_path, client)
    exp = client.get_experiment_by_name("empty").experiment_id
    make_run(client, exp, "gru", 10, 0, 0.9)
    with pytest.raises(RnnbenchError, match="metric 'eval/nothing' was not logged"):
        build_report(runs_of_experiment(client, "empty"), tmp_path, client, metric="eval/nothing")


def test_parent_selection_includes_reused_runs(mlflow_uri, tmp_path):
    from rnnbench.report import SWEEP_RUNS_ARTIFACT, main

    client = _client(mlflow_uri)
    exp = client.create_experiment("sweeps")
    old = make_run(client, exp, "gru", 10, 0, 0.999)
    parent = client.create_run(exp, tags={"rnnbench.sweep": "true"}).info.run_id
    make_run(client, exp, "gru", 10, 1, 0.999, parent=parent)
    make_run(client, exp, "gru", 20, 0, 0.999)  # in the experiment, not in the sweep
    listing = tmp_path / "runs.json"
    listing.write_text(json.dumps({"reused_run_ids": [old]}))
    client.log_artifact(parent, str(listing), str(Path(SWEEP_RUNS_ARTIFACT).parent))
    out = tmp_path / "rep"
    assert main(["--parent", parent, "--tracking-uri", mlflow_uri, "--out", str(out), "--attach"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["dependency_length"], r["seeds"], r["succeeded"]) for r in rows] == [("10", "2", "2")]
    run = client.get_run(parent)
    assert run.data.metrics["longest_solved/gru"] == 10.0
    assert {a.path for a in client.list_artifacts(parent, "report")} >= {"report/accuracy.png", "report/results.csv"}


def test_older_runs_fall_back_to_last_eval_accuracy_and_say_so(mlflow_uri, tmp_path):
    from rnnbench.report import build_report, runs_of_experiment

    client = _client(mlflow_uri)
    exp = client.create_experiment("old")
    make_run(client, exp, "gru", 10, 0, 0.999, final=False)
    make_run(client, exp, "gru", 10, 1, 0.995)
    report = build_report(runs_of_experiment(client, "old"), tmp_path, client)
    point = _point(report, "gru", 10)
    assert point.successes == 2 and sorted(point.values) == [0.995, 0.999]
    assert report.summary["runs"]["metric_fallback"] == 1
    assert "their last `eval/accuracy`" in (tmp_path / "report.md").read_text()
