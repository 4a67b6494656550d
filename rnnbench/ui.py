"""``rnnbench ui``: the MLflow UI on rnnbench's store, and every link to it that rnnbench prints.

    rnnbench ui                                  the UI on the store a run would use, links to its runs and report
    rnnbench ui --experiment quick --port 5001   another experiment, another port
    rnnbench ui --tracking-uri sqlite:///x.db    another store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)

MLflow 3.17's UI opens in its GenAI mode (an empty traces overview, "Evaluations" on the run page) unless the
address says otherwise: its ``WorkflowTypeProvider`` reads ``workflowType`` from the query of the hash route and
takes ``machine_learning`` over the mode remembered in the browser's local storage (``mlflow.workflowType``,
GenAI by default). :func:`link` is the one function that builds rnnbench's links; every one carries it.

The runs link also carries ``viewStateShareKey=rnnbench``: the UI's own shared-view mechanism then loads the view
stored in the experiment tag ``mlflow.sharedViewState.rnnbench`` (:func:`ensure_view` writes it whenever rnnbench
opens an experiment): the runs sorted by name, which the UI shows flat (it folds child runs under their sweep only
when sorted by creation time), with the columns cell, task, length, seed, ``final/accuracy``, outcome and size,
every run plotted, and a chart of ``final/accuracy`` against ``task.dependency_length`` first in the chart view.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rnnbench.commands import SubcommandParser
from rnnbench.errors import ConfigError, RnnbenchError

WORKFLOW = "workflowType=machine_learning"
"""The query that makes MLflow 3.17's UI open in its model-training view."""
VIEW_KEY = "rnnbench"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
"""The experiment tag the UI loads for ``viewStateShareKey=rnnbench``."""
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
REPORT_PAGE = "report/index.html"
START_TIMEOUT_S = 180.0

RUN_TAGS = ("cell", "task", "length", "seed")
"""Tags every training run carries, so that the runs table and searches read them without the long param names."""
CHART_SECTION = "rnnbench-accuracy"
CHART = "rnnbench-accuracy-vs-length"


def link(base: str | None, experiment_id: str, run_id: str | None = None, artifact: str | None = None) -> str:
    """A link into the MLflow UI at ``base`` (``http://host:port``; None: a link relative to the UI's own page,
    for run descriptions) that opens in the model-training view: the experiment's runs table in rnnbench's view,
    a run's page, or one of its artifacts."""
    route = f"#/experiments/{quote(str(experiment_id))}/runs"
    query = [WORKFLOW]
    if run_id is None:
        query.append(f"viewStateShareKey={VIEW_KEY}")
    else:
        route += f"/{quote(run_id)}"
        if artifact:
            route += f"/artifacts/{quote(artifact)}"
    address = f"{route}?{'&'.join(query)}"
    return address if base is None else f"{base.rstrip('/')}/{address}"


def runs_view() -> dict[str, Any]:
    """The runs table and chart view behind ``viewStateShareKey=rnnbench`` (MLflow 3.17's shared view state)."""
    columns = [f"tags.`{tag}`" for tag in RUN_TAGS] + [
        "metrics.`final/accuracy`", "tags.`rnnbench.outcome`", "params.`model.hidden_size`",
    ]
    return {
        "orderByKey": "tags.`mlflow.runName`",
        "orderByAsc": True,
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", *columns],
        "columnWidths": {"attributes.`Run Name`": 250, "metrics.`final/accuracy`": 130,
                         "tags.`rnnbench.outcome`": 150, "params.`model.hidden_size`": 150},
        "runsHiddenMode": "SHOW_ALL",
        "isAccordionReordered": True,
        "compareRunSections": [{"uuid": CHART_SECTION, "name": "accuracy against dependency length", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False}],
        "compareRunCharts": [{
            "uuid": CHART, "type": "SCATTER", "metricSectionId": CHART_SECTION, "runsCountToCompare": 1000,
            "deleted": False, "isGenerated": False,
            "xaxis": {"key": "task.dependency_length", "type": "PARAM"},
            "yaxis": {"key": "final/accuracy", "type": "METRIC"},
        }],
    }


