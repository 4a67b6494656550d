"""Sweeps: the Hydra callback's parent run, child runs of parallel jobs, re-runs, and the report on the parent."""

from __future__ import annotations

import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from rnnbench.tracking import EXPERIMENT_ENV, PARENT_RUN_ENV

TINY = ["trainer=smoke", "model.hidden_size=4", "diagnostics=off", "trainer.progress=none", "trainer.threads=1"]


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _all_runs(client, experiment_ids: list[str]):
    from rnnbench.store import search_all

    return search_all(client, experiment_ids)


def _hydra_like_config(uri: str, sweep_dir: Path, backend: str = "mlflow", experiment: str = "unit") -> object:
    return OmegaConf.create(
        {
            "tracking": {"backend": backend, "uri": uri, "experiment": experiment},
            "hydra": {
                "sweep": {"dir": str(sweep_dir)},
                "overrides": {"task": ["cell=gru,lstm", "seed=0,1"]},
                "sweeper": {"params": None},
                "runtime": {"choices": {"experiment": None}},
                "launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
                "job": {"num": 0},
            },
        }
    )


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.delenv(EXPERIMENT_ENV, raising=False)
    monkeypatch.delenv("RNNBENCH_FAILURES_FILE", raising=False)
    yield monkeypatch
    from rnnbench import sweep

    sweep.close_stale()


def test_callback_parent_children_and_env_cleared(mlflow_uri, tmp_path, clean_env):
    from rnnbench.sweep import SweepCallback
    from rnnbench.tracking import MlflowTracker

    config = _hydra_like_config(mlflow_uri, tmp_path / "sweep")
    callback = SweepCallback()
    callback.on_multirun_start(config)
    parent, experiment = os.environ[PARENT_RUN_ENV], os.environ[EXPERIMENT_ENV]
    tracker = MlflowTracker(mlflow_uri, "ignored: the sweep's experiment wins")
    child = tracker.start("child", {"p": "1"}, {"rnnbench.run_key": "k1"})
    tracker.end("FINISHED")
    job = SimpleNamespace(cfg=None, overrides=["cell=gru"], status=SimpleNamespace(name="COMPLETED"))
    callback.on_job_end(config, job)
    callback.on_multirun_end(config)

    client = _client(mlflow_uri)
    run = client.get_run(child)
    assert run.info.experiment_id == experiment == client.get_experiment_by_name("unit").experiment_id
    assert run.data.tags["mlflow.parentRunId"] == parent
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.tags["rnnbench.sweep"] == "true"
    assert parent_run.data.tags["rnnbench.sweep.overrides"] == "cell=gru,lstm seed=0,1"
    assert parent_run.data.tags["rnnbench.sweep.dir"] == str(tmp_path / "sweep")
    assert PARENT_RUN_ENV not in os.environ and EXPERIMENT_ENV not in os.environ
    assert "sweep/runs.json" in {a.path for a in client.list_artifacts(parent, "sweep")}


def test_user_failure_marks_parent_failed(mlflow_uri, tmp_path, clean_env):
    from rnnbench.sweep import SweepCallback

    failures = tmp_path / "failures.txt"
    failures.write_text("job 1 (cell=nope): Unknown cell 'nope'\n")
    clean_env.setenv("RNNBENCH_FAILURES_FILE", str(failures))
    callback = SweepCallback()
    config = _hydra_like_config(mlflow_uri, tmp_path / "sweep")
    callback.on_multirun_start(config)
    parent = os.environ[PARENT_RUN_ENV]
    callback.on_multirun_end(config)
    assert _client(mlflow_uri).get_run(parent).info.status == "FAILED"


def test_parent_closed_and_env_cleared_when_end_hook_is_skipped(mlflow_uri, tmp_path, clean_env):
    """Hydra skips on_multirun_end when a job raised: the next run in this process (or atexit) closes it."""
    from rnnbench import sweep

    clean_env.setenv(PARENT_RUN_ENV, "set-by-the-user")
    config = _hydra_like_config(mlflow_uri, tmp_path / "sweep")
    sweep.SweepCallback().on_multirun_start(config)
    parent = os.environ[PARENT_RUN_ENV]
    assert parent != "set-by-the-user"
    sweep.SweepCallback().on_run_start(OmegaConf.create({}))  # a later single run in the same process
    assert _client(mlflow_uri).get_run(parent).info.status == "FAILED"
    assert os.environ[PARENT_RUN_ENV] == "set-by-the-user"
    assert EXPERIMENT_ENV not in os.environ
    sweep._at_exit()  # nothing left to close


