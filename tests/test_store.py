"""The tracking store survives kills and races: creation and migration are atomic, concurrent openers wait, and a
damaged store is reported in one line without being touched."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rnnbench.errors import TrackingError
from rnnbench.store import SQLITE_PREFIX, inspect_sqlite, open_store

# Opens (creates or migrates) the store given as argv[1], then records one run in experiment argv[2].
DRIVER = """
import sys
from rnnbench.store import client, ensure_experiment
c = client(sys.argv[1])
experiment = ensure_experiment(c, sys.argv[2])
c.set_terminated(c.create_run(experiment).info.run_id, "FINISHED")
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RNNBENCH_FAULT")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", **extra)
    return env


def _driver(uri: str, cwd: Path, experiment: str = "e", **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, uri, experiment], cwd=cwd, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".rnnbench-tmp-" in p.name or p.name.endswith(".lock"))


@pytest.fixture(scope="session")
def old_store(tmp_path_factory) -> Path:
    """A store at an older MLflow schema revision (half-way through the migrations) holding two experiments."""
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    path = tmp_path_factory.mktemp("old-store") / "mlflow.db"
    engine = sqlalchemy.create_engine(f"{SQLITE_PREFIX}{path}")
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(str(engine.url))
    revisions = list(reversed(list(ScriptDirectory.from_config(config).walk_revisions())))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revisions[len(revisions) // 2].revision)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO experiments (name, artifact_location, lifecycle_stage) "
            "VALUES ('kept', '/tmp/kept', 'active'), ('also kept', '/tmp/also', 'active')"
        )
    engine.dispose()
    return path


def _experiments(uri: str) -> set[str]:
    from mlflow.tracking import MlflowClient

    return {e.name for e in MlflowClient(tracking_uri=uri).search_experiments()}


def test_fresh_store_is_created_ready_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "mlflow.db"
    assert inspect_sqlite(path) == "create"
    open_store(f"{SQLITE_PREFIX}{path}")
    assert inspect_sqlite(path) == "ready"
    assert sorted(p.name for p in path.parent.iterdir()) == ["mlflow.db"]
    before = _digest(path)
    open_store(f"{SQLITE_PREFIX}{path}")  # ready: only read
    assert _digest(path) == before


def test_older_schema_is_migrated_keeping_the_data(tmp_path, old_store):
    path = tmp_path / "mlflow.db"
    shutil.copy(old_store, path)
    assert inspect_sqlite(path) == "migrate"
    open_store(f"{SQLITE_PREFIX}{path}")
    assert inspect_sqlite(path) == "ready"
    assert {"kept", "also kept"} <= _experiments(f"{SQLITE_PREFIX}{path}")
    assert _leftovers(tmp_path) == []


def test_interrupted_creation_holding_no_runs_is_rebuilt(tmp_path):
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    path = tmp_path / "mlflow.db"
    engine = sqlalchemy.create_engine(f"{SQLITE_PREFIX}{path}")
    InitialBase.metadata.create_all(engine)  # what a kill during MLflow's own creation leaves: no schema version
    engine.dispose()
    assert inspect_sqlite(path) == "create"
    open_store(f"{SQLITE_PREFIX}{path}")
    assert inspect_sqlite(path) == "ready"


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("garbage", "not a SQLite database"),
        ("alembic_tmp", "_alembic_tmp_runs"),
        ("foreign", "not an MLflow tracking store"),
    ],
)
def test_damaged_or_foreign_store_is_one_line_and_untouched(tmp_path, old_store, damage, fragment):
    path = tmp_path / "mlflow.db"
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot a database\n" * 100)
    elif damage == "foreign":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE notes (text TEXT)")
        con.commit()
        con.close()
    else:
        shutil.copy(old_store, path)
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE _alembic_tmp_runs (x INTEGER)")
        con.commit()
        con.close()
    before = _digest(path)
    with pytest.raises(TrackingError) as info:
        open_store(f"{SQLITE_PREFIX}{path}")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and fragment in message
    assert _digest(path) == before
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_kill_inside_the_migration_leaves_the_old_store_and_the_next_open_works(tmp_path, old_store):
    path = tmp_path / "mlflow.db"
    shutil.copy(old_store, path)
    before = _digest(path)
    uri = f"{SQLITE_PREFIX}{path}"
    proc = _driver(uri, tmp_path, RNNBENCH_FAULT="store.migrate@3")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert _digest(path) == before  # the migration ran on a copy
    assert inspect_sqlite(path) == "migrate"
    proc = _driver(uri, tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert inspect_sqlite(path) == "ready"
    assert {"kept", "also kept", "e"} <= _experiments(uri)
    assert _leftovers(tmp_path) == []  # the killed process's temporary copy is gone


@pytest.mark.slow
def test_kill_while_a_fresh_store_is_created_then_the_next_command_works(tmp_path):
    path = tmp_path / "mlflow.db"
    uri = f"{SQLITE_PREFIX}{path}"
    proc = _driver(uri, tmp_path, RNNBENCH_FAULT="store.migrate@40")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists()  # the half-built store never took the store's name
    proc = _driver(uri, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert inspect_sqlite(path) == "ready"
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_two_processes_opening_a_fresh_store_at_once_both_succeed(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"{SQLITE_PREFIX}{tmp_path / 'mlflow.db'}"
    procs = [_driver(uri, tmp_path) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("e")
    assert len(client.search_runs([experiment.experiment_id])) == 2
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_cli_on_a_corrupt_store_is_one_line_naming_the_file_and_writes_nothing(cli, tmp_path):
    path = tmp_path / "mlflow.db"
    path.write_bytes(b"this is not a database" * 100)
    before = sorted(os.listdir(tmp_path))
    proc = cli("trainer=smoke", "model.hidden_size=8", "task.dependency_length=10")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in lines[0] and "move it aside" in lines[0]
    assert sorted(os.listdir(tmp_path)) == before
    assert path.read_bytes() == b"this is not a database" * 100