def ensure_view(client: Any, experiment: Any) -> None:
    """Store rnnbench's runs view on ``experiment`` (an MLflow experiment or its id) unless it is there already.
    A store that refuses the write costs only the view: the link then opens MLflow's default table."""
    try:
        if isinstance(experiment, str):
            experiment = client.get_experiment(experiment)
        value = json.dumps(runs_view(), sort_keys=True)
        if experiment.tags.get(VIEW_TAG) != value:
            client.set_experiment_tag(experiment.experiment_id, VIEW_TAG, value)
    except Exception as exc:  # noqa: BLE001 - a convenience: never fail a run for it
        import logging

        logging.getLogger("rnnbench").warning("could not store the runs view on the experiment: %s", exc)


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_base(uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """Where the UI of store ``uri`` is: the server itself, or the one ``rnnbench ui`` starts on ``host:port``."""
    if is_server(uri):
        return uri.rstrip("/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def start_hint(uri: str) -> str:
    """How to start the UI that the links of a local store point at ("" for a server)."""
    if is_server(uri):
        return ""
    from rnnbench.store import resolve_tracking_uri

    try:
        default = resolve_tracking_uri(None)  # what rnnbench ui opens here without options
    except RnnbenchError:
        default = None
    return "rnnbench ui" + ("" if uri == default else f" --tracking-uri {uri}")


def browse_lines(uri: str, experiment_id: str, run_id: str | None = None, report: bool = False) -> list[str]:
    """What rnnbench prints at the end of a run, a sweep or a report: the links, and how to start the UI."""
    base = ui_base(uri)
    lines = [f"runs:   {link(base, experiment_id)}"]
    if run_id is not None:
        lines.append(f"{'report' if report else 'run'}:{'' if report else '   '} "
                     f"{link(base, experiment_id, run_id, REPORT_PAGE if report else None)}")
    hint = start_hint(uri)
    if hint:
        lines.append(f"(start the MLflow UI with: {hint})")
    return lines


# --- the command ----------------------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        value: int | str = int(text)
    except ValueError:
        value = text
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError("--port", value, "a TCP port, an integer from 1 to 65535")
    return value


def _host(text: str) -> str:
    if not text.strip() or any(c.isspace() for c in text):
        raise ConfigError("--host", text, "a host name or IP address of this machine, e.g. 127.0.0.1 or 0.0.0.0")
    return text


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = SubcommandParser(
        prog="rnnbench ui",
        description="Start the MLflow UI on the store rnnbench uses and print links that open in its "
        "model-training view: the experiment's runs (name, cell, task, length, seed, final accuracy) and the "
        "latest sweep's report. Ctrl-C stops it. For a tracking server, print the links only.",
    )
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db (as a run)")
    parser.add_argument("--experiment", help="default: the experiment of the latest run in the store")
    parser.add_argument("--host", type=_host, default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    try:
        return parser.parse_args(list(argv))
    except argparse.ArgumentError as exc:  # pragma: no cover - exit_on_error stays True
        raise RnnbenchError(str(exc)) from exc


def _check_listen(host: str, port: int) -> None:
    """Refuse, before anything starts, an address this machine cannot listen on (one line naming the option)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError("--host", host, f"a host name or IP address of this machine ({exc})") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError("--port", port, f"a free port on {host}: {port} is in use; choose another --port") \
                    from exc
            if exc.errno == errno.EACCES:
                raise ConfigError("--port", port, "a port this user may open (1024-65535 without root)") from exc
            raise ConfigError("--host", host, f"an address of this machine to listen on ({exc.strerror})") from exc


def _experiment(client: Any, uri: str, name: str | None) -> Any | None:
    """The experiment to show: ``--experiment``, else the one holding the latest run (None: an empty store)."""
    experiments = client.search_experiments()
    if name is not None:
        found = [e for e in experiments if e.name == name]
        if not found:
            names = ", ".join(sorted(e.name for e in experiments)) or "none yet"
            raise ConfigError("--experiment", name, f"an experiment of {uri}: {names}")
        return found[0]
    if not experiments:
        return None
    latest = client.search_runs([e.experiment_id for e in experiments], order_by=["attributes.start_time DESC"],
                                max_results=1)
    if latest:
        return client.get_experiment(latest[0].info.experiment_id)
    return next((e for e in experiments if e.name == "rnnbench"), experiments[0])


def latest_report(client: Any, experiment_id: str) -> tuple[Any, str] | None:
    """(parent run, artifact path) of the latest sweep of the experiment that has a report, else None."""
    sweeps = client.search_runs([experiment_id], filter_string="tags.`rnnbench.sweep` = 'true'",
                                order_by=["attributes.start_time DESC"], max_results=20)
    for run in sweeps:
        try:
            names = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
        except Exception:  # noqa: BLE001 - an artifact store this machine cannot read: try the next sweep
            continue
        for path in (REPORT_PAGE, "report/accuracy.png"):  # sweeps before the HTML report have the figure only
            if path in names:
                return run, path
    return None


def _print_links(client: Any, uri: str, base: str, experiment: Any | None) -> None:
    if experiment is None:
        print(f"  experiments: {base}/#/experiments?{WORKFLOW}  (no runs yet: run rnnbench first)", flush=True)
        return
    print(f"  runs of experiment {experiment.name!r}: {link(base, experiment.experiment_id)}", flush=True)
    found = latest_report(client, experiment.experiment_id)
    if found is None:
        print("  report: none yet (a sweep, rnnbench -m ..., logs one to its parent run)", flush=True)
    else:
        run, path = found
        print(f"  report of {run.info.run_name}: {link(base, experiment.experiment_id, run.info.run_id, path)}",
              flush=True)


def _wait_healthy(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])
            raise RnnbenchError(f"the MLflow UI exited with status {proc.returncode} before answering: {tail}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:  # noqa: S310 - our own server
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RnnbenchError(f"the MLflow UI did not answer {url}/health within {START_TIMEOUT_S:.0f} s; see {log_path}")


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)  # the server and the workers it started: its own process group
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the server outlives a killed rnnbench ui
        pass


def serve(uri: str, host: str, port: int) -> subprocess.Popen:
    """Start ``mlflow server`` on store ``uri`` at ``host:port`` and wait until it answers."""
    log_path = Path(tempfile.gettempdir()) / f"rnnbench-ui-{os.getpid()}.log"
    env = dict(os.environ)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no background job workers: browsing only
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port",
             str(port), "--workers", "1"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    try:
        _wait_healthy(proc, ui_base(uri, host, port), log_path)
    except BaseException:
        _stop(proc)
        raise
    return proc


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from rnnbench import store

    try:
        uri = store.resolve_tracking_uri(args.tracking_uri)
    except ConfigError as exc:
        if args.tracking_uri is None:
            raise
        raise ConfigError("--tracking-uri", args.tracking_uri, exc.allowed) from exc
    client = store.client(uri, create=False)
    experiment = _experiment(client, uri, args.experiment)
    if not is_server(uri):
        _check_listen(args.host, args.port)
    if experiment is not None:  # every option checked: the only write, the view the links load
        ensure_view(client, experiment)
    if is_server(uri):
        print(f"rnnbench: {uri} is an MLflow tracking server; its UI:", flush=True)
        _print_links(client, uri, ui_base(uri), experiment)
        return 0

    def _terminate(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    proc = serve(uri, args.host, args.port)
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM stops the UI as Ctrl-C does
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C works even where a parent ignored SIGINT
    try:
        base = ui_base(uri, args.host, args.port)
        print(f"rnnbench: MLflow UI on {uri} at {base} (Ctrl-C stops it)", flush=True)
        _print_links(client, uri, base, experiment)
        code = proc.wait()
        print(f"rnnbench: the MLflow UI exited with status {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rnnbench: MLflow UI stopped", file=sys.stderr)
        return 0
    finally:
        _stop(proc)
        signal.signal(signal.SIGTERM, previous)
