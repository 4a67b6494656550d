"""Kills at the worst moments, then the same command again: every run resumes into the same MLflow run and ends
with every metric identical, bit for bit, to an uninterrupted run, every step logged once, none left RUNNING.

Kill points are fault-injection points (``RNNBENCH_FAULT``), so the tests do not depend on timing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RNNBENCH, run_cli

pytestmark = pytest.mark.slow

BASE = ["task=adding", "cell=gru", "task.dependency_length=10", "model.hidden_size=16", "trainer.steps=240",
        "trainer.eval_every=60", "trainer.log_every=20", "trainer.checkpoint_every=40", "trainer.threads=1",
        "trainer.final_eval_sequences=1000", "trainer.early_stop=false", "diagnostics.every=80",
        "trainer.progress=none"]
SEEDS4 = [*BASE, "trainer.seeds=4"]


def store(tmp_path: Path, template: Path, name: str) -> tuple[Path, str]:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(template, folder / "mlflow.db")
    return folder, f"sqlite:///{folder / 'mlflow.db'}"


def runs_by_seed(uri: str) -> dict[str, dict]:
    """Per seed: status, outcome, every metric's full history (volatile timing metrics left out), artifacts."""
    client = MlflowClient(tracking_uri=uri)
    out = {}
    for run in client.search_runs(["1"]):
        metrics = {}
        for key in run.data.metrics:
            if key in ("time/steps_per_second", "diag/seconds"):
                continue
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            metrics[key] = history
        artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id, "diagnostics"))
        out.setdefault(run.data.params["seed"], []).append(
            {"id": run.info.run_id, "status": run.info.status, "outcome": run.data.tags.get("rnnbench.outcome"),
             "metrics": metrics, "artifacts": artifacts})
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, _template_store) -> dict[str, dict[str, dict]]:
    """The stores of uninterrupted single-seed and four-seed runs."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    out = {}
    for name, args in (("one", BASE), ("four", SEEDS4)):
        folder, uri = store(tmp, _template_store, name)
        run_cli([*args, f"tracking.uri={uri}"], folder, check=True)
        out[name] = runs_by_seed(uri)
    return out


def assert_identical(resumed: dict[str, list[dict]], reference: dict[str, list[dict]]) -> None:
    assert resumed.keys() == reference.keys()
    for seed, runs in resumed.items():
        (run,) = runs  # one run per seed: no second run for the same run key
        (ref,) = reference[seed]
        assert run["status"] == "FINISHED" and run["outcome"] == ref["outcome"]
        for key, history in run["metrics"].items():
            steps = [s for s, _ in history]
            assert len(steps) == len(set(steps)), f"seed {seed}: {key} logged a step twice"
        assert run["metrics"] == ref["metrics"], seed
        assert run["artifacts"] == ref["artifacts"] and run["artifacts"], seed


def kill_then_rerun(tmp_path: Path, template: Path, args: list[str], fault: str) -> dict[str, list[dict]]:
    folder, uri = store(tmp_path, template, "killed")
    first = run_cli([*args, f"tracking.uri={uri}"], folder, env={"RNNBENCH_FAULT": fault})
    assert first.returncode == -signal.SIGKILL, (first.returncode, first.stderr[-2000:])
    again = run_cli([*args, f"tracking.uri={uri}"], folder, check=True)
    assert "Traceback" not in again.stderr
    assert not list((folder / "checkpoints").glob("*.tmp*"))  # a torn write is cleaned up
    return runs_by_seed(uri)


@pytest.mark.parametrize("fault", ["checkpoint.write@6", "checkpoint.write@9", "train.after_last_step"])
def test_four_seeds_killed_resume_identically(tmp_path, _template_store, uninterrupted, fault):
    """``checkpoint.write@6``: killed inside the second checkpoint round, two members ahead of the others."""
    assert_identical(kill_then_rerun(tmp_path, _template_store, SEEDS4, fault), uninterrupted["four"])


@pytest.mark.parametrize("fault", ["train.before_first_checkpoint", "checkpoint.write@2", "train.after_last_step"])
def test_one_seed_killed_resumes_identically(tmp_path, _template_store, uninterrupted, fault):
    assert_identical(kill_then_rerun(tmp_path, _template_store, BASE, fault), uninterrupted["one"])


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, _template_store, uninterrupted):
    folder, uri = store(tmp_path, _template_store, "truncated")
    first = run_cli([*BASE, f"tracking.uri={uri}"], folder, env={"RNNBENCH_FAULT": "checkpoint.write@4"})
    assert first.returncode == -signal.SIGKILL
    (current,) = (folder / "checkpoints").glob("*.pt")
    current.write_bytes(current.read_bytes()[:100])
    again = run_cli([*BASE, f"tracking.uri={uri}"], folder, check=True)
    assert "unreadable" in again.stdout + again.stderr and "Traceback" not in again.stderr
    assert_identical(runs_by_seed(uri), uninterrupted["one"])


def test_sigterm_after_the_last_step_still_closes_the_run(tmp_path, _template_store, uninterrupted):
    folder, uri = store(tmp_path, _template_store, "term")
    proc = run_cli([*BASE, f"tracking.uri={uri}"], folder, env={"RNNBENCH_FAULT": "train.after_last_step:term"})
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in proc.stderr
    assert_identical(runs_by_seed(uri), uninterrupted["one"])


def test_seed_parallel_equals_separate_runs_within_the_stated_tolerance(uninterrupted):
    """The README states the tolerance: members of a ``trainer.seeds=4`` job compute each seed's run in another
    order of floating-point operations; every logged value agrees with the single run to 1e-4 relative."""
    one = uninterrupted["one"]["0"][0]["metrics"]
    four = uninterrupted["four"]["0"][0]["metrics"]
    assert one.keys() == four.keys()
    worst = 0.0
    for key, history in one.items():
        assert [s for s, _ in history] == [s for s, _ in four[key]], key
        for (_, a), (_, b) in zip(history, four[key]):
            worst = max(worst, abs(a - b) / max(abs(a), 1e-3))
    assert worst < 1e-4, worst


def test_two_identical_commands_at_once(tmp_path, _template_store):
    """The second command sees the first one's lock and refuses with one line; the first is untouched."""
    folder, uri = store(tmp_path, _template_store, "twice")
    args = [RNNBENCH, *BASE, "trainer.steps=2000", f"tracking.uri={uri}"]
    # The first command holds at its 20th step until the SIGTERM below arrives, however fast the machine.
    env = {**os.environ, "RNNBENCH_FAULT": "train.step@20:hold"}
    first = subprocess.Popen(args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((folder / "checkpoints").glob("*.lock")):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    lines = [line for line in second.stderr.splitlines() if line.startswith("rnnbench: error:")]
    assert len(lines) == 1 and "being trained by process" in lines[0] and "Traceback" not in second.stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    (run,) = MlflowClient(tracking_uri=uri).search_runs(["1"])
    assert run.info.status == "KILLED"
    steps = [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "train/loss")]
    assert len(steps) == len(set(steps))
