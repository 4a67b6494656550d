"""``rnnbench report`` on the scenarios that decide its headline number, with runs built from real composed
configs (params and tags as the runner logs them) in a real temporary MLflow store; no training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rnnbench import identity
from rnnbench.errors import RnnbenchError

BASE = ("task=adding", "trainer=smoke", "diagnostics=off")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture
def resolve(compose):
    """``resolve(*overrides)`` -> the resolved config dict of a job, as the runner sees it."""

    def _resolve(*overrides: str) -> dict:
        return OmegaConf.to_container(compose(*BASE, *overrides), resolve=True)

    return _resolve


def log_run(client, experiment_id: str, resolved: dict, accuracy: float | None, *, status: str = "FINISHED",
            diverged: bool = False, parent: str | None = None, group_tag: bool = True,
            extra_params: dict[str, str] | None = None, drop_params: tuple[str, ...] = ()) -> str:
    """One run logged as ``rnnbench.runner`` logs it: flattened config, ``task.describe()`` facts, derived model
    facts; run key, group key, cell, task and outcome tags; ``final/accuracy`` and an ``eval/accuracy`` curve."""
    from mlflow.entities import Metric, Param, RunTag

    from rnnbench.config import constructor_kwargs
    from rnnbench.manager import get_registry

    params = identity.flatten(resolved)
    task = get_registry().task(resolved["task"]["name"]).task(**constructor_kwargs(resolved["task"]))
    params.update({f"task.{k}": str(v) for k, v in task.describe().items() if f"task.{k}" not in params})
    params.update({"model.resolved_hidden_size": "64", "model.num_parameters": "4545", "model.path": "fused"})
    params.update(extra_params or {})
    params = {k: v for k, v in params.items() if k not in drop_params}
    cell, task_name, seed = resolved["cell"]["name"], resolved["task"]["name"], resolved["seed"]
    tags = {"rnnbench.run_key": identity.run_key(resolved), "rnnbench.cell": cell, "rnnbench.task": task_name}
    if group_tag:
        tags["rnnbench.group_key"] = identity.group_key(resolved)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, run_name=f"{cell}-T{resolved['task']['dependency_length']}-s{seed}",
                            tags=tags)
    rid = run.info.run_id
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(rid, params=items[i : i + 100])
    metrics = [Metric("baseline/accuracy", 0.15, 0, 0), Metric("train/loss", 0.5, 0, 10)]
    if accuracy is not None:
        metrics += [Metric("eval/accuracy", 0.1, 0, 100), Metric("eval/accuracy", accuracy, 0, 200),
                    Metric("final/accuracy", accuracy, 0, 200)]
    client.log_batch(rid, metrics=metrics)
    if status != "RUNNING":
        outcome = "diverged" if diverged else "solved" if (accuracy or 0) >= 0.99 else "at_baseline"
        client.log_batch(rid, tags=[RunTag("rnnbench.outcome", outcome)])
        client.set_terminated(rid, status)
    return rid


def report(uri: str, out: Path, *args: str) -> tuple[str, dict]:
    from rnnbench.report import main

    assert main(["--tracking-uri", uri, "--out", str(out), *args]) == 0
    return (out / "report.md").read_text(), json.loads((out / "summary.json").read_text())


def _lines(summary: dict) -> dict[str, dict]:
    return {line["label"]: line for line in summary["lines"]}


def test_mixed_configs_are_separate_lines(mlflow_uri, tmp_path, resolve):
    """Three failing unidirectional rnn_tanh runs and three solving bidirectional ones at T=100: two lines, and the
    unidirectional one fails T=100 (grouping by cell and length alone let the newest of each seed win)."""
    client = _client(mlflow_uri)
    exp = client.create_experiment("mixed")
    for seed in range(3):
        log_run(client, exp, resolve("cell=rnn_tanh", "task.dependency_length=100", f"seed={seed}"), 0.3)
    for seed in range(3):
        log_run(client, exp, resolve("cell=rnn_tanh", "task.dependency_length=100", f"seed={seed}",
                                     "model.bidirectional=true"), 1.0)
    text, summary = report(mlflow_uri, tmp_path / "rep", "--experiment", "mixed")
    lines = _lines(summary)
    assert set(lines) == {"rnn_tanh (model.bidirectional=False)", "rnn_tanh (model.bidirectional=True)"}
    uni, bi = lines["rnn_tanh (model.bidirectional=False)"], lines["rnn_tanh (model.bidirectional=True)"]
    assert uni["longest_solved"] is None and uni["points"]["100"]["successes"] == 0
    assert uni["points"]["100"]["planned"] == 3 and uni["points"]["100"]["complete"] is True
    assert bi["longest_solved"] == 100 and bi["points"]["100"]["successes"] == 3
    assert uni["distinguishing"] == {"model.bidirectional": "False"}
    assert uni["settings"]["model.bidirectional"] == "False" and "seed" not in uni["settings"]
    assert "| rnn_tanh (model.bidirectional=False) | none | 0.300 (0/3) |" in text
    assert "| rnn_tanh (model.bidirectional=True) | 100 | **1.000 (3/3)** |" in text
    assert summary["runs"]["duplicates"] == 0
    metrics = summary["metrics"]
    assert metrics["longest_solved/rnn_tanh/model.bidirectional:True"] == 100.0
    assert "longest_solved/rnn_tanh/model.bidirectional:False" not in metrics


def test_runs_without_group_tag_join_their_configuration(mlflow_uri, tmp_path, resolve):
    """An older run without the group key tag is grouped from its params: the same line as tagged seeds."""
    client = _client(mlflow_uri)
    exp = client.create_experiment("untagged")
    log_run(client, exp, resolve("cell=gru", "task.dependency_length=50", "seed=0"), 1.0, group_tag=False)
    for seed in (1, 2):
        log_run(client, exp, resolve("cell=gru", "task.dependency_length=50", f"seed={seed}"), 1.0)
    _, summary = report(mlflow_uri, tmp_path / "rep", "--experiment", "untagged")
    (line,) = summary["lines"]
    assert line["label"] == "gru" and line["points"]["50"]["planned"] == 3 and line["points"]["50"]["successes"] == 3


def test_gap_longest_solved_is_contiguous_and_the_failure_is_shown(mlflow_uri, tmp_path, resolve):
    """Solved at 50, failed at 100, solved at 200: the longest solved is 50; 200 is shown above the failure."""
    client = _client(mlflow_uri)
    exp = client.create_experiment("gap")
    for length, accuracy in ((50, 1.0), (100, 0.4), (200, 0.995)):
        for seed in range(3):
            log_run(client, exp, resolve("cell=gru", f"task.dependency_length={length}", f"seed={seed}"), accuracy)
    text, summary = report(mlflow_uri, tmp_path / "rep", "--experiment", "gap")
    (line,) = summary["lines"]
    assert line["lengths"] == [50, 100, 200]
    assert line["longest_solved"] == 50
    assert line["first_failure"] == 100 and line["solved_above_failure"] == [200]
    assert [line["points"][t]["solved"] for t in ("50", "100", "200")] == [True, False, True]
    assert "| gru | 50; solved at 200 above a failure at 100 |" in text
    assert summary["metrics"]["longest_solved/gru"] == 50.0
    assert summary["metrics"]["success_rate/gru"] == round(6 / 9, 3)


def test_missing_seeds_count_in_the_denominator(mlflow_uri, tmp_path, resolve):
    """Seed 0 solved, seed 1 KILLED, seed 2 FAILED (finished runs whose status was then changed): 1/3, not
    solved, incomplete; longest solved null, and no longest_solved metric."""
    client = _client(mlflow_uri)
    exp = client.create_experiment("missing")
    ids = [log_run(client, exp, resolve("cell=lstm", "task.dependency_length=100", f"seed={s}"), 1.0)
           for s in range(3)]
    client.set_terminated(ids[1], "KILLED")
    client.set_terminated(ids[2], "FAILED")
    text, summary = report(mlflow_uri, tmp_path / "rep", "--experiment", "missing")
    (line,) = summary["lines"]
    point = line["points"]["100"]
    assert {k: point[k] for k in ("successes", "planned", "complete", "solved")} == {
        "successes": 1, "planned": 3, "complete": False, "solved": False}
    assert point["statuses"] == {"FINISHED": 1, "KILLED": 1, "FAILED": 1}
    assert line["longest_solved"] is None and line["complete"] is False
    assert "| lstm | none (incomplete) | 1.000 (1/3, incomplete: 1 KILLED, 1 FAILED) |" in text
    assert "longest_solved/lstm" not in summary["metrics"]
    assert summary["metrics"]["success_rate/lstm"] == 0.333
    assert summary["runs"]["unfinished"] == 2


def _sweep_parent(client, exp: str, jobs: list[dict], *, listing: bool, sweep_dir: Path) -> str:
    """A sweep parent whose plan is ``jobs`` (manifest lines), in its ``sweep/runs.json`` or only in its manifest."""
    parent = client.create_run(exp, tags={"rnnbench.sweep": "true", "rnnbench.sweep.dir": str(sweep_dir)})
    pid = parent.info.run_id
    manifest = sweep_dir / ".rnnbench" / f"jobs-{pid}.jsonl"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    if listing:
        from rnnbench.report import plan_from_jobs

        path = sweep_dir / "runs.json"
        path.write_text(json.dumps({"jobs": jobs, "plan": plan_from_jobs(jobs).to_json(), "reused_run_ids": []}))
        client.log_artifact(pid, str(path), "sweep")
    return pid


@pytest.mark.parametrize("listing", [True, False], ids=["runs.json", "manifest"])
def test_sweep_plan_is_the_denominator(mlflow_uri, tmp_path, compose, resolve, listing):
    """The sweep planned 3 seeds at T=100 and 3 at T=200; 2 runs exist at T=100, none at T=200: 2/3 (solved,
    incomplete) and 0/3 (all missing), in the parent's report and in the experiment's."""
    from rnnbench.sweep_manifest import job_members

    client = _client(mlflow_uri)
    exp = client.create_experiment("planned")
    jobs = [{"event": "plan", "overrides": [f"task.dependency_length={t}", f"seed={s}"],
             **job_members(compose(*BASE, "cell=gru", f"task.dependency_length={t}", f"seed={s}"))}
            for t in (100, 200) for s in range(3)]
    pid = _sweep_parent(client, exp, jobs, listing=listing, sweep_dir=tmp_path / "multirun")
    for seed in (0, 1):
        log_run(client, exp, resolve("cell=gru", "task.dependency_length=100", f"seed={seed}"), 1.0, parent=pid)
    for args in (["--parent", pid, "--attach"], ["--experiment", "planned"]):
        text, summary = report(mlflow_uri, tmp_path / args[0].strip("-"), *args)
        (line,) = summary["lines"]
        assert line["points"]["100"]["planned"] == 3 and line["points"]["100"]["successes"] == 2
        assert line["points"]["100"]["statuses"] == {"FINISHED": 2, "MISSING": 1}
        assert line["points"]["100"]["solved"] is True and line["points"]["100"]["complete"] is False
        assert line["points"]["200"]["statuses"] == {"MISSING": 3} and line["points"]["200"]["solved"] is False
        assert line["longest_solved"] == 100 and line["lengths"] == [100, 200]
        assert "**1.000 (2/3, incomplete: 1 MISSING)**" in text and "- (0/3, incomplete: 3 MISSING)" in text
    metrics = client.get_run(pid).data.metrics
    assert metrics["longest_solved/gru"] == 100.0 and metrics["success_rate/gru"] == 0.333


def test_parent_report_finds_planned_runs_outside_the_sweep(mlflow_uri, tmp_path, compose, resolve):
    """A sweep still running (no sweep/runs.json yet) that skipped seed 1 because an earlier run finished it:
    the parent's report finds that run by its planned run key instead of counting the seed as missing."""
    from rnnbench.sweep_manifest import job_members

    client = _client(mlflow_uri)
    exp = client.create_experiment("running")
    jobs = [{"event": "plan", "overrides": [f"seed={s}"],
             **job_members(compose(*BASE, "cell=gru", "task.dependency_length=50", f"seed={s}"))} for s in (0, 1)]
    pid = _sweep_parent(client, exp, jobs, listing=False, sweep_dir=tmp_path / "multirun")
    log_run(client, exp, resolve("cell=gru", "task.dependency_length=50", "seed=1"), 1.0)  # earlier, no parent
    log_run(client, exp, resolve("cell=gru", "task.dependency_length=50", "seed=0"), 1.0, parent=pid)
    _, summary = report(mlflow_uri, tmp_path / "rep", "--parent", pid)
    (line,) = summary["lines"]
    assert line["points"]["50"]["statuses"] == {"FINISHED": 2} and line["points"]["50"]["successes"] == 2


def test_x_lag_median(mlflow_uri, tmp_path, resolve):
    """``--x lag_median`` plots against the runs' param task.lag_median; runs without it are refused in one line
    and nothing is written."""
    client = _client(mlflow_uri)
    exp = client.create_experiment("lags")
    for length, lag in ((50, 30), (100, 60)):
        for seed in range(3):
            log_run(client, exp, resolve("cell=gru", f"task.dependency_length={length}", f"seed={seed}"), 1.0,
                    extra_params={"task.lag_min": "1", "task.lag_median": str(lag), "task.lag_max": str(length)})
    text, summary = report(mlflow_uri, tmp_path / "rep", "--experiment", "lags", "--x", "lag_median")
    (line,) = summary["lines"]
    assert summary["x"] == "task.lag_median"
    assert line["lengths"] == [30, 60] and line["longest_solved"] == 60
    assert line["points"]["60"]["dependency_length"] == 100
    assert "| gru | 60 | **1.000 (3/3)** | **1.000 (3/3)** |" in text and "lag_median=30" in text

    exp2 = client.create_experiment("nolags")
    log_run(client, exp2, resolve("cell=gru", "task.dependency_length=50"), 1.0,
            drop_params=("task.lag_min", "task.lag_median", "task.lag_max"))
    from rnnbench.report import main

    with pytest.raises(RnnbenchError, match=r"^--x lag_median: 1 of 1 runs have no param task.lag_median .*"
                                            r"use --x dependency_length$"):
        main(["--tracking-uri", mlflow_uri, "--experiment", "nolags", "--x", "lag_median",
              "--out", str(tmp_path / "nolag")])
    assert not (tmp_path / "nolag").exists()


