"""End to end: a sweep, then the MLflow UI in headless Chromium shows its runs and the report image."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_sweep import TINY, _all_runs, _client, start_mlflow_server, stop_server

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def dump_dom(url: str, profile: Path, budget_ms: int = 20000, timeout: float = 180) -> str:
    """The DOM of ``url`` after the single-page app has had ``budget_ms`` of virtual time to render."""
    proc = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=timeout, check=False,
        env=dict(os.environ, HOME=str(profile)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium is not installed (/usr/bin/chromium)")
def test_ui_shows_sweep_runs_and_report_image(tmp_path, cli):
    db = tmp_path / "mlflow.db"
    proc = cli("-m", "cell=rnn_tanh,gru", "task.dependency_length=4", *TINY, f"tracking.uri=sqlite:///{db}",
               "tracking.experiment=ui", f"hydra.sweep.dir={tmp_path / 'multirun'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = _client(f"sqlite:///{db}")
    experiment_id = client.get_experiment_by_name("ui").experiment_id
    runs = _all_runs(client, [experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2

    server, url = start_mlflow_server(f"sqlite:///{db}", tmp_path)
    try:
        listing = dump_dom(f"{url}/#/experiments/{experiment_id}/runs", tmp_path / "profile1")
        assert parent.info.run_name in listing, listing[-3000:]
        # children are folded under their parent; the count covers them
        assert re.search(rf">{len(runs)}</strong>\s*matching runs", listing), listing[-3000:]

        page = dump_dom(
            f"{url}/#/experiments/{experiment_id}/runs/{parent.info.run_id}/artifacts/report/accuracy.png",
            tmp_path / "profile2",
        )
        assert "accuracy.png" in page and "results.csv" in page, page[-3000:]
        images = re.findall(r"<img[^>]*>", page)
        assert any('alt="report/accuracy.png"' in img and 'src="blob:' in img for img in images), images

        child_page = dump_dom(f"{url}/#/experiments/{experiment_id}/runs/{children[0].info.run_id}",
                              tmp_path / "profile3")
        assert children[0].info.run_name in child_page
        assert parent.info.run_name in child_page or parent.info.run_id in child_page  # "Parent run" link
    finally:
        stop_server(server)
        for profile in ("profile1", "profile2", "profile3"):
            shutil.rmtree(tmp_path / profile, ignore_errors=True)
