"""Length generalisation end to end through the installed command: a sweep of two cells trained on lengths up to
``task.train_length`` and tested at ``task.test_lengths`` logs ``final/<metric>_at_L`` to a real MLflow store and
the report shows them; a killed run resumes to the same numbers, bit for bit."""

from __future__ import annotations

import csv
import json

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli
from test_resume import assert_identical, kill_then_rerun, runs_by_seed, store

pytestmark = pytest.mark.slow

TINY = ["model.hidden_size=8", "trainer.steps=20", "trainer.eval_every=10", "trainer.batch_size=16",
        "trainer.final_eval_sequences=64", "trainer.threads=1", "diagnostics=off", "trainer.progress=none"]
LENGTHS = [6, 12, 24]


def test_sweep_logs_each_test_length_and_the_report_plots_them(tmp_path, _template_store):
    folder, uri = store(tmp_path, _template_store, "sweep")
    proc = run_cli(["-m", "cell=lstm,mingru", "task=parity", "task.train_length=6",
                    f"task.test_lengths=[{','.join(map(str, LENGTHS))}]", *TINY, f"tracking.uri={uri}"], folder,
                   check=True)
    assert "accuracy_at_24=" in proc.stdout
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(["1"], "tags.`rnnbench.run_key` != ''")
    assert sorted(r.data.params["cell.name"] for r in runs) == ["lstm", "mingru"]
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        assert (params["task.train_length"], params["task.dependency_length"]) == ("6", "6")
        assert json.loads(params["task.test_lengths"]) == LENGTHS
        assert run.data.tags["length"] == "6"
        for n in LENGTHS:
            assert 0.0 <= metrics[f"final/accuracy_at_{n}"] <= 1.0
            assert metrics[f"final/loss_at_{n}"] > 0 and metrics[f"final/sequences_at_{n}"] == 64
            assert (metrics[f"baseline/accuracy_at_{n}"], metrics[f"baseline/loss_at_{n}"]) == (
                metrics["baseline/accuracy"], metrics["baseline/loss"])  # parity: chance at every length
        assert "final/accuracy" in metrics and run.info.status == "FINISHED"
    (parent,) = client.search_runs(["1"], "tags.`rnnbench.sweep` = 'true'")
    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/generalisation.png", "report/generalisation.md", "report/generalisation.csv"} <= attached

    out = tmp_path / "report"
    proc = run_cli(["report", "--tracking-uri", uri, "--out", str(out)], folder, check=True)
    assert "| parity | lstm | lengths up to 6 |" in proc.stdout
    rows = list(csv.DictReader((out / "generalisation.csv").open()))
    by_run = {r.info.run_id: r.data.metrics for r in runs}
    assert len(rows) == 2 * len(LENGTHS)
    for row in rows:
        (run_id,) = row["run_ids"].split()
        assert float(row["median"]) == pytest.approx(by_run[run_id][f"final/accuracy_at_{row['test_length']}"])
        assert row["trained_on"] == "lengths up to 6"
    assert (out / "generalisation.png").stat().st_size > 10_000
    assert "Length generalisation" in (out / "index.html").read_text()


RESUME = ["task=even_pairs", "cell=gru", "task.train_length=9", "task.test_lengths=[9,30]", "model.hidden_size=8",
          "trainer.steps=60", "trainer.eval_every=20", "trainer.log_every=10", "trainer.checkpoint_every=20",
          "trainer.threads=1", "trainer.final_eval_sequences=200", "trainer.early_stop=false",
          "diagnostics=off", "trainer.progress=none"]


def test_a_killed_run_resumes_to_the_same_numbers(tmp_path, _template_store):
    """The training lengths come from the member's stream, which the checkpoint holds: killed between two
    checkpoints, the run ends with every metric (the test lengths' too) equal to an uninterrupted run's."""
    folder, uri = store(tmp_path, _template_store, "reference")
    run_cli([*RESUME, f"tracking.uri={uri}"], folder, check=True)
    reference = runs_by_seed(uri)
    assert "final/accuracy_at_30" in reference["0"][0]["metrics"]
    resumed = kill_then_rerun(tmp_path, _template_store, RESUME, "checkpoint.write@2")
    for runs in (resumed, reference):  # diagnostics are off: no artifacts to compare
        for run in runs["0"]:
            run["artifacts"] = ["-"]
    assert_identical(resumed, reference)


@pytest.mark.parametrize(("args", "line"), [
    (["task=parity", "task.test_lengths=[1,40]"],
     "task.test_lengths=[1, 40] is not allowed: lengths task 'parity' accepts; at 1: an integer >= 2"),
    (["task=parity", "task.test_lengths=[100,40]"],
     "task.test_lengths=[100, 40] is not allowed: lengths in ascending order, each once"),
    (["task=parity", "task.train_length=40", "task.dependency_length=50"],
     "task.dependency_length=50 is not allowed: at most task.train_length (40)"),
], ids=["task-refuses", "order", "above-train"])
def test_bad_lengths_are_one_line_exit_2_and_write_nothing(tmp_path, args, line):
    proc = run_cli([*args, "trainer=smoke"], tmp_path)
    lines = [text for text in proc.stderr.splitlines() if text.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"rnnbench: error: {line}")
    assert not list(tmp_path.iterdir())
