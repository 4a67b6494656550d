"""The CPUs this process was given: what every launcher divides among its jobs' torch threads."""

from __future__ import annotations

import os
from collections.abc import Mapping


def usable_cpus(environ: Mapping[str, str] | None = None) -> int:
    """CPUs this process may run on, at least 1.

    The process's affinity mask (``os.sched_getaffinity``: what ``taskset``, a cpuset or SLURM's task binding left
    it; ``os.cpu_count()`` where the platform has no affinity), capped by ``SLURM_CPUS_PER_TASK`` when SLURM set it
    (a cluster that allocates CPUs without binding tasks to them).
    """
    environ = os.environ if environ is None else environ
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    given = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if given.isdigit() and int(given) > 0:
        cpus = min(cpus, int(given))
    return max(1, cpus)
