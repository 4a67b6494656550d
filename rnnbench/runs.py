"""``rnnbench runs``: keep the tracking store truthful.

    rnnbench runs reap [--stale-after 600]     mark RUNNING runs whose process died (stale heartbeat) KILLED
    rnnbench runs upload FILE                  send a run journaled while the store was unreachable
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rnnbench.errors import RnnbenchError
from rnnbench.tracking import HEARTBEAT_TAG, apply_operation, resolve_tracking_uri


def _client(uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=resolve_tracking_uri(uri))


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
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=50000):
        last = float(run.data.tags.get(HEARTBEAT_TAG, run.info.start_time / 1000))
        if now - last < stale_after:
            continue
        reaped.append(run.info.run_id)
        age = f"{(now - last) / 60:.1f} min"
        print(f"{'would reap' if dry_run else 'reaped'} {run.info.run_id} ({run.info.run_name}): no heartbeat for {age}")
        if not dry_run:
            client.set_tag(run.info.run_id, "rnnbench.outcome", "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")
    return reaped


def upload(path: Path, uri: str | None) -> int:
    """Replay a journal written while the store was unreachable; returns the number of operations sent."""
    if not path.is_file():
        raise RnnbenchError(f"no journal at {path}")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    clients: dict[str, object] = {}
    for record in records:
        target = uri or record["uri"]
        client = clients.setdefault(target, _client(target))
        try:
            apply_operation(client, record["run_id"], record["op"], record["payload"])
        except Exception as exc:
            raise RnnbenchError(f"upload to {target} failed: {type(exc).__name__}: {exc}; the journal is kept") from exc
    path.rename(path.with_suffix(".uploaded.jsonl"))
    runs = sorted({r["run_id"] for r in records})
    print(f"uploaded {len(records)} operation(s) of run(s) {', '.join(runs)}")
    return len(records)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rnnbench runs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_reap = sub.add_parser("reap", help="mark runs whose process died KILLED")
    p_reap.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    p_reap.add_argument("--experiment", help="default: every experiment")
    p_reap.add_argument("--stale-after", type=float, default=600.0, help="seconds without heartbeat (default 600)")
    p_reap.add_argument("--dry-run", action="store_true")
    p_up = sub.add_parser("upload", help="send a run kept locally while the store was unreachable")
    p_up.add_argument("file", type=Path)
    p_up.add_argument("--tracking-uri", help="default: the store the run was started against")
    args = parser.parse_args(argv)
    if args.command == "reap":
        if args.stale_after <= 0:
            raise RnnbenchError(f"--stale-after={args.stale_after} is not allowed: a positive number of seconds")
        reaped = reap(args.tracking_uri, args.experiment, args.stale_after, args.dry_run)
        if not reaped:
            print("no stale runs")
    else:
        upload(args.file, args.tracking_uri)
    return 0
