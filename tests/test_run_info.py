"""Runs that explain themselves: what a run and a sweep's parent carry in MLflow (read back from real stores
written by the real command), the presets' experiments, the HTML report, and the links rnnbench prints."""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from test_sweep import TINY, _all_runs, _client

PRESETS = sorted(p.name[: -len(".yaml")] for p in resources.files("rnnbench.conf.experiment").iterdir()
                 if p.name.endswith(".yaml"))


def test_every_preset_is_found():
    assert {"quick", "adding_lengths", "copy_lengths", "greff_variants", "gradient_flow"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_logs_to_the_experiment_of_its_name(compose, preset):
    assert compose(f"experiment={preset}").tracking.experiment == preset


def test_params_leave_out_what_does_nothing(compose):
    from omegaconf import OmegaConf

    from rnnbench.run_info import run_params, run_tags

    resolved = OmegaConf.to_container(compose("diagnostics=off", "model.param_budget=2000"), resolve=True)
    params = run_params(resolved, {"sequence_length": 60}, hidden=20, num_parameters=1981, path="fused")
    assert not [k for k in params if k.startswith("diagnostics")]
    assert params["model.hidden_size"] == params["model.resolved_hidden_size"] == "20"
    assert params["model.param_budget"] == "2000" and params["task.sequence_length"] == "60"

    resolved = OmegaConf.to_container(compose("model.hidden_size=48"), resolve=True)
    params = run_params(resolved, {}, hidden=48, num_parameters=100, path="loop")
    assert params["diagnostics.enabled"] == "True" and params["model.hidden_size"] == "48"
    assert run_tags("gru", "adding", 50, 3) == {"cell": "gru", "task": "adding", "length": "50", "seed": "3"}


def test_a_budget_decides_the_hidden_size_in_the_report_settings_too():
    from rnnbench.identity import group_settings

    assert "model.hidden_size" not in group_settings({"model.hidden_size": "64", "model.param_budget": "2000"})
    assert group_settings({"model.hidden_size": "64", "model.param_budget": "null"})["model.hidden_size"] == "64"


def test_links_open_in_the_model_training_view():
    from rnnbench.ui import link

    runs = urlsplit(link("http://127.0.0.1:5000", "7"))
    route, _, query = runs.fragment.partition("?")
    assert route == "/experiments/7/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "viewStateShareKey": ["rnnbench"]}
    page = link(None, "7", "abc", "report/index.html")
    assert page == "#/experiments/7/runs/abc/artifacts/report/index.html?workflowType=machine_learning"


def _links(text: str) -> list[str]:
    return re.findall(r"https?://\S+", text)


@pytest.fixture(scope="module")
def budget_sweep(tmp_path_factory):
    """A real sweep with a parameter budget and diagnostics off, logged to a fresh store."""
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("run-info")
    db = tmp / "mlflow.db"
    args = ["-m", "cell=rnn_tanh,gru", "task.dependency_length=4,8", *[a for a in TINY if "hidden_size" not in a],
            "model.param_budget=300", f"tracking.uri=sqlite:///{db}", "tracking.experiment=explained",
            f"hydra.sweep.dir={tmp / 'multirun'}"]
    proc = run_cli(args, tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = _client(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("explained")
    runs = _all_runs(client, [experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    children = [r for r in runs if r is not parent]
    return {"proc": proc, "client": client, "experiment": experiment, "parent": parent, "children": children,
            "tmp": tmp}


@pytest.mark.slow
def test_runs_carry_short_tags_and_no_param_that_does_nothing(budget_sweep):
    children = budget_sweep["children"]
    assert len(children) == 4
    for run in children:
        params, tags = run.data.params, run.data.tags
        assert tags["cell"] == params["cell.name"] and tags["task"] == params["task.name"]
        assert tags["length"] == params["task.dependency_length"] and tags["seed"] == params["seed"]
        assert run.info.run_name == f"{tags['cell']}-{tags['task']}-T{tags['length']}-s{tags['seed']}"
        assert not [k for k in params if k.startswith("diagnostics")]  # diagnostics=off
        assert params["model.param_budget"] == "300"
        assert params["model.hidden_size"] == params["model.resolved_hidden_size"] != "64"  # not the config's


@pytest.mark.slow
def test_the_parent_run_logs_the_sweep_and_no_zero_for_none(budget_sweep, tmp_path):
    parent, client = budget_sweep["parent"], budget_sweep["client"]
    params = parent.data.params
    assert params["sweep.cell"] == "rnn_tanh,gru" and params["sweep.task.dependency_length"] == "4,8"
    assert params["sweep.preset"] == "none" and params["sweep.jobs"] == "4"
    assert params["sweep.model.param_budget"] == "300"
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "report/summary.json", str(tmp_path)))
                         .read_text())
    # one complete line per cell, its hidden size given by the budget
    assert sorted(line["cell"] for line in summary["lines"]) == ["gru", "rnn_tanh"]
    assert all(line["complete"] and line["lengths"] == [4, 8] for line in summary["lines"])
    metrics = parent.data.metrics
    for line in summary["lines"]:
        key = f"longest_solved/{line['cell']}"
        if line["longest_solved"] is None:
            assert key not in metrics  # the report says "none": no number in MLflow
        else:
            assert metrics[key] == line["longest_solved"]
        rate = metrics[f"success_rate/{line['cell']}"]
        assert rate == round(rate, 3) == line["success_rate"]


@pytest.mark.slow
def test_the_html_report_has_the_figures_and_the_tables_of_report_md(budget_sweep, tmp_path):
    parent, client = budget_sweep["parent"], budget_sweep["client"]
    folder = Path(client.download_artifacts(parent.info.run_id, "report", str(tmp_path)))
    page = (folder / "index.html").read_text()
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    import base64

    assert {alt for alt, _ in images} >= {"accuracy against dependency length", "training loss at the longest length",
                                          "capacity per cell and task"}
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    assert "](accuracy.png)" not in (folder / "report.md").read_text()  # MLflow's viewer cannot show it
    assert "Figure `accuracy.png`" in (folder / "report.md").read_text()

    def md_rows(text: str) -> list[list[str]]:
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
                if line.startswith("|") and not set(line) <= set("|-: ")]
        return [[re.sub(r"\*\*(.*?)\*\*", r"\1", c).replace("`", "") for c in row] for row in rows]

    def html_rows(text: str) -> list[list[str]]:
        return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)]
                for row in re.findall(r"<tr>(.*?)</tr>", text)]

    expected = md_rows((folder / "report.md").read_text()) + md_rows((folder / "capacity.md").read_text())
    assert expected and html_rows(page) == expected
    assert parent.data.tags["mlflow.note.content"].startswith(
        f"**[Sweep report: accuracy against dependency length](#/experiments/{parent.info.experiment_id}/runs/"
        f"{parent.info.run_id}/artifacts/report/index.html?workflowType=machine_learning)**")


