"""The tracking store: the one module that talks to MLflow's client.

- :func:`resolve_tracking_uri`: which store (``tracking.uri``, ``MLFLOW_TRACKING_URI``, or ``mlflow.db`` in the
  working directory), absolute.
- :func:`check_store`: everything that can be known about a store without writing to it (the URI's scheme; for
  SQLite, that the file is not a directory, that its folder can be written, that it is an intact MLflow
  database; for a server, that it answers). The command line calls it before anything is written.
- :func:`open_store`: create or migrate a SQLite store so that a kill at any moment leaves either the old file or
  the new complete one: under an exclusive lock on ``<db>.lock``, the database is built (or an older one copied
  and migrated) in a temporary file next to it, then moved into place with :func:`os.replace`. Concurrent
  processes wait on the lock and find the store ready. A store that is ready (the common case) is only read.
- :func:`client`: an ``MlflowClient`` on an opened store; :func:`ensure_experiment`, :func:`check_server`,
  :func:`search_all` (every run of a search, page by page).

Fault injection (tests): ``RNNBENCH_FAULT=store.migrate`` kills the process at the first write of a migration
(``store.migrate@N``: the N-th write), see :mod:`rnnbench.faults`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rnnbench.errors import ConfigError, TrackingError
from rnnbench.faults import fault

SQLITE_PREFIX = "sqlite:///"
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
"""URI schemes of the stores rnnbench can log to (a database dialect may name its driver: ``postgresql+psycopg2``)."""
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TMP_INFIX = ".rnnbench-tmp-"
_WRITES = re.compile(r"^\s*(CREATE|ALTER|INSERT|UPDATE|DELETE|DROP|REPLACE)\b", re.IGNORECASE)


def _uri_key(uri: str | None) -> str:
    """The setting a URI came from, for messages."""
    if uri:
        return "tracking.uri"
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"


def resolve_tracking_uri(uri: str | None, cwd: Path | None = None) -> str:
    """The store to use, absolute: ``uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's own default store,
    ``mlflow.db`` in ``cwd``. Relative ``sqlite:///`` paths are resolved against ``cwd`` before anything changes
    directory. An unsupported URI raises :class:`ConfigError` naming ``tracking.uri`` (or the variable)."""
    key = _uri_key(uri)
    cwd = (cwd or Path.cwd()).resolve()
    given = uri or os.environ.get("MLFLOW_TRACKING_URI")
    resolved = given or f"{SQLITE_PREFIX}{cwd / 'mlflow.db'}"
    if "://" not in resolved:
        raise ConfigError(
            key, given, "a sqlite:///path.db file, an http(s):// server, or a database URI (MLflow's folder store "
            "is retired)"
        )
    scheme = resolved.split("://", 1)[0].lower()
    if scheme.split("+", 1)[0] not in SCHEMES:
        raise ConfigError(key, given, f"a URI with one of the schemes {', '.join(SCHEMES)} (not {scheme}://)")
    if scheme == "sqlite":
        if not resolved.startswith(SQLITE_PREFIX):
            raise ConfigError(key, given, "a SQLite file: sqlite:///relative/path.db or sqlite:////absolute/path.db")
        path = resolved[len(SQLITE_PREFIX):]
        if not path or path == ":memory:" or path.startswith("file:") or "?" in path:
            raise ConfigError(key, given, "a SQLite file path (an in-memory store would lose the runs)")
        if not path.startswith("/"):
            return SQLITE_PREFIX + str((cwd / path).resolve())
    return resolved


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (resolved), else None."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri[len(SQLITE_PREFIX):])


# --- inspection (read only) ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _revisions() -> tuple[str, frozenset[str]]:
    """MLflow's newest schema revision and all the revisions it knows."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(""))
    return script.get_current_head(), frozenset(r.revision for r in script.walk_revisions())


