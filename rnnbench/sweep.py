"""Sweeps: one MLflow parent run per Hydra multirun, prepared once in the launching process.

:class:`SweepCallback` is registered under ``hydra.callbacks`` in ``conf/config.yaml``. Before any job starts
(``on_multirun_start``) it resolves the tracking store exactly as a job does, creates or migrates it (so
parallel jobs never race on a fresh SQLite file's migrations), finds or creates the experiment, creates the
sweep's parent run and exports ``RNNBENCH_PARENT_RUN_ID`` / ``RNNBENCH_EXPERIMENT_ID``: every job, in this
process or in a launcher's worker started afterwards, creates its run as a child of the parent in that
experiment.

When the sweep starts, the callback writes its plan to ``<sweep dir>/.rnnbench/jobs-<parent>.jsonl``: one
``"event": "plan"`` line per job the (basic) sweeper will launch, with the run keys, seeds, group key and
settings of the job's member runs (``rnnbench.identity``). Each job appends the same from its own config, with
its Hydra status, when it ends (``on_job_end``, in the job's process). The report counts every planned seed in
its denominator, so a job that never ran, or was killed, is a failure there, not a gap.

When the sweep ends the callback looks up every planned job's run by run key: jobs that a re-run skipped because
an identical run had already finished are covered by those earlier runs, which are listed in the parent's
``sweep/runs.json`` artifact (with the manifest's lines and the plan) and tag ``rnnbench.sweep.reused_runs``;
the report then covers the whole grid (``rnnbench report --parent`` reads the same file).

``on_multirun_end`` logs the report to the parent and closes it FINISHED, or FAILED when a job failed (an
exception, a user error recorded in ``RNNBENCH_FAILURES_FILE``, or a planned job without a finished run). A diverged
run is a result, not a failure. Hydra skips ``on_multirun_end`` when a job raised, so an ``atexit`` handler
closes a parent that is still open (FAILED), and a later run in the same process clears the sweep's
environment variables first.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from rnnbench.errors import FAILURES_ENV, RnnbenchError, TrackingError
from rnnbench.faults import fault
from rnnbench.orphans import LAUNCHER_ENV, close_orphaned_parents, exit_if_orphaned, launcher_tags, watch_launcher
from rnnbench.report_plan import Plan, ended_jobs, plan_from_jobs, planned_jobs
from rnnbench.sweep_figures import gradient_flow_figures
from rnnbench.sweep_manifest import read_manifest, record_job, record_plan, skipped_keys, sweep_params
from rnnbench.tracking import EXPERIMENT_ENV, PARENT_RUN_ENV

log = logging.getLogger("rnnbench")

SWEEP_TAG = "rnnbench.sweep"


@dataclass
class SweepState:
    """A sweep whose parent run is open, in the process that launched it."""

    uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str
    manifest: Path
    previous_env: dict[str, str | None] = field(default_factory=dict)
    closed: bool = False


_active: SweepState | None = None
_atexit_registered = False


def active_sweep() -> SweepState | None:
    """The sweep this process launched and has not closed yet (its sweeper reads and writes through it)."""
    return _active if _active is not None and not _active.closed else None


def _resolve_uri(config: Any, cwd: Path) -> str:
    """The tracking URI a job of this config resolves (``runner.make_tracker``), absolute."""
    from rnnbench.tracking import resolve_tracking_uri

    return resolve_tracking_uri(config.tracking.uri, cwd)


def _sweep_tags(config: Any, sweep_dir: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    from rnnbench.manager import rnnbench_version

    hydra_cfg = config.hydra
    params = OmegaConf.select(hydra_cfg, "sweeper.params")
    preset = OmegaConf.select(hydra_cfg, "runtime.choices.experiment")
    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_") or "")
    tags = {
        SWEEP_TAG: "true",
        "rnnbench.sweep.overrides": " ".join(OmegaConf.to_container(hydra_cfg.overrides.task)),
        "rnnbench.sweep.dir": str(sweep_dir),
        "rnnbench.sweep.launcher": launcher.rsplit(".", 1)[-1],
        "rnnbench.version": rnnbench_version(),
        **launcher_tags(),
    }
    if params:
        tags["rnnbench.sweep.params"] = json.dumps(OmegaConf.to_container(params, resolve=False), sort_keys=True)
    if preset not in (None, "null"):
        tags["rnnbench.sweep.preset"] = str(preset)
    return tags


def start_sweep(config: Any, cwd: Path | None = None) -> SweepState:
    """Prepare store, experiment and parent run; export the parent and experiment ids to the environment."""
    global _active
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from rnnbench import store

    cwd = cwd or Path.cwd()
    uri = _resolve_uri(config, cwd)
    client = store.client(uri)  # checks a server; creates or migrates a SQLite store under its lock
    name = str(config.tracking.experiment)
    try:
        experiment_id = store.ensure_experiment(client, name)  # creates and migrates a fresh store, once
        for run_id in close_orphaned_parents(client, [experiment_id]):
            log.warning("closed sweep parent run %s KILLED: the process that launched it is gone", run_id)
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"cannot open the tracking store {uri}: {type(exc).__name__}: {exc}") from exc

    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir = sweep_dir if sweep_dir.is_absolute() else (cwd / sweep_dir).resolve()
    tags = _sweep_tags(config, sweep_dir)
    preset = tags.get("rnnbench.sweep.preset", "multirun")
    run_name = f"sweep-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = client.create_run(experiment_id, run_name=run_name, tags=tags)
    parent_id = parent.info.run_id

    manifest = sweep_dir / ".rnnbench" / f"jobs-{parent_id}.jsonl"
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("")
    except OSError as exc:
        client.set_terminated(parent_id, "FAILED")
        raise RnnbenchError(f"cannot write the sweep directory {sweep_dir}: {exc}") from exc
    previous = {key: os.environ.get(key) for key in (PARENT_RUN_ENV, EXPERIMENT_ENV)}
    os.environ[PARENT_RUN_ENV] = parent_id
    os.environ[EXPERIMENT_ENV] = experiment_id
    _active = SweepState(uri, experiment_id, name, parent_id, manifest, previous)
    print(f"rnnbench: sweep parent run {parent_id} in experiment {name!r} ({uri})", file=sys.stderr, flush=True)
    return _active


def _user_failures() -> list[str]:
    path = os.environ.get(FAILURES_ENV)
    if not path or not Path(path).exists():
        return []
    return [line for line in Path(path).read_text().splitlines() if line.strip()]


def collect_runs(
    client: Any, state: SweepState, jobs: list[dict[str, Any]], not_run: Any = ()
) -> tuple[list[Any], list[str], list[str]]:
    """(runs of the sweep, ids of reused earlier runs, run keys of jobs that have no finished run); the run keys
    in ``not_run`` (a capacity sweep's lengths above a failure) are looked up but never missing."""
    from rnnbench.store import search_all

    children = search_all(client, [state.experiment_id], f"tags.`mlflow.parentRunId` = '{state.parent_run_id}'")
    finished_keys = {r.data.tags.get("rnnbench.run_key") for r in children if r.info.status == "FINISHED"}
    reused: list[Any] = []
    missing: list[str] = []
    for key in dict.fromkeys(key for job in jobs for key in job.get("run_keys") or []):
        if key in finished_keys:
            continue
        earlier = client.search_runs(
            [state.experiment_id],
            filter_string=f"tags.`rnnbench.run_key` = '{key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if earlier:
            reused.append(earlier[0])
        elif key not in not_run:
            missing.append(key)
    return children + reused, [r.info.run_id for r in reused], missing


def finish_sweep(state: SweepState, force_failed: bool = False) -> str:
    """Report on the sweep's runs, log the report to the parent and close it; returns the final status."""
    global _active
    if state.closed:
        return "CLOSED"
    state.closed = True
    status = "FAILED" if force_failed else "FINISHED"
    reported = False
    try:
        from mlflow.entities import RunTag

        from rnnbench import store

        client = store.client(state.uri)
        lines = read_manifest(state.manifest)
        jobs, planned = ended_jobs(lines), planned_jobs(lines)
        plan = plan_from_jobs(lines)
        not_run = skipped_keys(lines)
        failures = _user_failures()
        raised = [j for j in jobs if j.get("status") == "FAILED"]
        try:
            runs, reused, missing = collect_runs(client, state, planned, not_run)
        except Exception as exc:
            log.warning("could not read back the sweep's runs: %s", exc)
            runs, reused, missing = [], [], []
        if failures or raised or missing:
            status = "FAILED"
        tags = {
            "rnnbench.sweep.jobs": str(len(jobs)),
            "rnnbench.sweep.planned_jobs": str(len(planned)),
            "rnnbench.sweep.failed_jobs": str(max(len(failures) + len(raised), len(missing))),
            "rnnbench.sweep.reused_runs": str(len(reused)),
        }
        if reused:
            tags["rnnbench.sweep.reused_run_ids"] = ",".join(reused)[:8000]
        if any(line.get("event") == "ladder" for line in lines) or not_run:
            tags["rnnbench.sweep.not_run"] = str(len(not_run))
        client.log_batch(state.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        with tempfile.TemporaryDirectory(prefix="rnnbench-sweep-") as tmp:
            listing = Path(tmp) / "runs.json"
            listing.write_text(json.dumps(
                {
                    "run_ids": [r.info.run_id for r in runs],
                    "reused_run_ids": reused,
                    "jobs": lines,
                    "plan": plan.to_json(),
                    "missing_run_keys": missing,
                    "failures": failures,
                },
                indent=2,
            ) + "\n")
            client.log_artifact(state.parent_run_id, str(listing), "sweep")
            if runs or plan.groups:
                reported = _report_to_parent(client, state, runs, Path(tmp) / "report", plan)
    except Exception as exc:
        log.warning("the sweep report could not be logged to parent run %s: %s", state.parent_run_id, exc)
    finally:
        try:
            from rnnbench import store

            store.client(state.uri).set_terminated(state.parent_run_id, status)
        except Exception as exc:
            log.warning("could not close sweep parent run %s: %s", state.parent_run_id, exc)
        _restore_env(state)
        if _active is state:
            _active = None
    from rnnbench.ui import browse_lines

    links = browse_lines(state.uri, state.experiment_id, state.parent_run_id, report=reported)
    print(f"rnnbench: sweep parent run {state.parent_run_id} {status} in experiment {state.experiment_name!r}\n  "
          + "\n  ".join(links), file=sys.stderr, flush=True)
    return status


def _report_to_parent(client: Any, state: SweepState, runs: list[Any], out_dir: Path, plan: Plan | None = None) -> bool:
    """Build the sweep's report and log it to the parent run; False when there is nothing to report."""
    from rnnbench.report import attach, build_report, headline

    fault("sweep.report")
    try:
        report = build_report(runs, out_dir, client, source=f"sweep parent run {state.parent_run_id}", plan=plan)
    except RnnbenchError as exc:
        log.warning("no sweep report: %s", exc)
        return False
    try:
        figures = gradient_flow_figures(client, runs)
    except Exception as exc:
        log.warning("no gradient-flow figure for the sweep: %s", exc)
        figures = {}
    attach(client, state.parent_run_id, report, figures)
    print(headline(report), flush=True)
    return True


def log_sweep_params(state: SweepState, config: Any) -> None:
    """The sweep as the parent run's params (:func:`rnnbench.sweep_manifest.sweep_params`)."""
    from mlflow.entities import Param

    from rnnbench import store

    try:
        params = sweep_params(config, read_manifest(state.manifest))
        params_list = [Param(k, v) for k, v in params.items()]
        client = store.client(state.uri)
        for i in range(0, len(params_list), 100):
            client.log_batch(state.parent_run_id, params=params_list[i : i + 100])
    except Exception as exc:  # noqa: BLE001 - the parent's description of the sweep, not the sweep itself
        log.warning("could not log the sweep's params to parent run %s: %s", state.parent_run_id, exc)


def _restore_env(state: SweepState) -> None:
    for key, value in state.previous_env.items():
        if os.environ.get(key) not in (state.parent_run_id, state.experiment_id):
            continue  # changed by someone else since: leave it
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def close_stale() -> None:
    """Close a sweep of this process whose end hook never ran (a job raised), and clear its environment."""
    if _active is not None and not _active.closed:
        finish_sweep(_active, force_failed=True)


def _at_exit() -> None:
    if _active is not None and not _active.closed:
        finish_sweep(_active, force_failed=True)


class SweepCallback(Callback):
    """Hydra callback: a parent run per multirun, child runs per job, the report on the parent at the end."""

    def __init__(self) -> None:
        self.manifest: str | None = None
        try:  # Hydra creates its callbacks before its sweeper: sweeper=capacity needs its class registered first
            from rnnbench.capacity import register_plugin

            register_plugin()
        except Exception as exc:  # noqa: BLE001 - only sweeper=capacity needs it, and it then says what failed
            log.debug("capacity sweeper not registered: %s", exc)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        close_stale()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        global _atexit_registered
        close_stale()
        self.manifest = None
        try:  # before the parent run exists: a capacity sweep that cannot run creates nothing
            from rnnbench.capacity import check_config
            from rnnbench.resources import check_slurm_export

            check_config(config)
            check_slurm_export(config)
        except RnnbenchError as exc:
            print(f"rnnbench: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from exc  # bad input: exit status 2, like every other refusal
        os.environ[LAUNCHER_ENV] = str(os.getpid())  # a worker's job stops when this process is gone
        if config.tracking.backend == "none":
            return
        try:
            state = start_sweep(config)
        except RnnbenchError as exc:
            raise SystemExit(f"rnnbench: error: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - Hydra turns a callback's exception into a warning and goes on
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise SystemExit(f"rnnbench: error: the sweep could not start its parent run: {message}") from exc
        self.manifest = str(state.manifest)
        record_plan(state.manifest, config)
        log_sweep_params(state, config)
        if not _atexit_registered:
            atexit.register(_at_exit)
            _atexit_registered = True

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        watch_launcher()

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if self.manifest is not None:
            try:
                record_job(Path(self.manifest), config, job_return)
            except OSError as exc:
                log.warning("could not record job in the sweep manifest %s: %s", self.manifest, exc)
        exit_if_orphaned()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if _active is not None and not _active.closed and self.manifest is not None:
            finish_sweep(_active)
        self.manifest = None
