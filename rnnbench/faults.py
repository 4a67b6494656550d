"""Fault injection for the adversarial tests (internal): ``RNNBENCH_FAULT=<point>`` makes the process kill
itself with SIGKILL when it reaches that point, so a test can crash it at a precise moment, not a lucky one.

Points: ``store.migrate``, ``checkpoint.write`` (a checkpoint written but not yet renamed into place),
``train.before_first_checkpoint``, ``train.after_last_step``, ``sweep.report``. ``<point>@<n>`` fires on the
n-th time the point is reached (1-based); ``<point>:term`` (``:int``, ``:usr2``) sends SIGTERM (SIGINT, SIGUSR2: SLURM's
warning before a job's time limit under submitit) instead of SIGKILL.
"""

from __future__ import annotations

import os
import signal

ENV = "RNNBENCH_FAULT"
_seen: dict[str, int] = {}


def fault(point: str) -> None:
    """Kill this process now if ``RNNBENCH_FAULT`` names ``point`` (and its count, if given)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    wanted, _, how = wanted.partition(":")
    name, _, nth = wanted.partition("@")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if not nth or _seen[point] == int(nth):
        sent = {"term": signal.SIGTERM, "int": signal.SIGINT, "usr2": signal.SIGUSR2}.get(how, signal.SIGKILL)
        os.kill(os.getpid(), sent)
