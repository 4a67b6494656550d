"""The length-generalisation section of ``rnnbench report`` (rnnbench.report_lengths): from runs written into a
real temporary store with known metrics at test lengths, and, end to end, from a sweep of the real CLI."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from test_report import _client, make_run


def add_test_lengths(client, run_id: str, values: dict[int, float], baseline: float = 0.5,
                     train_length: int | None = None) -> None:
    from mlflow.entities import Metric, Param

    metrics = [Metric(f"final/accuracy_at_{n}", v, 0, 20) for n, v in values.items()]
    metrics += [Metric(f"baseline/accuracy_at_{n}", baseline, 0, 0) for n in values]
    params = [Param("task.test_lengths", json.dumps(sorted(values)))]
    params.append(Param("task.train_length", "null" if train_length is None else str(train_length)))
    client.log_batch(run_id, metrics=metrics, params=params)


GRID = {  # cell: per seed, accuracy at the test lengths 40, 100, 500
    "lstm": [{40: 1.0, 100: 0.7, 500: 0.55}, {40: 0.995, 100: 0.9, 500: 0.6}, {40: 0.98, 100: 0.5, 500: 0.5}],
    "mingru": [{40: 1.0, 100: 1.0, 500: 0.99}, {40: 1.0, 100: 0.995, 500: 0.97}, {40: 0.6, 100: 0.5, 500: 0.5}],
}


@pytest.fixture
def store(mlflow_uri):
    client = _client(mlflow_uri)
    exp = client.create_experiment("lengths")
    for cell, seeds in GRID.items():
        for seed, values in enumerate(seeds):
            rid = make_run(client, exp, cell, 40, seed, values[40], task="parity", variant="final", baseline=0.5)
            add_test_lengths(client, rid, values, train_length=40)
    return mlflow_uri, client, exp


def build(uri, out, experiment="lengths", **kwargs):
    from rnnbench import report, store

    client = store.client(uri, create=False)
    return report.build_report(report.runs_of_experiment(client, experiment), out, client, **kwargs)


def test_generalisation_table_and_summary_match_the_runs(store, tmp_path):
    uri, _, _ = store
    result = build(uri, tmp_path / "out")
    data = result.summary["generalisation"]
    assert data["metric"] == "final/accuracy"
    by_cell = {c["cell"]: c for c in data["curves"]}
    assert set(by_cell) == set(GRID)
    for cell, seeds in GRID.items():
        curve = by_cell[cell]
        assert curve["lengths"] == [40, 100, 500] and curve["trained_length"] == 40
        for n in (40, 100, 500):
            values = [s[n] for s in seeds]
            point = curve["points"][str(n)]
            assert point["median"] == pytest.approx(statistics.median(values))
            assert (point["min"], point["max"]) == (pytest.approx(min(values)), pytest.approx(max(values)))
            assert (point["seeds"], point["planned"], point["baseline"]) == (3, 3, 0.5)
        beyond = statistics.mean(statistics.median(s[n] for s in seeds) for n in (100, 500))
        assert curve["mean_beyond_training"] == pytest.approx(beyond)
    text = (tmp_path / "out" / "generalisation.md").read_text()
    beyond = (0.995 + 0.97) / 2  # mingru's medians at 100 and 500
    assert "| mingru | lengths up to 40 | **1.000 (0.600-1.000, 3/3)** | **0.995 (0.500-1.000, 3/3)** | " \
           f"0.970 (0.500-0.990, 3/3) | {beyond:.3f} |" in text
    assert "| chance (memoryless baseline) | | 0.500 | 0.500 | 0.500 | |" in text
    rows = list(csv.DictReader((tmp_path / "out" / "generalisation.csv").open()))
    assert len(rows) == 6 and {r["test_length"] for r in rows} == {"40", "100", "500"}
    lstm_500 = next(r for r in rows if r["cell"] == "lstm" and r["test_length"] == "500")
    assert float(lstm_500["median"]) == pytest.approx(0.55) and lstm_500["seeds"] == "3"
    assert (tmp_path / "out" / "generalisation.png").stat().st_size > 10_000
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<h1>Length generalisation</h1>" in page and page.count("data:image/png;base64,") >= 4
    assert "generalisation.png" in result.files["generalisation.png"].name
    # the console headline: each curve's median per test length
    from rnnbench.report import headline

    assert "| parity | mingru | lengths up to 40 | 1.000 | 0.995 | 0.970 |" in headline(result)


def test_no_test_lengths_no_section(mlflow_uri, tmp_path):
    client = _client(mlflow_uri)
    exp = client.create_experiment("lengths")
    make_run(client, exp, "gru", 10, 0, 0.9)
    result = build(mlflow_uri, tmp_path / "out")
    assert "generalisation" not in result.summary
    assert not (tmp_path / "out" / "generalisation.md").exists()
    assert "Length generalisation" not in (tmp_path / "out" / "index.html").read_text()


def test_a_line_trained_at_several_lengths_has_a_curve_per_length(mlflow_uri, tmp_path):
    client = _client(mlflow_uri)
    exp = client.create_experiment("lengths")
    for length, values in ((10, {10: 1.0, 50: 0.6}), (20, {10: 1.0, 50: 0.8})):
        rid = make_run(client, exp, "gru", length, 0, values[10], task="even_pairs", variant="deletang2023")
        add_test_lengths(client, rid, values, train_length=length)
    result = build(mlflow_uri, tmp_path / "out")
    labels = {c["label"]: c for c in result.summary["generalisation"]["curves"]}
    assert set(labels) == {"gru (trained on lengths up to 10)", "gru (trained on lengths up to 20)"}
    assert labels["gru (trained on lengths up to 20)"]["mean_beyond_training"] == pytest.approx(0.8)
    # a run that trained at one length (no task.train_length) is trained on that length only
    rid = make_run(client, exp, "lstm", 30, 0, 0.9, task="even_pairs", variant="deletang2023")
    add_test_lengths(client, rid, {30: 0.9, 90: 0.4})
    result = build(mlflow_uri, tmp_path / "again")
    lstm = next(c for c in result.summary["generalisation"]["curves"] if c["cell"] == "lstm")
    assert (lstm["trained_on"], lstm["mean_beyond_training"]) == ("length 30", pytest.approx(0.4))


def test_unfinished_seeds_are_not_in_the_values_but_are_planned(mlflow_uri, tmp_path):
    client = _client(mlflow_uri)
    exp = client.create_experiment("lengths")
    for seed, status in enumerate(("FINISHED", "FINISHED", "KILLED")):
        rid = make_run(client, exp, "gru", 8, seed, 1.0, task="parity", variant="final", status=status)
        add_test_lengths(client, rid, {8: 1.0, 16: 0.5 + 0.1 * seed})
    result = build(mlflow_uri, tmp_path / "out")
    (curve,) = result.summary["generalisation"]["curves"]
    assert curve["points"]["16"] == {"median": pytest.approx(0.55), "min": pytest.approx(0.5),
                                     "max": pytest.approx(0.6), "seeds": 2, "planned": 3, "baseline": 0.5}
