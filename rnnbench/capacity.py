"""The capacity sweep: ``rnnbench -m sweeper=capacity task.dependency_length=25,50,100,... ...``.

A Hydra sweeper that takes the sweep's ``task.dependency_length`` values as an ascending ladder and climbs it
per configuration and seed (:mod:`rnnbench.capacity_ladder`), in waves, through whichever launcher is
configured (basic, joblib, slurm):

- wave 1 launches every (configuration, seed) at the first length; wave n launches the next length only for
  the ladders whose last length succeeded (a ladder stops after ``hydra.sweeper.patience`` consecutive
  failures, default 1); every other swept setting (cells, tasks, learning rates, seeds...) is expanded as
  Hydra's basic sweeper expands it, and each combination is a ladder per seed;
- a result is read back from the tracking store by run key, never from the job's return value: a success is
  a FINISHED run, not diverged, with ``final/accuracy`` >= the job's ``trainer.solved_threshold``; a job that
  failed or left no finished run is a failure;
- the state is re-derived from the store: a length whose run already finished is not launched but read back,
  so running the same command again resumes an interrupted sweep, and launches nothing when all is done;
- ``trainer.seeds=K`` ladders are per seed: one job of K members per wave while all K climb; once some stop,
  the others continue as jobs over the blocks of consecutive seeds that still climb (``seed=s trainer.seeds=k``:
  the run keys do not depend on ``trainer.seeds``, so these are the same runs).

The sweep's manifest (:mod:`rnnbench.sweep_manifest`) gets the plan when the sweep starts (every length of every
ladder, as the basic sweeper's plan would list it), a ``skip`` line per seed and length above a stop ("not
run: above a failure", which the report shows as such, never as missing), and a ``ladder`` line per seed at the
end. The report (``rnnbench report``; the sweep attaches it to its parent run) adds the capacity table.

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace package; rather than a separate
distribution, :func:`register_plugin` makes this class available there as
``hydra_plugins.rnnbench_capacity.CapacitySweeper`` from the launching process (called by the sweep callback,
which Hydra creates before the sweeper).
"""

from __future__ import annotations

import itertools
import logging
import sys
import types
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from hydra.plugins.sweeper import Sweeper

from rnnbench.capacity_ladder import MISSING, Ladder, Rung, StoreResults, wave_jobs
from rnnbench.errors import RnnbenchError

log = logging.getLogger("rnnbench")

LENGTH_KEY = "task.dependency_length"
PLUGIN_MODULE = "hydra_plugins.rnnbench_capacity"
TARGET = f"{PLUGIN_MODULE}.CapacitySweeper"
NEEDS_STORE = ("sweeper=capacity reads each run's result back from the tracking store: it needs tracking=mlflow "
               "(it was tracking=none)")


class CapacityError(RnnbenchError):
    """A capacity sweep that cannot run as given (shown as Hydra shows a sweeper's error)."""


def ladder_arguments(overrides: Sequence[Any]) -> tuple[list[str], list[list[str]], int | None]:
    """(the ladder's length overrides, ascending; the sweep's other combinations; the index of the length in each
    job's overrides) from parsed overrides, expanded as Hydra's basic sweeper expands them (a later override of a
    key replaces an earlier one)."""
    final: OrderedDict[str, list[str]] = OrderedDict()
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise CapacityError(f"sweeper=capacity does not support sweep type {override.value_type.name} ({key})")
            final[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            final[key] = [f"{key}={override.get_value_element_as_str()}"]
    keys = list(final)
    length_key = next((k for k in keys if k.lstrip("+~") == LENGTH_KEY), None)
    lengths: list[str] = []
    if length_key is not None:
        values = {}
        for text in final.pop(length_key):
            value = text.split("=", 1)[1]
            try:
                values[int(value)] = text
            except ValueError:
                raise CapacityError(f"{LENGTH_KEY}={value!r} is not allowed: the ladder's lengths are integers") from None
        lengths = [values[v] for v in sorted(values)]
    index = keys.index(length_key) if length_key is not None else None
    units = [list(combo) for combo in itertools.product(*final.values())]
    return lengths, units, index


def _check_settings(patience: Any, max_batch_size: Any) -> None:
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        raise CapacityError(f"hydra.sweeper.patience={patience!r} is not allowed: a positive integer")
    if max_batch_size is not None and (not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool)
                                       or max_batch_size < 1):
        raise CapacityError(f"hydra.sweeper.max_batch_size={max_batch_size!r} is not allowed: a positive integer "
                            "or null")


