"""What a job is given by where it runs: the CPUs every launcher divides among its jobs' torch threads, and, under
SLURM, the launching shell's environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from rnnbench.errors import RnnbenchError


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


def check_slurm_export(config: Any, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a SLURM sweep whose jobs would not get the launching shell's environment.

    The jobs find the sweep's parent run, its experiment and the tracking server in the environment sbatch
    exports (its default ``--export=ALL``). ``SBATCH_EXPORT`` outranks the ``#SBATCH`` lines submitit writes, so
    a site's ``SBATCH_EXPORT=NONE`` (or a list without ``ALL``) would make every job fail inside submitit.
    """
    from omegaconf import OmegaConf

    environ = os.environ if environ is None else environ
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    value = environ.get("SBATCH_EXPORT")
    if not launcher.endswith(".SlurmLauncher") or value is None:
        return
    if "ALL" not in [v.strip().upper() for v in value.split(",")]:
        raise RnnbenchError(
            f"SBATCH_EXPORT={value} would keep this shell's environment from the SLURM jobs (they read the sweep's "
            f"parent run and MLFLOW_TRACKING_URI from it, and submitit needs it); launch with "
            f"SBATCH_EXPORT=ALL rnnbench -m ..."
        )
