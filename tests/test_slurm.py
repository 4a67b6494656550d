"""``launcher=slurm`` on a real SLURM cluster (``.ci/slurm-up``: slurmctld, slurmd, munge, slurmdbd): a sweep's jobs
land under one parent; a job that reaches its time limit is requeued by submitit and resumes into the same run.
Skipped without a cluster; failed instead when RNNBENCH_REQUIRE_SERVICES=1."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import RNNBENCH
from service_check import service_missing
from test_sweep import _all_runs, _client, start_mlflow_server, stop_server

pytestmark = pytest.mark.slow

# The jobs' torch threads are left to rnnbench (no trainer.threads): one CPU each.
SMALL = ["trainer=smoke", "model.hidden_size=4", "diagnostics=off", "trainer.progress=none"]
ONE_CPU = ["launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cluster() -> None:
    """A SLURM cluster that runs jobs now and keeps accounting (submitit polls job states with sacct)."""
    if shutil.which("sbatch") is None:
        service_missing("SLURM", "sbatch is not on PATH (bring a cluster up with .ci/slurm-up)")
    try:
        nodes = _run("sinfo", "-h", "-o", "%T")
        accounting = _run("sacct", "-n", "-X", "-S", "now")
    except subprocess.TimeoutExpired:
        service_missing("SLURM", "sinfo/sacct did not answer in 30 s")
    if nodes.returncode != 0 or not re.search(r"\b(idle|mixed)\b", nodes.stdout):
        service_missing("SLURM", f"no idle node: {nodes.stdout.strip()} {nodes.stderr.strip()}")
    if accounting.returncode != 0:
        service_missing("SLURM", f"no accounting (sacct: {accounting.stderr.strip()})")


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory):
    """The shared tracking server the README asks SLURM jobs to log to."""
    cwd = tmp_path_factory.mktemp("slurm-server")
    proc, url = start_mlflow_server(f"sqlite:///{cwd / 'mlflow.db'}", cwd)
    yield url
    stop_server(proc)


def _sweep_runs(url: str, experiment: str):
    client = _client(url)
    runs = _all_runs(client, [client.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == len(children) + 1, "a run outside the sweep"
    return client, parent, children


def _launch(tmp_path: Path, url: str, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SBATCH_EXPORT")}
    env.update(MLFLOW_TRACKING_URI=url, MLFLOW_DISABLE_TELEMETRY="true", **(env_extra or {}))
    with open(tmp_path / "launch.log", "w") as log:
        return subprocess.Popen([RNNBENCH, "-m", *args, f"hydra.sweep.dir={tmp_path / 'multirun'}"], cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, tmp_path: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the sweep did not end in {timeout:.0f} s:\n{_tail(tmp_path)}") from None
    assert proc.returncode == 0, _tail(tmp_path)


def _tail(tmp_path: Path) -> str:
    logs = [tmp_path / "launch.log", *sorted((tmp_path / "multirun" / ".submitit").rglob("*_log.*"))]
    return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.is_file())


def test_a_sweep_on_slurm_lands_under_one_parent(tmp_path, server):
    proc = _launch(tmp_path, server, *ONE_CPU, "hydra.launcher.timeout_min=5", "cell=gru,rnn_tanh",
                   "task.dependency_length=4", *SMALL, "tracking.experiment=slurm-sweep")
    _finish(proc, tmp_path, timeout=300)
    client, parent, children = _sweep_runs(server, "slurm-sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["rnnbench.sweep.launcher"] == "SlurmLauncher"
    assert sorted(r.data.params["cell.name"] for r in children) == ["gru", "rnn_tanh"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert "report/accuracy.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    # --cpus-per-task=1 on a node with more CPUs: SLURM binds each job to one CPU, and torch follows
    assert [r.data.tags["rnnbench.threads"] for r in children] == ["1", "1"]


# Each attempt holds at its 50th training step until SLURM's signal arrives (RNNBENCH_FAULT=train.step@50:hold),
# so the time limit always lands at a known step, however fast the machine: attempt 1 stops at step 50, attempt 2
# (resumed at 51) at step 100, attempt 3 finishes steps 101-120.
STEPS = 120
HOLD = "train.step@50:hold"
SLOW = ["cell=gru", "model.hidden_size=16", "task.dependency_length=20", "trainer.batch_size=16",
        f"trainer.steps={STEPS}", "trainer.checkpoint_every=1000", f"trainer.eval_every={STEPS}",
        "trainer.final_eval_sequences=256", "trainer.early_stop=false", "diagnostics=off", "trainer.progress=none"]


def test_a_job_at_its_time_limit_is_requeued_and_resumes_into_the_same_run(tmp_path, server):
    """timeout_min=1: SLURM's SIGUSR2 comes about 30 s into each attempt, while it holds at its 50th step (signal_delay_s=5; SLURM checks limits
    every 30 s, so the default 120 s would signal before rnnbench has started). rnnbench checkpoints and hands the
    signal to submitit, which requeues the job; the requeued job resumes the same run, until it ends FINISHED.

    SLURM holds a requeued job for two minutes before it may start again; the test releases it as soon as the
    previous attempt has gone (``scontrol update StartTime=now``), which changes nothing else."""
    name = f"rnnbench-requeue-{uuid.uuid4().hex[:8]}"
    proc = _launch(tmp_path, server, *ONE_CPU, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=5",
                   "hydra.launcher.max_num_timeout=8", f"hydra.launcher.name={name}", *SLOW,
                   "tracking.experiment=slurm-requeue", env_extra={"RNNBENCH_FAULT": HOLD})
    deadline = time.monotonic() + 540
    held_since: dict[str, float] = {}
    released = 0
    while proc.poll() is None and time.monotonic() < deadline:
        queue = _run("squeue", "-h", "-n", name, "-o", "%i %T %r").stdout.split("\n")
        for line in filter(None, queue):
            job, state, reason = line.split(maxsplit=2)
            if state == "PENDING" and reason == "BeginTime":
                since = held_since.setdefault(job, time.monotonic())
                if time.monotonic() - since > 5:
                    _run("scontrol", "update", f"JobId={job}", "StartTime=now")
                    held_since.pop(job)
                    released += 1
            else:
                held_since.pop(job, None)
        time.sleep(1)
    _finish(proc, tmp_path, timeout=max(1.0, deadline - time.monotonic()))

    client, parent, (child,) = _sweep_runs(server, "slurm-requeue")
    assert parent.info.status == "FINISHED"
    assert child.info.status == "FINISHED" and child.data.tags["rnnbench.outcome"] != "interrupted"
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, STEPS + 1))  # every step logged once, across the attempts
    log = "".join(p.read_text() for p in (tmp_path / "multirun" / ".submitit").rglob("*_log.out"))
    attempts = re.findall(r"run (\w+): gru on adding", log)
    assert len(attempts) >= 3, log[-4000:]  # each attempt holds at its 50th step: stopped by 50, by 100, done
    assert set(attempts) == {child.info.run_id}, log[-4000:]
    assert log.count("resuming at step") == len(attempts) - 1 and "Requeued job" in log, log[-4000:]
    assert released >= 1
