"""Runs that survive: bit-for-bit reproducibility, SIGKILL and SIGTERM with resume, reaping, a failing store."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RNNBENCH, run_cli

LONG = ["model.hidden_size=16", "task.dependency_length=40", "trainer.batch_size=32", "trainer.steps=300",
        "trainer.eval_every=100", "trainer.eval_batches=1", "trainer.log_every=5", "trainer.checkpoint_every=10",
        "trainer.threads=1", "trainer.early_stop=false", "diagnostics=off"]


def only_run(uri: str):
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("rnnbench").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def start_and_wait_for_checkpoint(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start a run that holds at its 25th step (after its first checkpoint) until a signal arrives, so the signal
    lands mid-training however fast the machine."""
    env = {**os.environ, "RNNBENCH_FAULT": "train.step@25:hold"}
    proc = subprocess.Popen([RNNBENCH, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while not list((cwd / "checkpoints").glob("*.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.fixture
def reference(tmp_path_factory, _template_store):
    """The metrics of a run that was never interrupted."""
    import shutil

    cwd = tmp_path_factory.mktemp("reference")
    shutil.copy(_template_store, cwd / "ref.db")
    uri = f"sqlite:///{cwd / 'ref.db'}"
    run_cli([*LONG, f"tracking.uri={uri}"], cwd, check=True)
    client, run = only_run(uri)
    return {key: history(client, run.info.run_id, key) for key in ("train/loss", "eval/loss", "eval/accuracy")}


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_into_the_same_run_with_identical_results(tmp_path, mlflow_uri, reference):
    args = [*LONG, f"tracking.uri={mlflow_uri}"]
    proc = start_and_wait_for_checkpoint(args, tmp_path)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    client, run = only_run(mlflow_uri)
    assert run.info.status == "RUNNING"
    logged_before = len(history(client, run.info.run_id, "train/loss"))
    assert logged_before < 300

    again = run_cli(args, tmp_path, check=True)
    assert "resumed 1 run(s) at step" in again.stdout + again.stderr
    client, resumed = only_run(mlflow_uri)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    for key, expected in reference.items():
        assert history(client, run.info.run_id, key) == expected, key


@pytest.mark.slow
def test_sigterm_checkpoints_marks_killed_and_exits_nonzero(tmp_path, mlflow_uri):
    args = [*LONG, f"tracking.uri={mlflow_uri}"]
    proc = start_and_wait_for_checkpoint(args, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    client, run = only_run(mlflow_uri)
    assert run.info.status == "KILLED"
    assert run.data.tags["rnnbench.outcome"] == "interrupted"
    import torch

    (ckpt,) = (tmp_path / "checkpoints").glob("*.pt")
    state = torch.load(ckpt, weights_only=False)
    assert state["run_id"] == run.info.run_id
    assert history(client, run.info.run_id, "train/loss")[-1][0] == state["step"]

    run_cli(args, tmp_path, check=True)
    client, done = only_run(mlflow_uri)
    assert done.info.run_id == run.info.run_id and done.info.status == "FINISHED"
    steps = [s for s, _ in history(client, run.info.run_id, "train/loss")]
    assert steps == list(range(1, 301))


@pytest.mark.slow
def test_finished_run_is_skipped_on_rerun_and_rerun_on_request(cli, mlflow_uri):
    args = ["trainer=smoke", "model.hidden_size=8", "task.dependency_length=10", f"tracking.uri={mlflow_uri}"]
    cli(*args, check=True)
    skipped = cli(*args, check=True)
    assert "already finished" in skipped.stderr
    assert len(only_run(mlflow_uri)[0].search_runs(["1"])) == 1
    cli(*args, "trainer.resume=false", check=True)
    assert len(MlflowClient(mlflow_uri).search_runs(["1"])) == 2


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics_in_fresh_processes_and_joblib_workers(tmp_path, _template_store):
    import shutil

    base = ["model.hidden_size=8", "task=copy", "task.dependency_length=12", "trainer=smoke", "model.dropout=0.2",
            "model.num_layers=2", "trainer.resume=false"]
    results = []
    for name, extra in (("a", ["seed=1"]), ("b", ["seed=1"]),
                        ("c", ["-m", "launcher=joblib", "hydra.launcher.n_jobs=1", "seed=0,1"])):
        shutil.copy(_template_store, tmp_path / f"{name}.db")
        uri = f"sqlite:///{tmp_path / f'{name}.db'}"
        flags = [a for a in extra if a.startswith("-")]
        run_cli([*flags, *base, *[a for a in extra if a not in flags], f"tracking.uri={uri}"], tmp_path, check=True)
        client = MlflowClient(tracking_uri=uri)
        runs = {r.data.params["seed"]: r for r in client.search_runs(["1"]) if "seed" in r.data.params}
        run = runs["1"]
        results.append({k: history(client, run.info.run_id, k) for k in ("train/loss", "eval/loss")})
    assert results[0] == results[1] == results[2]
    assert all(math.isfinite(v) for _, v in results[0]["train/loss"])


@pytest.mark.slow
def test_reap_kills_runs_with_a_stale_heartbeat_only(mlflow_uri, tmp_path):
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.create_experiment("reap")
    stale = client.create_run(exp, tags={"rnnbench.heartbeat": f"{time.time() - 3600:.0f}"}).info.run_id
    alive = client.create_run(exp, tags={"rnnbench.heartbeat": f"{time.time():.0f}"}).info.run_id
    proc = run_cli(["runs", "reap", "--tracking-uri", mlflow_uri, "--stale-after", "600"], tmp_path, check=True)
    assert stale in proc.stdout and alive not in proc.stdout
    assert client.get_run(stale).info.status == "KILLED"
    assert client.get_run(stale).data.tags["rnnbench.outcome"] == "interrupted"
    assert client.get_run(alive).info.status == "RUNNING"


@pytest.mark.slow
def test_store_failing_mid_run_keeps_results_locally_and_uploads_later(mlflow_uri, tmp_path):
    import shutil

    from rnnbench.tracking import MlflowTracker

    db = Path(mlflow_uri.removeprefix("sqlite:///"))
    tracker = MlflowTracker(mlflow_uri, "rnnbench", fallback_dir=tmp_path / "out")
    tracker.connect()
    run_id = tracker.start("r", {"a": "1"}, {"t": "x"})
    tracker.log_metrics({"train/loss": 1.0}, 1)
    tracker.flush()
    shutil.copy(db, tmp_path / "backup.db")
    db.write_bytes(b"this is not a database" * 1000)  # the store breaks under the running job
    tracker.log_metrics({"train/loss": 0.5, "eval/accuracy": 0.75}, 2)
    tracker.set_tags({"rnnbench.outcome": "learning"})
    tracker.end("FINISHED")
    journal = tmp_path / "out" / "unsent_tracking.jsonl"
    assert journal.exists()

    shutil.copy(tmp_path / "backup.db", db)  # the store is back
    proc = run_cli(["runs", "upload", str(journal)], tmp_path, check=True)
    assert run_id in proc.stdout
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["rnnbench.outcome"] == "learning"
    assert history(client, run_id, "train/loss") == [(1, 1.0), (2, 0.5)]
    assert run.data.metrics["eval/accuracy"] == 0.75
    assert not journal.exists()


@pytest.mark.slow
def test_upload_of_a_missing_journal_is_a_clear_error(tmp_path):
    proc = run_cli(["runs", "upload", str(tmp_path / "nope.jsonl")], tmp_path)
    assert proc.returncode == 2 and "no journal at" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_eight_parallel_jobs_on_a_fresh_default_store_all_land(cli, tmp_path):
    proc = cli("-m", "launcher=joblib", "hydra.launcher.n_jobs=8", "seed=0,1,2,3,4,5,6,7", "trainer.steps=4",
               "trainer.eval_every=4", "trainer.batch_size=4", "model.hidden_size=4", "task.dependency_length=6",
               "trainer.threads=1", "diagnostics=off", check=True)
    assert (tmp_path / "mlflow.db").exists(), proc.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    default = client.search_runs(["0"])
    assert default == []
    runs = client.search_runs([client.get_experiment_by_name("rnnbench").experiment_id])
    children = [r for r in runs if "rnnbench.cell" in r.data.tags]
    assert sorted(int(r.data.params["seed"]) for r in children) == list(range(8))
    parents = {r.data.tags.get("mlflow.parentRunId") for r in children}
    assert len(parents) == 1 and all(r.info.status == "FINISHED" for r in runs)