@functools.lru_cache(maxsize=1)
def _mlflow_tables() -> frozenset[str]:
    """The tables of MLflow's current schema."""
    import mlflow.store.model_registry.dbmodels.models  # noqa: F401 - registers the tables in Base.metadata
    import mlflow.store.tracking.dbmodels.models  # noqa: F401
    from mlflow.store.db.base_sql_model import Base

    return frozenset(Base.metadata.tables)


def _corrupt(path: Path, what: str) -> TrackingError:
    return TrackingError(
        f"the tracking store {path} is damaged ({what}); nothing was changed: move it aside "
        f"(mv {path} {path}.broken) to start a new store there, restore it from a backup, or set tracking.uri to "
        "another store"
    )


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=60)


def _discardable(con: sqlite3.Connection, tables: set[str]) -> bool:
    """True when a store holds no runs and no experiment but the Default one: a store whose creation was
    interrupted, which can be rebuilt from scratch without losing anything."""
    try:
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        experiments = con.execute("SELECT count(*) FROM experiments").fetchone()[0] if "experiments" in tables else 0
    except sqlite3.DatabaseError:
        return False
    return runs == 0 and experiments <= 1


def inspect_sqlite(path: Path) -> str:
    """What a SQLite store needs, read only: ``ready``, ``create`` (missing, empty, or an interrupted creation
    holding no runs), or ``migrate`` (an older MLflow schema). A directory, a file that is not an MLflow database,
    a damaged one or one from a newer MLflow raises :class:`TrackingError`, one line naming the file."""
    if path.is_dir():
        raise TrackingError(
            f"the tracking store {path} is a directory, not a SQLite file: rename or remove it, or set tracking.uri "
            "to a sqlite:///path.db file"
        )
    if not path.exists():
        return "create"
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise TrackingError(f"cannot read the tracking store {path}: {exc.strerror or exc}") from exc
    if not head:
        return "create"
    if head != _SQLITE_MAGIC:
        raise _corrupt(path, "not a SQLite database")
    try:
        con = _connect_ro(path)
    except sqlite3.Error as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    try:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        stray = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
        mlflow_tables = {t for t in tables if not t.startswith(("alembic_", "sqlite_", "_alembic_tmp_"))}
        revision = None
        if "alembic_version" in tables:
            rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
            revision = rows[0][0] if len(rows) == 1 else None
        if not mlflow_tables:
            return "create"
        head, known = _revisions()
        if revision == head and not stray:
            return "ready"
        if revision is not None and revision not in known:
            import mlflow

            raise TrackingError(
                f"the tracking store {path} has schema revision {revision}, unknown to MLflow {mlflow.__version__}: "
                "it was written by a newer MLflow; upgrade mlflow, or set tracking.uri to another store"
            )
        foreign = sorted(mlflow_tables - _mlflow_tables())
        if foreign and "experiments" not in tables:
            raise TrackingError(
                f"{path} is a SQLite database but not an MLflow tracking store (it has table {foreign[0]}); set "
                "tracking.uri to another file"
            )
        if not foreign and _discardable(con, tables):
            return "create"
        if stray:
            raise _corrupt(path, f"an interrupted schema migration left table {stray[0]}")
        if revision is None:
            raise _corrupt(path, "MLflow tables without a schema version")
        return "migrate"
    except sqlite3.DatabaseError as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    finally:
        con.close()


def check_store(uri: str, key: str = "tracking.uri", value: Any = None) -> None:
    """Check a resolved store URI without writing anything: a SQLite file's folder must be writable and the file
    an intact MLflow store (or absent); a server must answer. Raises :class:`ConfigError` / :class:`TrackingError`."""
    from rnnbench import validation

    path = sqlite_path(uri)
    if path is not None:
        shown = value if value is not None else uri
        if path.is_dir():
            raise ConfigError(key, shown, f"a SQLite file, but {path} is a directory: rename or remove it, or choose "
                                          "another path")
        validation.writable_file(key, path, value=shown)
        inspect_sqlite(path)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)


