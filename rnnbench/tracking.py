"""Where runs are recorded: the Tracker protocol, MLflow's client behind it, and a no-op tracker for tests.

MLflow is driven through ``MlflowClient`` with explicit run and experiment ids, never through the fluent
API's process-global active run: jobs that share a worker process cannot leak a run into each other, and an
experiment created by a racing job cannot land a run in the Default experiment.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from rnnbench.errors import RnnbenchError, TrackingError
from rnnbench.store import check_server, ensure_experiment, resolve_tracking_uri  # noqa: F401 - re-exported

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
HEARTBEAT_TAG = "rnnbench.heartbeat"
HEARTBEAT_SECONDS = 30.0
PARENT_RUN_ENV = "RNNBENCH_PARENT_RUN_ID"
EXPERIMENT_ENV = "RNNBENCH_EXPERIMENT_ID"


class Tracker(Protocol):
    run_id: str | None

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str], run_id: str | None = None) -> str:
        """Create a run (or reopen ``run_id`` to resume it); returns its id."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer metrics; non-finite values are dropped (they break the MLflow run page)."""

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def flush(self) -> None: ...

    def heartbeat(self) -> None:
        """Show that the run is alive (called at every progress update)."""

    def end(self, status: str) -> None:
        """Flush and close the run with ``FINISHED``, ``FAILED`` or ``KILLED``."""

    def find_runs(self, run_key: str) -> list[tuple[str, str]]:
        """``(run_id, status)`` of earlier runs with this run key, newest first."""


class NullTracker:
    """Records nothing; keeps the last metrics for callers that want them."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.tags: dict[str, str] = {}
        self.status: str | None = None

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str], run_id: str | None = None) -> str:
        self.run_id = run_id or "local"
        self.tags.update(tags)
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if math.isfinite(value):
                self.metrics.setdefault(key, []).append((step, float(value)))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def heartbeat(self) -> None:
        pass

    def end(self, status: str) -> None:
        self.status = status

    def find_runs(self, run_key: str) -> list[tuple[str, str]]:
        return []


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MlflowTracker:
    """Logs to an MLflow store; buffers step metrics and writes them in batches."""

    def __init__(self, uri: str, experiment: str, fallback_dir: Path | None = None) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.uri = uri
        self._client: Any = None
        self.experiment_name = experiment
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.fallback_dir = fallback_dir
        self.unsent: Path | None = None
        self._buffer: list[tuple[str, float, int, int]] = []
        self._last_heartbeat = 0.0

    @property
    def client(self) -> Any:
        """The ``MlflowClient``, made on first use: the store is checked, and a SQLite store created or migrated
        safely (:func:`rnnbench.store.client`)."""
        if self._client is None:
            from rnnbench.store import client

            self._client = client(self.uri)
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value

    def connect(self) -> str:
        """Open the store and find or create the experiment; fails fast with a readable message."""
        try:
            self.experiment_id = os.environ.get(EXPERIMENT_ENV) or ensure_experiment(self.client, self.experiment_name)
        except RnnbenchError:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:300]
            raise TrackingError(f"cannot open the tracking store {self.uri}: {type(exc).__name__}: {text}") from exc
        return self.experiment_id

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str], run_id: str | None = None) -> str:
        from mlflow.entities import Param

        if self.experiment_id is None:
            self.connect()
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            self.set_tags(tags)
            self.heartbeat()
            return run_id
        parent = os.environ.get(PARENT_RUN_ENV)
        all_tags = dict(tags, **({"mlflow.parentRunId": parent} if parent else {}))
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        params_list = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for chunk in _chunks(params_list, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)
        self.heartbeat()
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer finite values; they reach the store at :meth:`flush` (the trainer flushes at checkpoints)."""
        now = int(time.time() * 1000)
        self._buffer.extend((k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._write("tags", {k: str(v)[:8000] for k, v in tags.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._write("artifact", {"path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def flush(self) -> None:
        if self._buffer and self.run_id is not None:
            pending, self._buffer = self._buffer, []
            self._write("metrics", pending)

    def heartbeat(self) -> None:
        """Stamp ``rnnbench.heartbeat`` (at most every 30 s) so ``rnnbench runs reap`` can find dead runs."""
        now = time.time()
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = now
            self.set_tags({HEARTBEAT_TAG: f"{now:.0f}"})

    def end(self, status: str) -> None:
        self.flush()
        self._write("terminate", status)
        if self.unsent is not None:
            _warn(
                f"the tracking store {self.uri} could not be reached; run {self.run_id} is kept in {self.unsent}. "
                f"Upload it when the store is back: rnnbench runs upload {self.unsent}"
            )

    def _write(self, op: str, payload: Any) -> None:
        """Apply one write to the store; once the store has failed, journal it locally instead."""
        if self.unsent is None:
            try:
                apply_operation(self.client, self.run_id, op, payload)
                return
            except Exception as exc:  # the store went away mid-run: keep the results locally
                self.unsent = (self.fallback_dir or Path.cwd()) / "unsent_tracking.jsonl"
                _warn(
                    f"tracking store {self.uri} failed ({type(exc).__name__}: {exc}); the rest of run {self.run_id} "
                    f"is kept in {self.unsent}; upload it later with: rnnbench runs upload {self.unsent}"
                )
        self.unsent.parent.mkdir(parents=True, exist_ok=True)
        with self.unsent.open("a") as fh:
            fh.write(json.dumps({"uri": self.uri, "run_id": self.run_id, "op": op, "payload": payload}) + "\n")

    def find_runs(self, run_key: str) -> list[tuple[str, str]]:
        if self.experiment_id is None:
            self.connect()
        from rnnbench.store import search_all

        runs = search_all(self.client, [self.experiment_id], f"tags.`rnnbench.run_key` = '{run_key}'",
                          order_by=["attributes.start_time DESC"])
        return [(r.info.run_id, r.info.status) for r in runs]


def apply_operation(client: Any, run_id: str, op: str, payload: Any) -> None:
    """One tracking write: ``metrics`` [(key, value, ms, step)], ``tags`` {k: v}, ``artifact``, ``terminate``."""
    from mlflow.entities import Metric, RunTag

    if op == "metrics":
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in payload]
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=chunk)
    elif op == "tags":
        for chunk in _chunks([RunTag(k, v) for k, v in payload.items()], MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, tags=chunk)
    elif op == "artifact":
        client.log_artifact(run_id, payload["path"], payload["artifact_path"])
    elif op == "terminate":
        client.set_terminated(run_id, payload)
    else:
        raise ValueError(f"unknown tracking operation {op!r}")


def _warn(message: str) -> None:
    import logging

    logging.getLogger("rnnbench").warning(message)
