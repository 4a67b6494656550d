"""Fault injection for the adversarial tests (internal): ``RNNBENCH_FAULT=<point>`` makes the process kill
itself with SIGKILL when it reaches that point, so a test can crash it at a precise moment, not a lucky one.

Points: ``store.migrate``, ``checkpoint.write`` (a checkpoint written but not yet renamed into place),
``train.before_first_checkpoint``, ``train.step`` (the end of every training step), ``train.after_last_step``,
``sweep.report``. ``<point>@<n>`` fires on the n-th time the point is reached in this process (1-based);
``<point>:term`` (``:int``, ``:usr2``) sends SIGTERM (SIGINT, SIGUSR2: SLURM's warning before a job's time limit
under submitit) instead of SIGKILL; ``<point>:hold`` blocks there until a stop is requested (a signal arrived), at
most 10 minutes, so that an outside signal (a cluster's time limit) lands at a known step, however fast the machine.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

ENV = "RNNBENCH_FAULT"
HOLD_LIMIT_S = 600.0
_seen: dict[str, int] = {}


def fault(point: str, stop_requested: Callable[[], int | None] | None = None) -> None:
    """Kill this process now if ``RNNBENCH_FAULT`` names ``point`` (and its count, if given); with ``:hold``,
    wait until ``stop_requested()`` reports a signal instead."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    wanted, _, how = wanted.partition(":")
    name, _, nth = wanted.partition("@")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if nth and _seen[point] != int(nth):
        return
    if how == "hold":
        deadline = time.monotonic() + HOLD_LIMIT_S
        while time.monotonic() < deadline and (stop_requested is None or stop_requested() is None):
            time.sleep(0.05)  # a signal's handler runs between these sleeps
        return
    sent = {"term": signal.SIGTERM, "int": signal.SIGINT, "usr2": signal.SIGUSR2}.get(how, signal.SIGKILL)
    os.kill(os.getpid(), sent)