@pytest.mark.slow
def test_every_link_printed_opens_in_the_model_training_view(budget_sweep, cli, tmp_path):
    from rnnbench.ui import VIEW_TAG, link, runs_view

    experiment, parent = budget_sweep["experiment"], budget_sweep["parent"]
    assert json.loads(experiment.tags[VIEW_TAG]) == runs_view()
    base = "http://127.0.0.1:5000"
    swept = _links(budget_sweep["proc"].stderr)
    assert swept == [link(base, experiment.experiment_id),
                     link(base, experiment.experiment_id, parent.info.run_id, "report/index.html")]
    assert budget_sweep["proc"].stderr.endswith("(start the MLflow UI with: rnnbench ui)\n")  # its mlflow.db is here

    db = budget_sweep["tmp"] / "mlflow.db"
    one = cli("cell=gru", "task.dependency_length=5", *TINY, f"tracking.uri=sqlite:///{db}",
              "tracking.experiment=explained", check=True)
    client = budget_sweep["client"]
    (run,) = client.search_runs([experiment.experiment_id], "tags.length = '5'")
    assert _links(one.stdout) == [link(base, experiment.experiment_id),
                                  link(base, experiment.experiment_id, run.info.run_id)]
    assert f"(start the MLflow UI with: rnnbench ui --tracking-uri sqlite:///{db})" in one.stdout  # run elsewhere

    out = tmp_path / "report"
    attached = cli("report", "--tracking-uri", f"sqlite:///{db}", "--parent", parent.info.run_id, "--attach",
                   "--out", str(out), check=True)
    assert (out / "index.html").is_file()
    assert _links(attached.stderr) == swept
    for url in swept + _links(one.stdout):
        assert "workflowType=machine_learning" in urlsplit(url).fragment