def test_tracking_none_creates_nothing(tmp_path, clean_env):
    from rnnbench.sweep import SweepCallback

    uri = f"sqlite:///{tmp_path}/never.db"
    callback = SweepCallback()
    callback.on_multirun_start(_hydra_like_config(uri, tmp_path / "sweep", backend="none"))
    assert PARENT_RUN_ENV not in os.environ and not (tmp_path / "never.db").exists()
    callback.on_multirun_end(OmegaConf.create({}))


def _succeeded(run) -> bool:
    return (run.info.status == "FINISHED" and run.data.tags.get("rnnbench.outcome") != "diverged"
            and run.data.metrics.get("final/accuracy", 0) >= 0.99)


def _check_report_matches_children(client, parent_id: str, children) -> None:
    """The parent's results.csv against the children's own ``final/accuracy`` (the report's metric); the longest
    solved length is contiguous from the shortest, and absent (not 0) when none is solved."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent_id, "report/results.csv", tmp)
        rows = list(csv.DictReader(open(path)))
    by_cell_length: dict[tuple[str, int], list] = {}
    for run in children:
        key = (run.data.params["cell.name"], int(run.data.params["task.dependency_length"]))
        by_cell_length.setdefault(key, []).append(run)
    assert {(r["cell"], int(r["dependency_length"])) for r in rows} == set(by_cell_length)
    parent_metrics = client.get_run(parent_id).data.metrics
    for row in rows:
        runs = by_cell_length[(row["cell"], int(row["dependency_length"]))]
        accs = [r.data.metrics["final/accuracy"] for r in runs if "final/accuracy" in r.data.metrics]
        assert int(row["seeds"]) == len(runs)
        assert int(row["succeeded"]) == sum(_succeeded(r) for r in runs)
        assert int(row["diverged"]) == sum(r.data.tags.get("rnnbench.outcome") == "diverged" for r in runs)
        if accs:
            assert float(row["median"]) == pytest.approx(statistics.median(accs))
            assert float(row["min"]) == pytest.approx(min(accs))
            assert float(row["max"]) == pytest.approx(max(accs))
        assert set(row["run_ids"].split()) == {r.info.run_id for r in runs}
    for cell in {c for c, _ in by_cell_length}:
        longest = None
        for t in sorted(t for c, t in by_cell_length if c == cell):
            runs = by_cell_length[(cell, t)]
            if 2 * sum(_succeeded(r) for r in runs) <= len(runs):
                break
            longest = t
        if longest is None:
            assert f"longest_solved/{cell}" not in parent_metrics
        else:
            assert parent_metrics[f"longest_solved/{cell}"] == float(longest)


@pytest.mark.slow
def test_parallel_sweep_on_a_fresh_store_and_rerun(tmp_path, cli):
    """2 cells x 2 lengths x 2 seeds with launcher=joblib on a store that does not exist yet."""
    db = tmp_path / "fresh" / "mlflow.db"
    db.parent.mkdir()
    assert not db.exists()
    args = ["-m", "launcher=joblib", "hydra.launcher.n_jobs=2", "cell=rnn_tanh,gru", "task.dependency_length=3,6",
            "seed=0,1", *TINY, f"tracking.uri=sqlite:///{db}", "tracking.experiment=sweeptest",
            f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    started = time.perf_counter()
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first_wall = time.perf_counter() - started

    client = _client(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("sweeptest")
    assert _all_runs(client, ["0"]) == []  # nothing landed in the Default experiment
    runs = _all_runs(client, [experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 8 == len(runs) - 1
    assert all(r.info.status == "FINISHED" for r in children)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rnnbench.sweep.launcher"] == "JoblibLauncher"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/accuracy.png", "report/results.csv", "report/report.md", "report/summary.json",
            "report/loss_curves.png"} <= arts
    _check_report_matches_children(client, parent.info.run_id, children)
    # the plan, written when the sweep started: every job's run key, with its group and seed
    assert parent.data.tags["rnnbench.sweep.planned_jobs"] == "8"
    with tempfile.TemporaryDirectory() as tmp:
        listing = json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep/runs.json", tmp)).read_text())
    planned = {m["run_key"]: (m["group_key"], m["seed"]) for m in listing["plan"]["members"]}
    assert planned == {r.data.tags["rnnbench.run_key"]: (r.data.tags["rnnbench.group_key"],
                                                          int(r.data.params["seed"])) for r in children}

    # The same command again: every job is skipped, and the new parent's report covers the earlier runs.
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("already finished with this configuration; skipped") == 8
    runs = _all_runs(client, [experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    assert len(parents) == 2 and len(runs) == 10
    second = next(p for p in parents if p.info.run_id != parent.info.run_id)
    assert second.info.status == "FINISHED"
    assert second.data.tags["rnnbench.sweep.reused_runs"] == "8"
    _check_report_matches_children(client, second.info.run_id, children)
    out = tmp_path / "again"
    proc = cli("report", "--parent", second.info.run_id, "--tracking-uri", f"sqlite:///{db}", "--out", str(out),
               check=True)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sum(int(r["seeds"]) for r in rows) == 8
    print(f"first sweep wall time {first_wall:.1f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(backend_uri: str, cwd: Path, timeout: float = 120,
                        extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on a free loopback port (``extra``: more of its options), once ``/health`` answers."""
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    log = open(cwd / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", backend_uri,
         "--workers", "1", *extra],
        cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # no background job runner (seven huey worker processes): this server only records runs
        env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited {proc.returncode}: {(cwd / 'mlflow-server.log').read_text()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise AssertionError(f"mlflow server did not answer /health in {timeout} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and every process it started (its own process group)."""
    import signal

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.slow
def test_parallel_sweep_against_mlflow_server(tmp_path, cli):
    server, url = start_mlflow_server(f"sqlite:///{tmp_path}/db.sqlite", tmp_path)
    try:
        proc = cli("-m", "launcher=joblib", "hydra.launcher.n_jobs=2", "cell=rnn_tanh,gru", "task.dependency_length=4",
                   *TINY, "tracking.experiment=served", f"hydra.sweep.dir={tmp_path / 'multirun'}",
                   env={"MLFLOW_TRACKING_URI": url})
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = _client(url)
        experiment = client.get_experiment_by_name("served")
        runs = _all_runs(client, [experiment.experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.params["cell.name"] for r in children) == ["gru", "rnn_tanh"]
        assert all(r.info.status == "FINISHED" for r in [parent, *children])
        assert _all_runs(client, ["0"]) == []
        assert "report/accuracy.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    finally:
        stop_server(server)


def test_gradient_flow_figure_from_runs_with_diagnostics(mlflow_uri, tmp_path):
    import json

    from mlflow.entities import Param

    from rnnbench import diagnostics

    from rnnbench.sweep import gradient_flow_figures

    client = _client(mlflow_uri)
    exp = client.create_experiment("grads")
    runs = []
    for cell, enabled in (("gru", "True"), ("lstm", "True"), ("rnn_tanh", "False")):
        rid = client.create_run(exp, tags={"rnnbench.cell": cell, "rnnbench.task": "adding"}).info.run_id
        params = {"cell.name": cell, "task.name": "adding", "task.dependency_length": "8",
                  "diagnostics.enabled": enabled}
        client.log_batch(rid, params=[Param(k, v) for k, v in params.items()])
        if cell == "gru":
            raw = tmp_path / diagnostics.RAW_FILE
            raw.write_text(json.dumps({"grad_norm": [[0.1 * (t + 1) for t in range(8)]], "steps": [10],
                                       "cell": cell, "task": "adding", "dependency_length": 8}))
            client.log_artifact(rid, str(raw), diagnostics.ARTIFACT_DIR)
        client.set_terminated(rid, "FINISHED")
        runs.append(client.get_run(rid))
    figures = gradient_flow_figures(client, runs)
    assert list(figures) == ["gradient_flow.png"]  # lstm has no arrays, rnn_tanh had diagnostics off
    assert gradient_flow_figures(client, runs[1:]) == {}


@pytest.mark.slow
def test_sweep_with_a_failing_job_closes_parent_failed(tmp_path, cli):
    db = tmp_path / "mlflow.db"
    proc = cli("-m", "model.num_layers=0,1", "cell=gru", "task.dependency_length=3", *TINY,
               f"tracking.uri=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'multirun'}")
    assert proc.returncode == 1
    assert "model.num_layers=0 is not allowed" in proc.stderr
    client = _client(f"sqlite:///{db}")
    runs = _all_runs(client, [client.get_experiment_by_name("rnnbench").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    assert parent.info.status == "FAILED"
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert child.info.status == "FINISHED"
    assert "report/accuracy.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_job_members_use_the_run_identity(compose):
    """The manifest's run keys are the runner's (``rnnbench.identity``: the runner tags its runs with them); a job
    with ``trainer.seeds=3`` is three members of one group."""
    from omegaconf import OmegaConf

    from rnnbench import identity
    from rnnbench.sweep_manifest import job_members, job_run_keys

    def resolved(*overrides):
        return OmegaConf.to_container(compose("cell=gru", "trainer=smoke", *overrides), resolve=True)

    cfg = compose("cell=gru", "seed=3", "trainer=smoke")
    assert job_run_keys(cfg) == [identity.run_key(resolved("seed=3"))]
    three = job_members(compose("cell=gru", "seed=3", "trainer=smoke", "trainer.seeds=3"))
    assert three["run_keys"] == [identity.run_key(resolved(f"seed={s}")) for s in (3, 4, 5)]
    assert three["seeds"] == [3, 4, 5]
    assert three["group_key"] == identity.group_key(resolved("seed=4"))
    assert three["settings"]["cell.name"] == "gru" and "seed" not in three["settings"]
    assert "trainer.seeds" not in three["settings"]


def test_plan_lists_every_job_of_the_sweep_before_it_runs(registry, tmp_path):
    """The basic sweeper's job list (its params, then the command line), composed as Hydra composes each job."""
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    from rnnbench import identity
    from rnnbench.report import plan_from_jobs
    from rnnbench.sweep_manifest import read_manifest, record_plan

    manifest = tmp_path / "jobs.jsonl"
    with initialize_config_module(config_module="rnnbench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["trainer=smoke"], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = ["cell=gru,lstm", "trainer=smoke"]
            cfg.hydra.sweeper.params = {"seed": "range(2)"}
        assert record_plan(manifest, cfg) == 4
        job = compose(config_name="config", overrides=["cell=lstm", "seed=1", "trainer=smoke"])
    lines = read_manifest(manifest)
    assert [line["overrides"] for line in lines] == [
        ["seed=0", "cell=gru", "trainer=smoke"], ["seed=0", "cell=lstm", "trainer=smoke"],
        ["seed=1", "cell=gru", "trainer=smoke"], ["seed=1", "cell=lstm", "trainer=smoke"]]
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(job, resolve=True)
    plan = plan_from_jobs(lines)
    assert plan.members[identity.run_key(resolved)] == (identity.group_key(resolved), 1)
    assert sorted(len(seeds) for seeds in plan.seeds().values()) == [2, 2]


def test_plan_from_manifest_lines():
    """A job's end line (its own config) wins over its plan line; planned jobs that never ended stay planned;
    run keys without a recorded group (an older manifest) cannot be placed."""
    from rnnbench.report import plan_from_jobs

    settings = {"cell.name": "gru", "task.dependency_length": "10"}
    lines = [
        {"event": "plan", "overrides": ["seed=0"], "run_keys": ["k0-planned"], "seeds": [0], "group_key": "g",
         "settings": settings},
        {"event": "plan", "overrides": ["seed=1"], "run_keys": ["k1"], "seeds": [1], "group_key": "g",
         "settings": settings},
        {"num": 0, "overrides": ["seed=0"], "status": "COMPLETED", "run_keys": ["k0"], "seeds": [0], "group_key": "g",
         "settings": settings},
        {"num": 5, "overrides": ["seed=9"], "status": "COMPLETED", "run_keys": ["old"]},
    ]
    plan = plan_from_jobs(lines)
    assert plan.members == {"k0": ("g", 0), "k1": ("g", 1)}
    assert plan.seeds() == {"g": {0, 1}} and plan.groups == {"g": settings}
    assert plan.unplaced == ["old"]
    assert plan_from_jobs([]).members == {} and not plan_from_jobs([])


def test_a_plan_describes_its_configurations_as_their_runs_do():
    """A plan recorded by an older rnnbench kept the unused ``model.hidden_size`` beside a parameter budget; its
    groups are compared by ``identity.group_settings``, as the runs' params are, so they fall on the same line."""
    from rnnbench import identity
    from rnnbench.report import Plan, plan_from_jobs

    recorded = {"cell.name": "gru", "task.name": "adding", "task.dependency_length": "50",
                "model.param_budget": "10000", "model.hidden_size": "64", "optim.lr": "0.001"}
    line = {"event": "plan", "overrides": ["cell=gru"], "run_keys": ["k0"], "seeds": [0], "group_key": "g",
            "settings": recorded}
    plan = plan_from_jobs([line])
    run_params = dict(recorded, **{"model.hidden_size": "26"})  # what the run logs: the size the budget chose
    assert plan.groups["g"] == identity.group_settings(run_params)
    assert "model.hidden_size" not in plan.groups["g"]
    assert Plan.from_json({"groups": {"g": recorded}}).groups["g"] == plan.groups["g"]