def test_duplicate_run_key_newest_counts_and_is_reported(mlflow_uri, tmp_path, resolve):
    client = _client(mlflow_uri)
    exp = client.create_experiment("twice")
    config = resolve("cell=gru", "task.dependency_length=50")
    old = log_run(client, exp, config, 0.2)
    time.sleep(0.01)
    log_run(client, exp, config, 1.0)
    text, summary = report(mlflow_uri, tmp_path / "rep", "--experiment", "twice")
    (line,) = summary["lines"]
    assert line["points"]["50"]["planned"] == 1 and line["longest_solved"] == 50
    assert summary["runs"]["duplicates"] == 1
    assert "the newest counts" in text and old in text


@pytest.mark.parametrize("args, expected", [
    (["--threshold", "1.5"], "argument --threshold: '1.5' is not allowed: a number in (0, 1]"),
    (["--threshold", "abc"], "argument --threshold: 'abc' is not allowed: a number in (0, 1]"),
    (["--x", "lag_mean"], "argument --x: invalid choice: 'lag_mean' (choose from"),
    (["--attach"], "--attach needs --parent RUN_ID"),
    (["--plot", "accuracy.pdf"], "--plot accuracy.pdf: expected a .png file path"),
    (["--metric", ""], "argument --metric: '' is not allowed"),
])
def test_bad_arguments_are_refused_in_one_line(tmp_path, args, expected):
    from rnnbench.report import main

    with pytest.raises(RnnbenchError) as info:
        main(["--tracking-uri", f"sqlite:///{tmp_path}/none.db", "--out", str(tmp_path / "rep"), *args])
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_is_refused(tmp_path):
    from rnnbench.report import main

    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    with pytest.raises(RnnbenchError, match=r"^--out .*notes.txt: is an existing file; expected a folder"):
        main(["--tracking-uri", f"sqlite:///{tmp_path}/none.db", "--out", str(existing)])
    assert existing.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_cli_scenarios_and_refusals(mlflow_uri, tmp_path, resolve, cli):
    """The installed command on the mixed-configs store, and its one-line refusals (no traceback)."""
    client = _client(mlflow_uri)
    exp = client.create_experiment("mixed")
    for seed in range(3):
        log_run(client, exp, resolve("cell=rnn_tanh", "task.dependency_length=100", f"seed={seed}"), 0.3)
        log_run(client, exp, resolve("cell=rnn_tanh", "task.dependency_length=100", f"seed={seed}",
                                     "model.bidirectional=true"), 1.0)
    out = tmp_path / "rep"
    proc = cli("report", "--experiment", "mixed", "--tracking-uri", mlflow_uri, "--out", str(out), check=True)
    assert "| adding (arjovsky2016) | rnn_tanh (model.bidirectional=False) | none |" in proc.stdout
    assert "| adding (arjovsky2016) | rnn_tanh (model.bidirectional=True) | 100 |" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [line["longest_solved"] for line in summary["lines"]] == [None, 100]
    for name in ("accuracy.png", "loss_curves.png", "results.csv"):
        assert (out / name).stat().st_size > 0

    existing = tmp_path / "file.txt"
    existing.write_text("")
    for args, needle in ((["--out", str(existing)], "--out"), (["--threshold", "2"], "--threshold"),
                         (["--x", "nope"], "--x")):
        proc = cli("report", "--experiment", "mixed", "--tracking-uri", mlflow_uri, *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rnnbench: error: ") and needle in lines[0], proc.stderr