def check_config(config: Any) -> None:
    """Refuse a capacity sweep that cannot run, before the sweep's parent run is created (the sweep callback)."""
    from omegaconf import OmegaConf

    if OmegaConf.select(config, "hydra.sweeper._target_") != TARGET:
        return
    if OmegaConf.select(config, "tracking.backend") == "none":
        raise CapacityError(NEEDS_STORE)
    _check_settings(OmegaConf.select(config, "hydra.sweeper.patience"),
                    OmegaConf.select(config, "hydra.sweeper.max_batch_size"))


class CapacitySweeper(Sweeper):
    """Climb ``task.dependency_length`` per configuration and seed, in waves; see the module docstring."""

    def __init__(self, patience: int = 1, max_batch_size: int | None = None,
                 params: dict[str, str] | None = None) -> None:
        super().__init__()
        _check_settings(patience, max_batch_size)
        self.patience = patience
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.hydra_context: Any = None
        self.config: Any = None
        self.launcher: Any = None
        self.job_idx = 0
        self.ladders: list[Ladder] = []
        self.manifest: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # --- the plan ------------------------------------------------------------------------------------------

    def _rungs(self, arguments: Sequence[str]) -> list[list[Rung]]:
        """Every unit's rungs, each job composed as it will run (a composition error stops the sweep here)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import open_dict

        from rnnbench.sweep_manifest import job_members

        loader = self.hydra_context.config_loader
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(
            [f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        lengths, units, index = ladder_arguments(parsed)
        out = []
        for combo in units:
            rungs = []
            for length in lengths or [None]:
                job = list(combo) if length is None else [*combo[:index], length, *combo[index:]]
                cfg = loader.load_sweep_config(self.config, job)
                with open_dict(cfg):
                    del cfg["hydra"]
                members = job_members(cfg)
                rungs.append(Rung(int(cfg.task.dependency_length), job, members["run_keys"], members["seeds"],
                                  members["group_key"], members["settings"], float(cfg.trainer.solved_threshold)))
            out.append(rungs)
        return out

    def _write(self, lines: list[dict[str, Any]]) -> None:
        from rnnbench.sweep_manifest import record_lines

        if self.manifest is not None and lines:
            try:
                record_lines(self.manifest, lines)
            except OSError as exc:
                log.warning("could not write the sweep manifest %s: %s", self.manifest, exc)

    def _settle(self, ladder: Ladder) -> None:
        """Record the lengths above a ladder's stop as not run."""
        if not ladder.stopped:
            return
        reason = f"not run: above a failure at T={ladder.stop_length}"
        self._write([{"event": "skip", "run_key": rung.key(ladder.seed), "seed": ladder.seed,
                      "group_key": rung.group_key, "settings": rung.settings, "length": rung.length,
                      "reason": reason} for rung in ladder.not_run])

    def _catch_up(self, ladder: Ladder, store: StoreResults) -> None:
        """Read back the lengths whose runs finished before this sweep (a re-run resumes from the store)."""
        was_stopped = ladder.stopped
        while (rung := ladder.next) is not None:
            result = store.result(rung.key(ladder.seed), rung.threshold)
            if result is None:
                break
            ladder.record(result, launched=False)
        if ladder.stopped and not was_stopped:
            self._settle(ladder)

    # --- the sweep -----------------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> Any:
        from pathlib import Path

        from omegaconf import OmegaConf

        from rnnbench.sweep import active_sweep

        state = active_sweep()
        if state is None:
            raise CapacityError(NEEDS_STORE)
        self.manifest = state.manifest
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        units = self._rungs(arguments)
        self._write([{"event": "plan", "overrides": r.overrides, "run_keys": r.run_keys, "seeds": r.seeds,
                      "group_key": r.group_key, "settings": r.settings,
                      "capacity": {"unit": u, "length": r.length, "rung": i}}
                     for u, rungs in enumerate(units) for i, r in enumerate(rungs)])
        self.ladders = [Ladder(u, seed, rungs, self.patience) for u, rungs in enumerate(units)
                        for seed in rungs[0].seeds]
        lengths = sorted({r.length for rungs in units for r in rungs})
        log.info("capacity sweep: %d ladder(s) (%d configuration(s) x seeds) over lengths %s, patience %d",
                 len(self.ladders), len(units), ", ".join(map(str, lengths)), self.patience)
        store = StoreResults(state.uri, state.experiment_id)
        returns: list[Any] = []
        wave = 0
        while True:
            for ladder in self.ladders:
                self._catch_up(ladder, store)
            jobs = wave_jobs(self.ladders)
            if not jobs:
                break
            wave += 1
            at = sorted({climbing[0].next.length for _, climbing in jobs})  # type: ignore[union-attr]
            log.info("capacity sweep: wave %d: %d job(s) for %d ladder(s) at T=%s", wave, len(jobs),
                     sum(len(c) for _, c in jobs), ",".join(map(str, at)))
            size = self.max_batch_size or len(jobs)
            for start in range(0, len(jobs), size):
                chunk = jobs[start:start + size]
                results = self.launcher.launch([overrides for overrides, _ in chunk], initial_job_idx=self.job_idx)
                self.job_idx += len(chunk)
                returns.append(results)
                for (overrides, climbing), ret in zip(chunk, results):
                    status = getattr(getattr(ret, "status", None), "name", "")
                    if status == "FAILED":
                        log.error("capacity sweep: job %s failed: %s", " ".join(overrides),
                                  getattr(ret, "_return_value", "?"))
                    for ladder in climbing:
                        rung = ladder.next
                        assert rung is not None
                        ladder.record(store.result(rung.key(ladder.seed), rung.threshold) or MISSING, launched=True)
                        self._settle(ladder)
        self._write([ladder.to_json() for ladder in self.ladders])
        launched = sum(sum(ladder.launched) for ladder in self.ladders)
        not_run = sum(len(ladder.not_run) for ladder in self.ladders)
        print(f"rnnbench: capacity sweep: {len(self.ladders)} ladder(s), {launched} run(s) launched in {wave} "
              f"wave(s) ({self.job_idx} job(s)), {not_run} length(s) not run (above a failure)",
              file=sys.stderr, flush=True)
        return returns


def register_plugin() -> None:
    """Make :class:`CapacitySweeper` instantiable by Hydra as ``hydra_plugins.rnnbench_capacity.CapacitySweeper``
    (``conf/sweeper/capacity.yaml``): Hydra only instantiates sweepers found in the ``hydra_plugins`` namespace
    package, which the hydra-joblib-launcher and hydra-submitit-launcher dependencies provide."""
    if PLUGIN_MODULE in sys.modules:
        return
    import hydra_plugins
    from hydra.core.plugins import Plugins

    module = types.ModuleType(PLUGIN_MODULE, "rnnbench's capacity sweeper (rnnbench.capacity), for Hydra.")
    module.CapacitySweeper = CapacitySweeper  # type: ignore[attr-defined]
    sys.modules[PLUGIN_MODULE] = module
    setattr(hydra_plugins, PLUGIN_MODULE.rsplit(".", 1)[1], module)
    Plugins.instance().class_name_to_class[TARGET] = CapacitySweeper
