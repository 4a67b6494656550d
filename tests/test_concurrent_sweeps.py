"""Sweeps under an adversary: two started at once on one fresh store, and a launching process killed outright."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RNNBENCH

SMALL = ["trainer=smoke", "task.dependency_length=10", "model.hidden_size=8", "diagnostics=off"]


@pytest.mark.slow
def test_two_sweeps_at_once_on_a_fresh_store_each_land_whole(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    cells = {"first": "gru,lstm", "second": "rnn_tanh,irnn"}
    procs = {name: subprocess.Popen([RNNBENCH, "-m", f"cell={value}", *SMALL], cwd=tmp_path, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, value in cells.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "Traceback" not in err and "Warning" not in err, (name, err[-3000:])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "rnnbench.sweep" in r.data.tags]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    children = {p.info.run_id: sorted(r.data.tags["rnnbench.cell"] for r in runs
                                      if r.data.tags.get("mlflow.parentRunId") == p.info.run_id) for p in parents}
    assert sorted(children.values()) == [["gru", "lstm"], ["irnn", "rnn_tanh"]]
    assert all(r.info.status == "FINISHED" for r in runs)


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.slow
def test_kill_9_of_a_joblib_sweep_leaves_no_worker_and_the_same_command_resumes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    args = [RNNBENCH, "-m", "launcher=joblib", "hydra.launcher.n_jobs=2", "cell=gru,lstm", "task.dependency_length=20",
            "model.hidden_size=16", "trainer.steps=4000", "trainer.checkpoint_every=50", "trainer.early_stop=false",
            "diagnostics=off"]
    launcher = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    deadline = time.monotonic() + 300
    while len(list((tmp_path / "checkpoints").glob("*.pt"))) < 2:  # both jobs are training in their workers
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-3000:]
        time.sleep(0.2)
    workers = _descendants(launcher.pid)
    assert workers
    launcher.kill()  # SIGKILL: no handler of the launching process runs
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 120
    while _alive(workers):
        assert time.monotonic() < deadline, f"processes of the killed sweep still alive: {sorted(_alive(workers))}"
        time.sleep(0.5)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    (old_parent,) = [r for r in runs if "rnnbench.sweep" in r.data.tags]
    assert old_parent.info.status == "RUNNING"  # nothing of the launching process ran after SIGKILL
    children = [r for r in runs if "rnnbench.sweep" not in r.data.tags]
    assert len(children) == 2 and {r.info.status for r in children} == {"KILLED"}  # stopped with a checkpoint

    reap = subprocess.run([RNNBENCH, "runs", "reap", "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert f"would reap {old_parent.info.run_id}" in reap.stdout, reap.stdout + reap.stderr  # its launcher is gone

    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = client.search_runs(experiments)
    assert client.get_run(old_parent.info.run_id).info.status == "KILLED"  # closed by the next sweep
    resumed = [r for r in runs if "rnnbench.sweep" not in r.data.tags]
    assert sorted(r.info.run_id for r in resumed) == sorted(r.info.run_id for r in children)  # the same runs
    for run in resumed:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert len(steps) == len(set(steps)) and max(steps) == 4000


def test_reap_closes_a_sweep_parent_only_when_its_launcher_or_its_jobs_are_gone(mlflow_uri):
    from rnnbench.orphans import HOST_TAG, PID_TAG
    from rnnbench.runs import reap
    from rnnbench.tracking import HEARTBEAT_TAG

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.create_experiment("sweeps")
    exited = subprocess.Popen(["true"])
    exited.wait()
    here, there = os.uname().nodename, "another-host"
    two_hours_ago = int((time.time() - 7200) * 1000)

    def parent(pid: int, host: str, child_beat: float | None = None) -> str:
        tags = {"rnnbench.sweep": "true", PID_TAG: str(pid), HOST_TAG: host}
        run = client.create_run(experiment, start_time=two_hours_ago, tags=tags)
        if child_beat is not None:
            client.create_run(experiment, start_time=two_hours_ago,
                              tags={"mlflow.parentRunId": run.info.run_id, HEARTBEAT_TAG: str(child_beat)})
        return run.info.run_id

    live_here = parent(os.getpid(), here)                               # this process: alive, however old
    gone_here = parent(exited.pid, here)                                # its launching process has exited
    busy_there = parent(12345, there, child_beat=time.time())           # another host, a job beat just now
    idle_there = parent(12345, there, child_beat=time.time() - 3600)    # another host, silent for an hour
    reaped = set(reap(mlflow_uri, "sweeps", stale_after=600.0, dry_run=False))
    assert {gone_here, idle_there} <= reaped and not {live_here, busy_there} & reaped  # (+ the silent job)
    assert client.get_run(gone_here).info.status == "KILLED" and client.get_run(idle_there).info.status == "KILLED"
    assert client.get_run(live_here).info.status == "RUNNING" and client.get_run(busy_there).info.status == "RUNNING"


@pytest.mark.slow
def test_kill_inside_the_sweep_report_then_the_same_command_reports_without_training_again(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    args = [RNNBENCH, "-m", "cell=gru,rnn_tanh", *SMALL]
    killed = subprocess.run(args, cwd=tmp_path, env={**env, "RNNBENCH_FAULT": "sweep.report"}, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (first,) = [r for r in client.search_runs(experiments) if "rnnbench.sweep" in r.data.tags]
    children = {r.info.run_id for r in client.search_runs(experiments) if "rnnbench.sweep" not in r.data.tags}
    assert first.info.status == "RUNNING" and len(children) == 2  # the jobs ran; the report never came

    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    runs = client.search_runs(experiments)
    assert {r.info.run_id for r in runs if "rnnbench.sweep" not in r.data.tags} == children  # nothing trained again
    (second,) = [r for r in runs if "rnnbench.sweep" in r.data.tags and r.info.run_id != first.info.run_id]
    assert client.get_run(first.info.run_id).info.status == "KILLED"
    assert second.info.status == "FINISHED" and second.data.tags["rnnbench.sweep.reused_runs"] == "2"
    assert "report/accuracy.png" in {a.path for a in client.list_artifacts(second.info.run_id, "report")}
