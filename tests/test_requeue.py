"""SIGUSR2, SLURM's warning before a job's time limit: rnnbench checkpoints at a step boundary, closes its runs,
then hands the signal on to the handler that was there before (submitit's checkpoint-and-requeue), so a requeued
job resumes into the same run. Outside submitit the signal stops the run like SIGTERM. Without a cluster: the
real submitit in its local mode (it requeues a job that exits with its requeue status); with SLURM:
tests/test_slurm.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli

STEPS = 40
RUN = ["cell=gru", "task.dependency_length=5", "trainer=smoke", f"trainer.steps={STEPS}", "trainer.checkpoint_every=10",
       "trainer.early_stop=false", "model.hidden_size=4", "diagnostics=off", "trainer.progress=none",
       "trainer.threads=1"]
# RNNBENCH_FAULT sends the process SIGUSR2 during its first step: a resumed run never reaches step 1 again.
USR2_AT_STEP_1 = {"RNNBENCH_FAULT": "train.before_first_checkpoint:usr2"}


def _runs(uri: str, experiment: str = "rnnbench"):
    client = MlflowClient(tracking_uri=uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


# --- the hand-over, in this process ------------------------------------------------------------------------------


@pytest.fixture
def restore_usr2():
    before = signal.getsignal(signal.SIGUSR2)
    yield
    signal.signal(signal.SIGUSR2, before)


def test_signal_is_handed_on_to_the_earlier_handler_after_the_job_stops(restore_usr2):
    from rnnbench.runner import stop_on_signals
    from rnnbench.train import Interrupted

    calls: list[tuple[str, int]] = []
    def earlier(signum, frame):
        calls.append(("earlier", signum))

    signal.signal(signal.SIGUSR2, earlier)
    with pytest.raises(Interrupted) as stopped:
        with stop_on_signals() as stop_requested:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop_requested() == signal.SIGUSR2 and calls == []  # the job stops first, at a step boundary
            calls.append(("job closed its runs", 0))
    assert calls == [("job closed its runs", 0), ("earlier", signal.SIGUSR2)]
    assert stopped.value.signum == signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR2) is earlier  # put back


def test_a_requeueing_handler_ends_the_process_its_way(restore_usr2):
    """submitit's handler requeues and exits (SystemExit), or raises when it will not requeue: that wins over
    rnnbench's Interrupted, so submitit's own exit path runs."""
    from rnnbench.runner import stop_on_signals

    def requeue(signum, frame):
        raise SystemExit(-1)

    signal.signal(signal.SIGUSR2, requeue)
    with pytest.raises(SystemExit):
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGUSR2)


def test_default_handlers_are_not_called():
    """Outside submitit nothing is handed on: SIGUSR2's default would kill the process, SIGINT's raises
    KeyboardInterrupt; the job raises Interrupted and the CLI exits with the signal's status."""
    from rnnbench.runner import handed_on, stop_on_signals
    from rnnbench.train import Interrupted

    assert handed_on(signal.SIG_DFL) is None and handed_on(signal.SIG_IGN) is None
    assert handed_on(signal.default_int_handler) is None and handed_on(None) is None
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    with pytest.raises(Interrupted) as stopped:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGUSR2)
    assert stopped.value.signum == signal.SIGUSR2 and signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


# --- end to end ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigusr2_outside_a_cluster_stops_like_sigterm_and_the_same_command_resumes(tmp_path, mlflow_uri):
    args = [*RUN, f"tracking.uri={mlflow_uri}"]
    first = run_cli(args, tmp_path, env=USR2_AT_STEP_1, timeout=300)
    assert first.returncode == 128 + signal.SIGUSR2, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    client, (run,) = _runs(mlflow_uri)
    assert run.info.status == "KILLED" and run.data.tags["rnnbench.outcome"] == "interrupted"
    assert _steps(client, run.info.run_id) == [1]

    again = run_cli(args, tmp_path, check=True, timeout=300)
    assert "resumed 1 run(s) at step 1" in again.stdout + again.stderr
    client, (done,) = _runs(mlflow_uri)
    assert done.info.run_id == run.info.run_id and done.info.status == "FINISHED"
    assert _steps(client, run.info.run_id) == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_submitit_requeues_the_job_and_it_resumes_into_the_same_run(tmp_path, cli):
    """submitit's local executor runs its real signal handler and requeue (what launcher=slurm runs on a cluster):
    the job is started again and continues the run it was training."""
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "multirun"
    proc = cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "seed=0,1", *RUN,
               f"tracking.uri={db}", f"hydra.sweep.dir={sweep_dir}", env=USR2_AT_STEP_1, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = _runs(db)
    (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(runs) == 3  # one run per job, none left behind by a requeue
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["rnnbench.outcome"] != "interrupted"
        assert _steps(client, child.info.run_id) == list(range(1, STEPS + 1))
    jobs = [p for p in Path(sweep_dir, ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2
    for job in jobs:  # each job was requeued once and resumed its run
        log = "".join(p.read_text() for p in job.glob("*_log.*"))
        assert "Requeued job" in log and "resumed 1 run(s) at step 1" in log, log[-3000:]


@pytest.mark.slow
def test_a_job_out_of_requeues_fails_the_sweep_and_the_same_command_resumes_it(tmp_path, cli):
    """max_num_timeout used up: submitit will not requeue and raises; the job fails, the sweep's parent ends
    FAILED, the run stays KILLED with its checkpoint, and the same command again resumes it into the same run."""
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "+hydra.launcher.max_num_timeout=0",
            *RUN, f"tracking.uri={db}"]
    first = cli(*args, f"hydra.sweep.dir={tmp_path / 'first'}", env=USR2_AT_STEP_1, timeout=600)
    assert first.returncode != 0
    assert "timed-out too many times" in first.stdout + first.stderr, first.stderr[-3000:]
    client, runs = _runs(db)
    (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    (run,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FAILED" and run.info.status == "KILLED"
    assert _steps(client, run.info.run_id) == [1]

    again = cli(*args, f"hydra.sweep.dir={tmp_path / 'again'}", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    client, runs = _runs(db)
    done = client.get_run(run.info.run_id)
    assert done.info.status == "FINISHED" and len(runs) == 3  # two parents, one run
    assert _steps(client, run.info.run_id) == list(range(1, STEPS + 1))
