"""Jobs that outlive their sweep: a launcher's worker stops when the process that launched the sweep is gone,
and a sweep's parent run left RUNNING by a launcher killed with ``kill -9`` is closed KILLED.

``launcher=joblib`` runs jobs in worker processes (loky) whose parent is the launching process. When that process
is killed outright (SIGKILL: no handler runs), its workers would go on training for runs nobody collects. Each
job started in such a worker watches its parent: once it is gone, the job stops as on SIGTERM (at a step
boundary, with a checkpoint, its run marked KILLED), so the same sweep command resumes it. Jobs of a cluster
launcher (SLURM) are not children of the launching process and are not watched: they finish on their own.

The parent run records the launching process (``rnnbench.sweep.pid`` and ``rnnbench.sweep.host``); a later
sweep on the same host, and ``rnnbench runs reap``, close a RUNNING parent whose process no longer exists.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

LAUNCHER_ENV = "RNNBENCH_SWEEP_PID"
PID_TAG = "rnnbench.sweep.pid"
HOST_TAG = "rnnbench.sweep.host"
POLL_SECONDS = 1.0


def launcher_tags() -> dict[str, str]:
    """Tags naming this (the launching) process, for the sweep's parent run."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def launcher_gone(tags: dict[str, str]) -> bool:
    """True when the tags name a process on this host that no longer exists (a sweep killed outright)."""
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return False
    return tags.get(HOST_TAG) == socket.gethostname() and not process_alive(pid)


def watch_launcher() -> bool:
    """In a job running in a worker process of the launching process, start a daemon thread that sends this
    process SIGTERM once the launching process is gone. Returns whether a watch was started."""
    try:
        launcher = int(os.environ.get(LAUNCHER_ENV, ""))
    except ValueError:
        return False
    if launcher == os.getpid() or os.getppid() != launcher:
        return False  # the job runs in the launching process itself, or was not started by it (a cluster job)
    if getattr(watch_launcher, "_started", False):
        return True  # a worker process reused for the next job: one watch is enough

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(POLL_SECONDS):
            if os.getppid() != launcher:  # re-parented: the launching process died
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="rnnbench-launcher-watch", daemon=True).start()
    watch_launcher._started = True  # type: ignore[attr-defined]
    watch_launcher._launcher = launcher  # type: ignore[attr-defined]
    return True


def exit_if_orphaned() -> None:
    """After a job in a watched worker: if the launching process is gone, end the worker process too (its run
    is closed by then), so no idle worker outlives the sweep."""
    launcher = getattr(watch_launcher, "_launcher", None)
    if launcher is not None and os.getppid() != launcher:
        os._exit(128 + signal.SIGTERM)


def close_orphaned_parents(client, experiment_ids: list[str]) -> list[str]:
    """Mark KILLED every RUNNING sweep parent run of these experiments whose launching process was on this host
    and no longer exists; returns their run ids."""
    from rnnbench.store import search_all

    closed = []
    for run in search_all(client, experiment_ids, "attributes.status = 'RUNNING'"):
        if PID_TAG in run.data.tags and launcher_gone(run.data.tags):
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed
