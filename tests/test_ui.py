"""End to end in headless Chromium: a sweep, then the MLflow UI shows its runs and the report; the links a sweep
and ``rnnbench ui`` print open the model-training view on the runs table and on the HTML report with its figure;
the clicks from ``rnnbench ui``'s runs link to the accuracy-vs-length figure are counted."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from browser import CHROMIUM as CHROMIUM_BIN
from browser import Browser
from conftest import RNNBENCH, run_cli
from test_sweep import TINY, _all_runs, _client, _free_port, start_mlflow_server, stop_server

CHROMIUM = CHROMIUM_BIN
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PRINTED_BASE = "http://127.0.0.1:5000"
"""Where a sweep's links point (the address ``rnnbench ui`` listens on by default)."""
CLICKS_TO_FIGURE = 2
"""From ``rnnbench ui``'s runs link to the accuracy-vs-length figure: the sweep's run, then its report link."""

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="headless Chromium is not installed (/usr/bin/chromium)")


def dump_dom(url: str, profile: Path, budget_ms: int = 20000, timeout: float = 180) -> str:
    """The DOM of ``url`` after the single-page app has had ``budget_ms`` of virtual time to render."""
    proc = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=timeout, check=False,
        env=dict(os.environ, HOME=str(profile)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real two-cell, two-length sweep in a fresh store, as the command line runs it."""
    tmp = tmp_path_factory.mktemp("ui")
    db = tmp / "mlflow.db"
    proc = run_cli(["-m", "cell=rnn_tanh,gru", "task.dependency_length=4,8", *TINY, f"tracking.uri=sqlite:///{db}",
                    "tracking.experiment=ui", f"hydra.sweep.dir={tmp / 'multirun'}"], tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = _client(f"sqlite:///{db}")
    experiment_id = client.get_experiment_by_name("ui").experiment_id
    runs = _all_runs(client, [experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    return {"tmp": tmp, "db": db, "proc": proc, "experiment_id": experiment_id, "runs": runs, "parent": parent,
            "children": children}


@pytest.fixture(scope="module")
def server(sweep):
    proc, url = start_mlflow_server(f"sqlite:///{sweep['db']}", sweep["tmp"])
    yield url
    stop_server(proc)


def in_model_training_view(browser: Browser) -> None:
    """The page is MLflow's model-training view of an experiment, not its GenAI one (whose sidebar lists
    judges and evaluation runs, and whose experiment page opens on a traces overview)."""
    text = browser.text()
    assert "workflowType=machine_learning" in browser.url()
    assert "Judges" not in text and "Evaluation runs" not in text and "Detect Issues" not in text, text[:1500]


def runs_table(browser: Browser, names: list[str]) -> list[tuple[str, dict[str, str]]]:
    """Wait until the runs table lists every name; its rows in order: (run name, cells by column id)."""
    for name in names:
        browser.wait_text(name, 90)
    browser.wait(f"document.querySelectorAll('.ag-row').length >= {len(names)}", 30, "the table's rows")
    rows = browser.js(
        "(() => { const out = {}; for (const row of document.querySelectorAll('.ag-center-cols-container .ag-row, "
        ".ag-pinned-left-cols-container .ag-row')) { const index = row.getAttribute('row-index');"
        " out[index] = out[index] || {};"
        " for (const cell of row.querySelectorAll('.ag-cell')) out[index][cell.getAttribute('col-id')] ="
        " cell.innerText.trim(); }"
        " return Object.entries(out).sort((a, b) => a[0] - b[0]).map(([, cells]) => cells); })()"
    )
    return [(cells["attributes.`Run Name`"].splitlines()[-1], cells) for cells in rows]  # after its color chip


def report_figure(browser: Browser) -> dict[str, object]:
    """The accuracy-vs-length figure of the HTML report shown in the artifact viewer: its size as decoded."""
    return browser.frame_js(
        "(() => { const img = [...document.images].find(i => i.alt === 'accuracy against dependency length');"
        " return img && img.complete && img.naturalWidth > 0 && img.src.startsWith('data:image/png;base64,') ?"
        " {width: img.naturalWidth, height: img.naturalHeight, tables: document.querySelectorAll('table').length,"
        "  text: document.body.innerText} : null; })()",
        90, "the report's accuracy figure",
    )


@pytest.mark.slow
@needs_chromium
def test_ui_shows_sweep_runs_and_report_image(sweep, server, tmp_path):
    runs, parent, children, experiment_id = sweep["runs"], sweep["parent"], sweep["children"], sweep["experiment_id"]
    url = server
    try:
        listing = dump_dom(f"{url}/#/experiments/{experiment_id}/runs", tmp_path / "profile1")
        assert parent.info.run_name in listing, listing[-3000:]
        # children are folded under their parent; the count covers them
        assert re.search(rf">{len(runs)}</strong>\s*matching runs", listing), listing[-3000:]

        page = dump_dom(
            f"{url}/#/experiments/{experiment_id}/runs/{parent.info.run_id}/artifacts/report/accuracy.png",
            tmp_path / "profile2",
        )
        assert "accuracy.png" in page and "results.csv" in page and "index.html" in page, page[-3000:]
        images = re.findall(r"<img[^>]*>", page)
        assert any('alt="report/accuracy.png"' in img and 'src="blob:' in img for img in images), images

        child_page = dump_dom(f"{url}/#/experiments/{experiment_id}/runs/{children[0].info.run_id}",
                              tmp_path / "profile3")
        assert children[0].info.run_name in child_page
        assert parent.info.run_name in child_page or parent.info.run_id in child_page  # "Parent run" link
    finally:
        for profile in ("profile1", "profile2", "profile3"):
            shutil.rmtree(tmp_path / profile, ignore_errors=True)


@pytest.mark.slow
@needs_chromium
def test_the_links_a_sweep_prints_open_the_runs_table_and_the_report(sweep, server, tmp_path):
    """The sweep's links point at the UI's default address; the UI runs here on a free port, so the test swaps
    that address and follows the rest of each link as printed."""
    links = dict(re.findall(r"^\s+(runs|report):\s+(\S+)$", sweep["proc"].stderr, re.MULTILINE))
    assert set(links) == {"runs", "report"}, sweep["proc"].stderr[-2000:]
    assert all(link.startswith(PRINTED_BASE + "/#/") for link in links.values())
    assert "(start the MLflow UI with: rnnbench ui)" in sweep["proc"].stderr  # its mlflow.db is where it ran
    names = sorted(r.info.run_name for r in sweep["children"])
    with Browser(tmp_path / "profile") as browser:
        browser.goto(server + links["runs"][len(PRINTED_BASE):])
        rows = runs_table(browser, names)
        in_model_training_view(browser)
        # every run on its own row (not folded under the sweep), sorted by name, the sweep's run among them
        assert [name for name, _ in rows] == sorted([*names, sweep["parent"].info.run_name])
        table = dict(rows)
        for run in sweep["children"]:  # with the columns that explain them
            cells, tags, params = table[run.info.run_name], run.data.tags, run.data.params
            assert [cells[f"tags.`{key}`"] for key in ("cell", "task", "length", "seed", "rnnbench.outcome")] == \
                [tags[key] for key in ("cell", "task", "length", "seed", "rnnbench.outcome")]
            assert cells["params.`model.hidden_size`"] == params["model.hidden_size"]
            assert float(cells["metrics.`final/accuracy`"]) == pytest.approx(run.data.metrics["final/accuracy"],
                                                                             abs=1e-4)

        browser.click("label:has(input[value=CHART])")  # the chart view: accuracy against the length first
        browser.wait_text("accuracy against dependency length", 60)
        first = browser.wait(
            "(() => { const plot = document.querySelector('.js-plotly-plot');"
            " return plot && plot.querySelector('.xtitle') ? {x: plot.querySelector('.xtitle').textContent,"
            " y: plot.querySelector('.ytitle').textContent, points: plot.querySelectorAll('.point').length,"
            " ticks: [...plot.querySelectorAll('.xtick text')].map(t => t.textContent)} : null; })()",
            60, "the first chart")
        assert first["x"] == "task.dependency_length" and first["y"] == "final/accuracy"
        assert first["points"] == len(sweep["children"])  # every run plotted (the sweep's run has no accuracy)
        assert {"4", "8"} <= set(first["ticks"])

        clicks = browser.clicks
        browser.goto(server + links["report"][len(PRINTED_BASE):])
        figure = report_figure(browser)
        in_model_training_view(browser)
        assert figure["width"] > 300 and figure["height"] > 200 and figure["tables"] >= 2
        assert all(name.split("-")[0] in figure["text"] for name in names)  # the cells' lines in its tables
        assert browser.clicks == clicks  # the report link opens the figure without a click


def _read_links(proc: subprocess.Popen, timeout: float) -> tuple[str, dict[str, str]]:
    """What ``rnnbench ui`` prints until its report line, and the links by kind ("runs", "report")."""
    out = b""
    deadline = time.monotonic() + timeout
    while not re.search(rb"^  report.*\n", out, re.MULTILINE):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"rnnbench ui printed no links in {timeout:.0f} s (status {proc.poll()}): {out!r}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            out += os.read(proc.stdout.fileno(), 65536)
    text = out.decode()
    runs = re.search(r"runs of experiment '[^']+': (\S+)", text)
    report = re.search(r"report of [^:]+: (\S+)", text)
    assert runs and report, text
    return text, {"runs": runs.group(1), "report": report.group(1)}


@pytest.mark.slow
@needs_chromium
def test_rnnbench_ui_prints_links_that_open_and_the_figure_is_two_clicks_away(sweep, tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [RNNBENCH, "ui", "--port", str(port)], cwd=sweep["tmp"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        printed, links = _read_links(proc, 240)
        base = f"http://127.0.0.1:{port}"
        assert printed.startswith(f"rnnbench: MLflow UI on sqlite:///{sweep['db']} at {base}")
        assert all(link.startswith(base + "/#/") for link in links.values())
        names = sorted(r.info.run_name for r in sweep["children"])
        parent = sweep["parent"]
        with Browser(tmp_path / "profile") as browser:
            browser.goto(links["report"])  # the report link: the figure at once
            assert report_figure(browser)["width"] > 300
            in_model_training_view(browser)
            assert browser.clicks == 0

            browser.goto(links["runs"])  # the runs link, then a person's clicks to the figure
            runs_table(browser, [*names, parent.info.run_name])
            in_model_training_view(browser)
            browser.click(".ag-row a", parent.info.run_name)
            browser.wait_text("Sweep report: accuracy against dependency length", 60)
            # MLflow's own links do not carry the view: a page reached by a click shows in the view the browser
            # remembers (GenAI in a fresh one), as the README says
            assert parent.info.run_id in browser.url() and "workflowType" not in browser.url()
            assert "Evaluations" in browser.text()
            browser.click("a", "Sweep report: accuracy against dependency length")
            browser.follow_new_page()
            assert report_figure(browser)["width"] > 300
            in_model_training_view(browser)
            assert browser.clicks == CLICKS_TO_FIGURE
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        err = b""
        try:
            _, err = proc.communicate(timeout=120)  # drains both pipes, so output cannot hold the process up
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    assert proc.returncode == 0, err[-2000:].decode()
    with pytest.raises(OSError):  # the UI it started is gone with it
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


@pytest.mark.slow
def test_rnnbench_ui_on_a_tracking_server_prints_its_links(sweep, server, tmp_path):
    proc = run_cli(["ui", "--tracking-uri", server], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"rnnbench: {server} is an MLflow tracking server; its UI:")
    experiment_id, parent = sweep["experiment_id"], sweep["parent"]
    from rnnbench.ui import link

    assert f"runs of experiment 'ui': {link(server, experiment_id)}" in proc.stdout
    assert f": {link(server, experiment_id, parent.info.run_id, 'report/index.html')}" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written here