# --- creation and migration -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; the file is removed on release (a waiter that locked a
    removed file retries on the new one, so there is never more than one holder)."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary copies left by a process killed while it built the store (only lock holders make them)."""
    for stale in path.parent.glob(f".{path.name}{_TMP_INFIX}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _build(path: Path, state: str) -> None:
    """Build (``create``) or migrate (``migrate``) the store in a temporary file next to ``path``, then move it
    into place. Runs under the lock."""
    import sqlalchemy
    from mlflow.store.db import utils as db_utils

    tmp = path.with_name(f".{path.name}{_TMP_INFIX}{os.getpid()}")
    for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
        leftover.unlink(missing_ok=True)
    if state == "migrate":
        src = sqlite3.connect(str(path), timeout=60)
        dst = sqlite3.connect(str(tmp))
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
    engine = sqlalchemy.create_engine(f"{SQLITE_PREFIX}{tmp}", poolclass=sqlalchemy.pool.NullPool)

    def _on_execute(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        if _WRITES.match(statement):
            fault("store.migrate")

    sqlalchemy.event.listen(engine, "before_cursor_execute", _on_execute)
    try:
        if state == "create":
            db_utils._initialize_tables(engine)
        else:
            db_utils._upgrade_db(engine)
        head, _ = _revisions()
        if db_utils._get_schema_version(engine) != head or not db_utils._all_tables_exist(engine):
            raise RuntimeError("the schema is incomplete after the migration")
    except BaseException:
        engine.dispose()
        tmp.unlink(missing_ok=True)
        raise
    engine.dispose()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def open_store(uri: str) -> None:
    """Make a store ready to use. For SQLite: create it, or migrate an older schema, atomically (see the module
    docstring); other stores are left to MLflow. Raises :class:`TrackingError` (one line) when it cannot."""
    path = sqlite_path(uri)
    if path is None:
        return
    if inspect_sqlite(path) == "ready":
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.with_name(path.name + ".lock")):
            state = inspect_sqlite(path)  # another process may have finished it while we waited
            if state == "ready":
                return
            _remove_stale_temporaries(path)
            _build(path, state)
    except TrackingError:
        raise
    except Exception as exc:
        what = "create" if not path.exists() else "migrate"
        raise TrackingError(
            f"cannot {what} the tracking store {path} ({type(exc).__name__}: {_one_line(exc)}); the file was not "
            f"changed. If it keeps failing, move it aside (mv {path} {path}.broken) to start a new store"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


# --- the client -------------------------------------------------------------------------------------------------


def client(uri: str, create: bool = True) -> Any:
    """An ``MlflowClient`` on the store ``uri`` (resolved), opened with :func:`open_store`. With ``create=False``
    a SQLite store that does not exist is an error instead of being created."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    path = sqlite_path(uri)
    if path is not None and not create and not path.exists():
        raise TrackingError(f"there is no tracking store at {path}; set --tracking-uri / MLFLOW_TRACKING_URI")
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    open_store(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created if missing; safe when several processes race to create it. The
    experiment gets rnnbench's runs view for the UI (:func:`rnnbench.ui.ensure_view`)."""
    from mlflow.exceptions import MlflowException

    from rnnbench.ui import ensure_view

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"tracking.experiment={name!r} is deleted in {client.tracking_uri}; restore it "
                f"(mlflow experiments restore) or choose another name"
            )
        ensure_view(client, experiment)
        return experiment.experiment_id
    try:
        experiment_id = client.create_experiment(name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # another process created it first
        if experiment is None:
            raise
        experiment_id = experiment.experiment_id
    ensure_view(client, experiment_id)
    return experiment_id


def check_server(uri: str) -> None:
    """Raise :class:`TrackingError` unless the MLflow server at ``uri`` answers its health check."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - user-configured server
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}); start it, fix MLFLOW_TRACKING_URI / "
            "tracking.uri, or run with tracking=none"
        ) from exc


def search_all(
    client: Any, experiment_ids: list[str], filter_string: str = "", order_by: list[str] | None = None
) -> list[Any]:
    """Every run matching ``filter_string`` (pages through ``search_runs``, 1000 runs a page)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, max_results=1000, order_by=order_by, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs
