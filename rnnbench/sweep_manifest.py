"""A sweep's manifest: the jobs it plans (written when it starts) and the jobs that ended, one JSON line each,
with their members' run keys, seeds, group key and settings (:mod:`rnnbench.identity`); a capacity sweep adds
the runs it does not launch because they are above a failure (``skip`` lines) and its ladders."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("rnnbench")


def job_members(job_cfg: Any) -> dict[str, Any]:
    """What a job will run, for the manifest: its members' ``run_keys`` and ``seeds``, and the ``group_key`` and
    ``settings`` (every resolved setting but the seed) they share (``rnnbench.identity``)."""
    from omegaconf import OmegaConf

    from rnnbench import identity

    resolved = OmegaConf.to_container(job_cfg, resolve=True)
    if "hydra" in resolved:
        resolved.pop("hydra")
    members = int(resolved.get("trainer", {}).get("seeds", 1) or 1)
    return {
        "run_keys": identity.job_run_keys(resolved),
        "seeds": identity.member_seeds(int(resolved["seed"]), members),
        "group_key": identity.group_key(resolved),
        "settings": identity.group_settings(identity.flatten(resolved)),
    }


def job_run_keys(job_cfg: Any) -> list[str]:
    """The run keys of a job's runs: one, or one per member with ``trainer.seeds`` > 1 (seeds seed, seed+1...)."""
    return job_members(job_cfg)["run_keys"]


def _append(manifest: Path, lines: list[dict[str, Any]]) -> None:
    with open(manifest, "a") as fh:  # one write per call: short appends from concurrent jobs do not interleave
        fh.write("".join(json.dumps(line) + "\n" for line in lines))


def record_lines(manifest: Path, lines: list[dict[str, Any]]) -> None:
    """Append lines written by the sweeper itself: the capacity sweeper's ``plan``, ``skip`` (a seed's length
    not run because it is above a failure of its ladder) and ``ladder`` lines (:mod:`rnnbench.capacity`)."""
    _append(manifest, lines)


def skipped_keys(lines: list[dict[str, Any]]) -> dict[str, str]:
    """Run key -> why it was not run, from the manifest's ``skip`` lines."""
    return {str(line["run_key"]): str(line.get("reason", "not run")) for line in lines
            if line.get("event") == "skip" and line.get("run_key")}


def record_job(manifest: Path, config: Any, job_return: Any) -> None:
    """Append this job's members and Hydra status to the sweep's manifest (one short atomic append)."""
    from omegaconf import OmegaConf

    members: dict[str, Any] = {"run_keys": []}
    try:
        members = job_members(job_return.cfg)
    except Exception as exc:  # a config that does not resolve: the job itself failed on it
        log.debug("no run key for the sweep manifest: %s", exc)
    status = getattr(getattr(job_return, "status", None), "name", "UNKNOWN")
    line = {
        "num": OmegaConf.select(config, "hydra.job.num"),
        "overrides": list(getattr(job_return, "overrides", None) or []),
        "status": status,
        **members,
    }
    _append(manifest, [line])


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def plan_jobs(config: Any) -> list[dict[str, Any]]:
    """Every job the sweep will launch, as manifest ``plan`` lines, composed as Hydra's basic sweeper composes
    them (its params, then the command line's overrides); [] for another sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return []
    loader = GlobalHydra.instance().config_loader()
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    lines = []
    for batch in BasicSweeper.split_arguments(overrides, None):
        for job_overrides in batch:
            job_cfg = loader.load_sweep_config(config, list(job_overrides))
            with open_dict(job_cfg):
                del job_cfg["hydra"]
            lines.append({"event": "plan", "overrides": list(job_overrides), **job_members(job_cfg)})
    return lines


def record_plan(manifest: Path, config: Any) -> int:
    """Write the sweep's plan to its manifest; returns the number of planned jobs (0 when unknown)."""
    try:
        lines = plan_jobs(config)
    except Exception as exc:  # the sweep itself reports a config that does not compose
        log.debug("no plan for the sweep manifest: %s", exc)
        return 0
    if lines:
        _append(manifest, lines)
    return len(lines)


def read_manifest(manifest: Path) -> list[dict[str, Any]]:
    if not manifest.exists():
        return []
    jobs = []
    for line in manifest.read_text().splitlines():
        try:
            jobs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return jobs


def sweep_params(config: Any, lines: list[dict[str, Any]]) -> dict[str, str]:
    """The sweep as its parent run's params: ``sweep.preset`` and ``sweep.<key>`` for every key the sweep sets,
    with the values its jobs take in order (``sweep.cell=rnn_tanh,lstm,gru``). From the planned jobs when the
    plan is known when the sweep starts (the basic sweeper: ``glob(*)`` and ``range(5)`` expanded), else as
    written (the preset's sweeper params, then the command line's overrides, which replace them)."""
    from omegaconf import OmegaConf

    values: dict[str, list[str]] = {}

    def add(override: str, replace: bool) -> None:
        key, sep, value = str(override).partition("=")
        key = key.lstrip("+~")
        if not sep or key == "experiment":
            return
        if replace or key not in values:
            values[key] = []
        if value not in values[key]:
            values[key].append(value)

    planned = [line for line in lines if line.get("event") == "plan" and line.get("overrides")]
    if planned:
        for line in planned:
            for override in line["overrides"]:
                add(override, replace=False)
    else:
        params = OmegaConf.select(config, "hydra.sweeper.params") or {}
        written = [f"{k}={v}" for k, v in OmegaConf.to_container(params, resolve=False).items()]
        for override in written + list(OmegaConf.select(config, "hydra.overrides.task") or []):
            add(override, replace=True)
    preset = OmegaConf.select(config, "hydra.runtime.choices.experiment")
    out = {"sweep.preset": "none" if preset in (None, "null") else str(preset)}
    out.update({f"sweep.{key}": ",".join(v)[:6000] for key, v in values.items()})
    if planned:
        out["sweep.jobs"] = str(len(planned))
    return out
