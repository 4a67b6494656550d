"""``rnnbench runs``: keep the tracking store truthful.

    rnnbench runs reap [--stale-after 600]     mark RUNNING runs whose process died (stale heartbeat) KILLED,
                                               and sweep parents whose launching process is gone
    rnnbench runs upload FILE                  send a run journaled while the store was unreachable
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

from rnnbench import validation
from rnnbench.errors import RnnbenchError
from rnnbench.orphans import HOST_TAG, PID_TAG, launcher_gone
from rnnbench.store import client as store_client
from rnnbench.store import resolve_tracking_uri, search_all
from rnnbench.tracking import HEARTBEAT_TAG, apply_operation

OPERATIONS = ("metrics", "tags", "artifact", "terminate")


def _client(uri: str | None):
    """A client on an existing store (maintenance never creates one)."""
    return store_client(resolve_tracking_uri(uri), create=False)


def _parent_stale(client, parent, cutoff: float) -> bool:
    """A sweep parent launched on another host: stale when it and every child of it started, ended or beat
    its heartbeat before ``cutoff``. On this host its launching process decides (:func:`launcher_gone`)."""
    if parent.data.tags.get(HOST_TAG) == socket.gethostname():
        return False
    times = [parent.info.start_time / 1000]
    for child in search_all(client, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"):
        times.append(max(float(child.data.tags.get(HEARTBEAT_TAG, 0)), (child.info.end_time or 0) / 1000,
                         child.info.start_time / 1000))
    return max(times) < cutoff


def reap(uri: str | None, experiment: str | None, stale_after: float, dry_run: bool) -> list[str]:
    """KILL every RUNNING run whose last heartbeat (or start, without one) is older than ``stale_after`` s."""
    client = _client(uri)
    if experiment is None:
        experiments = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise RnnbenchError(f"--experiment {experiment!r} does not exist in {client.tracking_uri}")
        experiments = [found.experiment_id]
    if not experiments:
        return []
    now = time.time()
    reaped = []
    for run in search_all(client, experiments, "attributes.status = 'RUNNING'"):
        if PID_TAG in run.data.tags:  # a sweep's parent run: alive while its launcher is, or its jobs are
            if launcher_gone(run.data.tags):
                why = "the process that launched the sweep is gone"
            elif _parent_stale(client, run, now - stale_after):
                why = f"no job of the sweep started, ended or beat for over {stale_after / 60:.1f} min"
            else:
                continue
        else:
            last = float(run.data.tags.get(HEARTBEAT_TAG, run.info.start_time / 1000))
            if now - last < stale_after:
                continue
            why = f"no heartbeat for {(now - last) / 60:.1f} min"
        reaped.append((run, why))
    for run, why in reaped:  # decided first: closing a child must not make its parent look active
        print(f"{'would reap' if dry_run else 'reaped'} {run.info.run_id} ({run.info.run_name}): {why}")
        if not dry_run:
            client.set_tag(run.info.run_id, "rnnbench.outcome", "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run, _ in reaped]


def read_journal(path: Path) -> list[dict]:
    """The records of a journal written by :class:`rnnbench.tracking.MlflowTracker`; anything else is refused with
    one line naming the file (and the line) and what is wrong."""
    if not path.exists():
        raise RnnbenchError(f"no journal at {path}")
    if not path.is_file():
        raise RnnbenchError(f"{path} is not a file; give the unsent_tracking.jsonl journal of a run")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RnnbenchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RnnbenchError(f"{path} is not a journal written by rnnbench (not UTF-8 text: binary data at byte "
                            f"{exc.start}); give the unsent_tracking.jsonl of a run") from exc
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        problem = _record_problem(record)
        if problem:
            shown = line.strip()
            shown = shown[:60] + ("..." if len(shown) > 60 else "")
            raise RnnbenchError(f"{path} line {number} is not a journal record written by rnnbench ({problem}): "
                                f"{shown!r}; nothing was uploaded")
        records.append(record)
    if not records:
        raise RnnbenchError(f"{path} holds no journal records; nothing to upload")
    return records


def _record_problem(record: object) -> str:
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in ("uri", "run_id", "op", "payload") if k not in record]
    if missing:
        return f"no {missing[0]!r}"
    if not isinstance(record["run_id"], str) or not record["run_id"]:
        return "run_id is not a run id"
    if not isinstance(record["uri"], str):
        return "uri is not a string"
    if record["op"] not in OPERATIONS:
        return f"unknown operation {record['op']!r}"
    payload = record["payload"]
    op = record["op"]
    if op == "metrics":
        ok = isinstance(payload, list) and all(
            isinstance(m, list) and len(m) == 4 and isinstance(m[0], str)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in m[1:]) for m in payload
        )
    elif op == "tags":
        ok = isinstance(payload, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in payload.items())
    elif op == "artifact":
        ok = isinstance(payload, dict) and isinstance(payload.get("path"), str)
    else:
        ok = payload in ("FINISHED", "FAILED", "KILLED")
    return "" if ok else f"a malformed {op} payload"


def upload(path: Path, uri: str | None) -> int:
    """Replay a journal written while the store was unreachable; returns the number of operations sent."""
    records = read_journal(path)
    clients: dict[str, object] = {}
    for record in records:
        target = uri or record["uri"]
        if target not in clients:
            clients[target] = _client(target)
        client = clients[target]
        try:
            apply_operation(client, record["run_id"], record["op"], record["payload"])
        except Exception as exc:
            text = " ".join(str(exc).split())[:300]
            raise RnnbenchError(f"upload to {target} failed: {type(exc).__name__}: {text}; the journal is kept") from exc
    path.rename(path.with_suffix(".uploaded.jsonl"))
    runs = sorted({r["run_id"] for r in records})
    print(f"uploaded {len(records)} operation(s) of run(s) {', '.join(runs)}")
    return len(records)


def _seconds(text: str) -> float | str:
    """``--stale-after``: a number (checked in :func:`main`, so that the error is rnnbench's one line)."""
    try:
        return float(text)
    except ValueError:
        return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rnnbench runs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_reap = sub.add_parser("reap", help="mark runs whose process died KILLED")
    p_reap.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    p_reap.add_argument("--experiment", help="default: every experiment")
    p_reap.add_argument("--stale-after", type=_seconds, default=600.0, help="seconds without heartbeat (default 600)")
    p_reap.add_argument("--dry-run", action="store_true")
    p_up = sub.add_parser("upload", help="send a run kept locally while the store was unreachable")
    p_up.add_argument("file", type=Path)
    p_up.add_argument("--tracking-uri", help="default: the store the run was started against")
    args = parser.parse_args(argv)
    if args.command == "reap":
        validation.positive_number("--stale-after", args.stale_after, why="seconds")
        reaped = reap(args.tracking_uri, args.experiment, args.stale_after, args.dry_run)
        if not reaped:
            print("no stale runs")
    else:
        upload(args.file, args.tracking_uri)
    return 0
