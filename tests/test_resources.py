"""The CPUs a job was given (rnnbench.resources.usable_cpus): its affinity mask, capped by SLURM_CPUS_PER_TASK;
torch threads default to them divided by the jobs running side by side."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import RNNBENCH
from rnnbench.resources import usable_cpus

AFFINITY = sorted(os.sched_getaffinity(0))
USABLE = "from rnnbench.resources import usable_cpus; print(usable_cpus())"


def _pinned(cpus: set[int]):
    return lambda: os.sched_setaffinity(0, cpus)


def test_affinity_without_slurm():
    assert usable_cpus({}) == len(AFFINITY)


def test_a_process_pinned_to_one_cpu_counts_one():
    """The mask is read, not the machine's CPU count (what ``taskset``, a cpuset or SLURM's task binding set)."""
    out = subprocess.run([sys.executable, "-c", USABLE], preexec_fn=_pinned({AFFINITY[0]}), env={},
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1"


def test_slurm_cpus_per_task_caps_the_mask():
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "1"}) == 1
    assert usable_cpus({"SLURM_CPUS_PER_TASK": str(len(AFFINITY) + 7)}) == len(AFFINITY)  # never above the mask
    for junk in ("", "0", "-2", "two", " "):
        assert usable_cpus({"SLURM_CPUS_PER_TASK": junk}) == len(AFFINITY)


@pytest.mark.slow
@pytest.mark.parametrize("given", ["affinity", "slurm"])
def test_torch_threads_follow_the_cpus_the_job_was_given(tmp_path, mlflow_uri, given):
    """No ``trainer.threads``: a job's torch threads are the CPUs it was given (one job), recorded as a tag."""
    if len(AFFINITY) < 2:
        pytest.skip("needs two CPUs to tell one CPU from all of them")
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CPUS_PER_TASK", "MLFLOW_TRACKING_URI")}
    if given == "slurm":
        env["SLURM_CPUS_PER_TASK"] = "1"
    proc = subprocess.run(
        [RNNBENCH, "cell=gru", "task.dependency_length=3", "trainer=smoke", "trainer.steps=2", "model.hidden_size=4",
         "diagnostics=off", "trainer.progress=none", f"tracking.uri={mlflow_uri}"],
        cwd=tmp_path, env=env, preexec_fn=_pinned({AFFINITY[0]}) if given == "affinity" else None,
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rnnbench").experiment_id])
    assert run.data.tags["rnnbench.threads"] == "1"


SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def test_a_slurm_sweep_needs_the_shells_environment_exported():
    from omegaconf import OmegaConf

    from rnnbench.errors import RnnbenchError
    from rnnbench.resources import check_slurm_export

    slurm = OmegaConf.create({"hydra": {"launcher": {"_target_": SLURM_LAUNCHER}}})
    for fine in ({}, {"SBATCH_EXPORT": "ALL"}, {"SBATCH_EXPORT": "all,FOO=1"}):
        check_slurm_export(slurm, fine)
    for refused in ("NONE", "NIL", "PATH,HOME"):
        with pytest.raises(RnnbenchError, match=f"SBATCH_EXPORT={refused} .*SBATCH_EXPORT=ALL rnnbench -m"):
            check_slurm_export(slurm, {"SBATCH_EXPORT": refused})
    joblib = OmegaConf.create({"hydra": {"launcher": {"_target_": "hydra_plugins.JoblibLauncher"}}})
    check_slurm_export(joblib, {"SBATCH_EXPORT": "NONE"})  # not a SLURM sweep: none of its business


@pytest.mark.slow
def test_sbatch_export_none_is_refused_before_anything_is_submitted(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["SBATCH_EXPORT"] = "NONE"
    proc = subprocess.run([RNNBENCH, "-m", "launcher=slurm", "cell=gru", "trainer=smoke",
                           f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("rnnbench: error: SBATCH_EXPORT=NONE would keep")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sweep" / ".submitit").exists()
