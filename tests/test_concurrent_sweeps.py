"""Sweeps started at the same moment on one fresh store: each lands whole under its own parent run."""

from __future__ import annotations

import os
import subprocess

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
