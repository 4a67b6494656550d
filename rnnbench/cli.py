"""The ``rnnbench`` command: a Hydra app for runs and sweeps, plus a few subcommands.

    rnnbench task=adding cell=gru                    one run
    rnnbench -m cell=rnn_tanh,lstm,gru seed=0,1,2    a sweep (Hydra multirun)
    rnnbench plugins                                 installed cells and tasks, and who provides them
    rnnbench report ...                              accuracy against dependency length from the store
    rnnbench runs ...                                maintenance of the tracking store
    rnnbench ui                                      the MLflow UI on the store, with links to runs and report

Torch and MLflow are imported only when a job runs, so ``--help`` answers quickly.

Bad input is refused before anything is written (no ``outputs/`` folder, no store, no checkpoint): before Hydra
takes over (:mod:`rnnbench.preflight`). Every error is one line on stderr, exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from rnnbench.errors import FAILURES_ENV, RnnbenchError
from rnnbench.preflight import fail as _fail
from rnnbench.preflight import preflight, report_hydra_errors_in_one_line

log = logging.getLogger("rnnbench")
SUBCOMMANDS = {
    "plugins": "rnnbench.commands:plugins_main",
    "report": "rnnbench.report:main",
    "diagnostics": "rnnbench.diagnostics_runs:main",
    "runs": "rnnbench.runs:main",
    "ui": "rnnbench.ui:main",
}


def _record_failure(message: str) -> None:
    path = os.environ.get(FAILURES_ENV)
    if path:
        with open(path, "a") as fh:  # one short append per failed job: atomic for concurrent writers
            fh.write(message.replace("\n", " ") + "\n")


def _hydra_app():
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="pkg://rnnbench.conf", config_name="config")
    def app(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        n_jobs = int(hc.launcher.get("n_jobs", 1) or 1) if multirun else 1
        if n_jobs < 0:  # joblib's "every CPU": the CPUs this process was given
            from rnnbench.resources import usable_cpus

            n_jobs = usable_cpus()

        from rnnbench.orphans import exit_if_orphaned
        from rnnbench.runner import run_job
        from rnnbench.train import Interrupted

        label = f"job {hc.job.num} ({' '.join(hc.overrides.task)})" if multirun else "run"
        try:
            results = run_job(
                cfg, Path(hc.runtime.output_dir), Path(hc.runtime.cwd), n_jobs, list(hc.overrides.task)
            )
        except RnnbenchError as exc:
            if not multirun:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                _fail(str(exc))
            log.error("%s failed: %s", label, exc)
            _record_failure(f"{label}: {exc}")
            return
        except Interrupted as exc:
            log.error("%s interrupted by signal %d; checkpoint saved, run marked KILLED", label, exc.signum)
            exit_if_orphaned()  # a launcher's worker whose sweep was killed: the worker ends too
            sys.exit(128 + exc.signum)
        except KeyboardInterrupt:
            log.error("%s interrupted; checkpoint saved, run marked KILLED", label)
            sys.exit(130)
        if not results:
            print(f"rnnbench: {label}: already finished with this configuration; skipped", file=sys.stderr)
        for result in results:
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if not k.startswith("time/"))
            base = ", ".join(f"{k}={v:.4g}" for k, v in result.baseline.items())
            print(
                f"rnnbench: {cfg.cell.name} on {cfg.task.name} (dependency length {cfg.task.dependency_length}, "
                f"seed {result.seed}): {result.outcome} at step {result.step}; {metrics}; memoryless baseline {base}",
                flush=True,
            )
        if not multirun and results and results[0].experiment_id is not None:
            from rnnbench.tracking import resolve_tracking_uri
            from rnnbench.ui import browse_lines

            uri = resolve_tracking_uri(cfg.tracking.uri, Path(hc.runtime.cwd))
            run_id = results[0].run_id if len(results) == 1 else None
            print("rnnbench: in MLflow\n  " + "\n  ".join(browse_lines(uri, results[0].experiment_id, run_id)),
                  flush=True)

    return app


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        module, func = SUBCOMMANDS[argv[0]].split(":")
        try:
            code = getattr(importlib.import_module(module), func)(argv[1:])
        except RnnbenchError as exc:
            _fail(str(exc))
        sys.exit(code or 0)

    from rnnbench.config import register_configs
    from rnnbench.manager import get_registry

    try:
        register_configs(get_registry())
    except RnnbenchError as exc:
        _fail(str(exc))
    report_hydra_errors_in_one_line()
    preflight(argv)
    handle, failures = tempfile.mkstemp(prefix="rnnbench-failures-", suffix=".txt")
    os.close(handle)
    os.environ[FAILURES_ENV] = failures
    try:
        _hydra_app()()
    finally:
        lines = Path(failures).read_text().splitlines()
        Path(failures).unlink(missing_ok=True)
    if lines:
        print(f"rnnbench: {len(lines)} job(s) of the sweep failed:", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