@pytest.mark.slow
def test_a_run_on_the_default_store_says_how_to_start_the_ui(cli, tmp_path):
    from rnnbench.ui import VIEW_TAG, link

    proc = cli("cell=gru", "task.dependency_length=5", *TINY, check=True)  # no tracking.uri: ./mlflow.db
    client = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rnnbench")
    (run,) = client.search_runs([experiment.experiment_id])
    base = "http://127.0.0.1:5000"
    assert proc.stdout.endswith(
        f"rnnbench: in MLflow\n  runs:   {link(base, experiment.experiment_id)}\n"
        f"  run:    {link(base, experiment.experiment_id, run.info.run_id)}\n"
        "  (start the MLflow UI with: rnnbench ui)\n")
    assert VIEW_TAG in experiment.tags  # the view the runs link loads


@pytest.mark.slow
def test_rnnbench_ui_shows_the_experiment_of_the_latest_run(budget_sweep, tmp_path):
    import shutil

    from rnnbench import store
    from rnnbench.ui import _experiment

    db = tmp_path / "copy.db"
    shutil.copy(budget_sweep["tmp"] / "mlflow.db", db)
    uri = f"sqlite:///{db}"
    client = store.client(uri, create=False)
    assert _experiment(client, uri, None).name == "explained"
    later = client.create_experiment("later")
    client.set_terminated(client.create_run(later, run_name="newest").info.run_id)
    assert _experiment(client, uri, None).name == "later"
    assert _experiment(client, uri, "explained").name == "explained"


UI_BAD_INPUT = [
    (["--port", "0"], "--port=0"),
    (["--port", "70000"], "--port=70000"),
    (["--port", "http"], "--port='http'"),
    (["--host", "no such host"], "--host='no such host'"),
    (["--host", "no-such-host.invalid"], "--host='no-such-host.invalid'"),
    (["--experiment", "nope"], "--experiment='nope'"),
    (["--tracking-uri", "mlflow.db"], "--tracking-uri='mlflow.db'"),
    (["--tracking-uri", "ftp://x/y"], "--tracking-uri='ftp://x/y'"),
    (["--bogus"], "--bogus"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "named"), UI_BAD_INPUT, ids=[" ".join(a) for a, _ in UI_BAD_INPUT])
def test_rnnbench_ui_refuses_bad_input_in_one_line(budget_sweep, tmp_path, args, named):
    from conftest import run_cli

    from test_sweep import _free_port

    db = budget_sweep["tmp"] / "mlflow.db"
    store = [] if "--tracking-uri" in args else ["--tracking-uri", f"sqlite:///{db}"]
    port = [] if "--port" in args else ["--port", str(_free_port())]
    proc = run_cli(["ui", *store, *port, *args], tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnbench: error: ") and named in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written, no store created


@pytest.mark.slow
def test_rnnbench_ui_refuses_a_port_in_use_and_a_missing_store(budget_sweep, tmp_path):
    import socket

    from conftest import run_cli

    db = budget_sweep["tmp"] / "mlflow.db"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli(["ui", "--tracking-uri", f"sqlite:///{db}", "--port", str(port)], tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(f"rnnbench: error: --port={port} is not allowed: a free")
    proc = run_cli(["ui"], tmp_path, timeout=120)  # no mlflow.db here
    assert proc.returncode == 2 and "no tracking store" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
