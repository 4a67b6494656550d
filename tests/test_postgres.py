"""The README's shared tracking server, as written: its commands make a role and a database in a real PostgreSQL
(``.ci/postgres-up``), ``mlflow server`` runs on the URI it gives, and a parallel sweep lands whole through it.
Skipped without a local PostgreSQL (or without root or password-less sudo to run its ``sudo -u postgres``
lines); failed instead when RNNBENCH_REQUIRE_SERVICES=1."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from service_check import service_missing
from test_sweep import TINY, _all_runs, _client, start_mlflow_server, stop_server

ROOT = Path(__file__).resolve().parents[1]


def recipe() -> list[str]:
    """The shell commands of the README's shared-tracking-server block, continuation lines joined."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**A shared tracking server**"):]
    block = section[section.index("```bash\n") + 8: section.index("```\n", section.index("```bash\n") + 8)]
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_recipe_installs_the_driver_its_uri_needs():
    """``postgresql://`` is opened with psycopg 3 (SQLAlchemy 2's default driver); the recipe installs exactly
    MLflow as rnnbench pins it and the ``postgres`` extra, and uses a driver-less URI."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pip,) = [line for line in recipe() if line.startswith("pip install ")]
    wanted = {str(Requirement(r)) for r in shlex.split(pip)[2:]}
    pinned = {str(Requirement(r)) for r in project["dependencies"] if Requirement(r).name == "mlflow"}
    assert wanted == pinned | {str(Requirement(r)) for r in project["optional-dependencies"]["postgres"]}
    (server,) = [line for line in recipe() if line.startswith("mlflow server ")]
    assert re.search(r"--backend-store-uri postgresql://\w+:\w+@", server)


def _as_postgres() -> list[str]:
    """How this process runs the recipe's ``sudo -u postgres`` lines: as root with runuser, or sudo without a
    password prompt."""
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "-u", "postgres", "true"], capture_output=True,
                                               timeout=10).returncode == 0:
        return ["sudo", "-n", "-u", "postgres"]
    service_missing("PostgreSQL", "running the recipe's `sudo -u postgres` lines needs root or password-less sudo")


@pytest.fixture
def recipe_database():
    """Run the recipe's role and database commands with a fresh name and password; yields the URI its
    ``mlflow server`` line names, for them. Drops both afterwards."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        service_missing("PostgreSQL", "psycopg is not installed (pip install 'rnnbench[postgres]')")
    if shutil.which("pg_isready") is None or subprocess.run(["pg_isready", "-q", "-h", "localhost", "-p", "5432"],
                                                            timeout=15).returncode != 0:
        service_missing("PostgreSQL", "nothing accepts connections on localhost:5432 (start it with .ci/postgres-up)")
    prefix = _as_postgres()
    name, password = f"mlflow_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex

    def ours(line: str) -> str:
        line = re.sub(r"\bmlflow\b", name, line)  # the role and database names
        return re.sub(r"(?<=')PASSWORD(?=')|(?<=:)PASSWORD(?=@)", password, line)  # the placeholder, not the keyword

    def as_postgres(*args: str) -> None:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    try:
        for line in recipe():
            if line.startswith("sudo -u postgres "):
                as_postgres(*shlex.split(ours(line))[3:])
        (server,) = [line for line in recipe() if line.startswith("mlflow server ")]
        yield ours(shlex.split(server)[shlex.split(server).index("--backend-store-uri") + 1])
    finally:
        as_postgres("psql", "-q", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        as_postgres("psql", "-q", "-c", f"DROP ROLE IF EXISTS {name}")


@pytest.mark.slow
def test_a_parallel_sweep_lands_whole_through_a_postgresql_backed_server(tmp_path, cli, recipe_database):
    import psycopg

    assert version("mlflow") == "3.17.2"
    server, url = start_mlflow_server(recipe_database, tmp_path,
                                      extra=("--artifacts-destination", str(tmp_path / "artifacts")))
    try:
        proc = cli("-m", "launcher=joblib", "hydra.launcher.n_jobs=4", "cell=gru,rnn_tanh", "seed=0,1,2,3",
                   "task.dependency_length=4", *TINY, "tracking.experiment=pg", f"hydra.sweep.dir={tmp_path / 'm'}",
                   env={"MLFLOW_TRACKING_URI": url}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = _client(url)
        experiment = client.get_experiment_by_name("pg")
        runs = _all_runs(client, [experiment.experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(runs) == 9 and parent.info.status == "FINISHED"
        assert sorted((r.data.params["cell.name"], r.data.params["seed"]) for r in children) == sorted(
            (cell, str(seed)) for cell in ("gru", "rnn_tanh") for seed in range(4))
        assert all(r.info.status == "FINISHED" for r in children)
        assert "report/accuracy.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
        with psycopg.connect(recipe_database, connect_timeout=10) as db:  # the rows are PostgreSQL's
            (rows,) = db.execute("SELECT count(*) FROM runs WHERE experiment_id = %s",
                                 (int(experiment.experiment_id),)).fetchone()
        assert rows == 9
    finally:
        stop_server(server)

    # the same database opened directly by rnnbench (tracking.uri=postgresql://..., the `postgres` extra)
    proc = cli("cell=gru", "task.dependency_length=4", *TINY, f"tracking.uri={recipe_database}",
               "tracking.experiment=direct", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = _client(recipe_database)
    (run,) = client.search_runs([client.get_experiment_by_name("direct").experiment_id])
    assert run.info.status == "FINISHED"
