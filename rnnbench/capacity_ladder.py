"""Capacity ladders (internal): per configuration and seed, the ascending dependency lengths a capacity sweep
climbs until the seed fails (:mod:`rnnbench.capacity`).

A **unit** is one job of the sweep without its length: every swept setting but ``task.dependency_length``,
seeds included (with ``trainer.seeds=K`` one unit holds K member seeds). A **rung** is a unit at one length:
the job in its planned form, with its members' run keys (:mod:`rnnbench.identity`). A **ladder** is one seed
of one unit climbing the unit's rungs: it records a result per rung and stops after ``patience`` consecutive
failures; the rungs above a stop are *not run: above a failure*.

Results are read back from the tracking store by run key (the newest FINISHED run of the key in the sweep's
experiment): a **success** is the report's rule (:func:`rnnbench.report_points.succeeded`): FINISHED, not
diverged, ``final/accuracy`` >= the job's ``trainer.solved_threshold``. A run that finished below it, or
diverged, is a failure; a rung whose job failed or left no finished run is a failure too (``missing``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SUCCESS, FAILURE, MISSING = "success", "failure", "missing"
METRIC = "final/accuracy"


@dataclass
class Rung:
    """One length of a unit: the planned job (all of the unit's members) and its members' identities."""

    length: int
    overrides: list[str]
    run_keys: list[str]
    seeds: list[int]
    group_key: str
    settings: dict[str, str]
    threshold: float

    def key(self, seed: int) -> str:
        return self.run_keys[self.seeds.index(seed)]


@dataclass
class Ladder:
    """One seed of one unit: its results rung by rung, from the shortest length."""

    unit: int
    seed: int
    rungs: list[Rung]
    patience: int = 1
    results: list[str] = field(default_factory=list)
    launched: list[bool] = field(default_factory=list)
    """Per recorded rung: whether this sweep launched it (False: its run had finished before)."""

    @property
    def position(self) -> int:
        return len(self.results)

    @property
    def trailing_failures(self) -> int:
        count = 0
        for result in reversed(self.results):
            if result == SUCCESS:
                break
            count += 1
        return count

    @property
    def stopped(self) -> bool:
        return self.trailing_failures >= self.patience

    @property
    def done(self) -> bool:
        return self.stopped or self.position >= len(self.rungs)

    @property
    def next(self) -> Rung | None:
        return None if self.done else self.rungs[self.position]

    def record(self, result: str, launched: bool) -> None:
        self.results.append(result)
        self.launched.append(launched)

    @property
    def capacity(self) -> int | None:
        """The longest length succeeded contiguously from the first rung; None when the first failed."""
        best = None
        for rung, result in zip(self.rungs, self.results):
            if result != SUCCESS:
                break
            best = rung.length
        return best

    @property
    def not_run(self) -> list[Rung]:
        """The rungs above the stop: never run, by design."""
        return self.rungs[self.position:] if self.stopped else []

    @property
    def stop_length(self) -> int | None:
        return self.rungs[self.position - 1].length if self.stopped else None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "ladder",
            "unit": self.unit,
            "seed": self.seed,
            "group_keys": [r.group_key for r in self.rungs],
            "lengths": [r.length for r in self.rungs],
            "results": self.results,
            "launched": self.launched,
            "capacity": self.capacity,
            "stopped_at": self.stop_length,
            "not_run": [r.length for r in self.not_run],
        }


def blocks(seeds: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted seeds as maximal runs of consecutive seeds: ``[0, 1, 3]`` -> ``[(0, 2), (3, 1)]`` (first, count)."""
    out: list[tuple[int, int]] = []
    for seed in sorted(set(seeds)):
        if out and out[-1][0] + out[-1][1] == seed:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((seed, 1))
    return out


def override_key(override: str) -> str:
    """The key of a ``key=value`` override, without its ``+``/``++``/``~`` prefix."""
    return override.split("=", 1)[0].lstrip("+~")


def with_override(overrides: Sequence[str], key: str, value: Any) -> list[str]:
    """``overrides`` with ``key=value`` replacing the override of ``key`` (in place), or appended."""
    out, found = [], False
    for override in overrides:
        if override_key(override) == key:
            prefix = override[: len(override) - len(override.lstrip("+~"))]
            out.append(f"{prefix if prefix != '~' else ''}{key}={value}")
            found = True
        else:
            out.append(override)
    return out if found else [*out, f"{key}={value}"]


def job_overrides(rung: Rung, first: int, count: int) -> list[str]:
    """The job that trains seeds ``first .. first + count - 1`` of ``rung``: its planned form when that is all of
    its members, else with ``seed`` and ``trainer.seeds`` set for the block."""
    if [first + k for k in range(count)] == rung.seeds:
        return list(rung.overrides)
    return with_override(with_override(rung.overrides, "seed", first), "trainer.seeds", count)


def wave_jobs(ladders: Sequence[Ladder]) -> list[tuple[list[str], list[Ladder]]]:
    """The jobs that advance every ladder that still climbs by one rung: ladders of one unit at the same rung
    share jobs, one per block of consecutive seeds (one job of K members while all K climb)."""
    by_rung: dict[tuple[int, int], list[Ladder]] = {}
    for ladder in ladders:
        if ladder.next is not None:
            by_rung.setdefault((ladder.unit, ladder.position), []).append(ladder)
    jobs = []
    for (_, position), group in sorted(by_rung.items()):
        rung = group[0].rungs[position]
        by_seed = {ladder.seed: ladder for ladder in group}
        for first, count in blocks(by_seed):
            jobs.append((job_overrides(rung, first, count), [by_seed[first + k] for k in range(count)]))
    return jobs


def run_result(run: Any, threshold: float, metric: str = METRIC) -> str:
    """SUCCESS or FAILURE of a FINISHED MLflow run, by the report's rule."""
    from rnnbench.report_data import metric_value
    from rnnbench.report_points import succeeded_value

    value, _ = metric_value(run.data.metrics, metric)
    diverged = run.data.tags.get("rnnbench.outcome") == "diverged"
    return SUCCESS if succeeded_value(run.info.status, diverged, value, threshold) else FAILURE


class StoreResults:
    """Results of run keys, read from the newest FINISHED run of each key in one experiment."""

    def __init__(self, uri: str, experiment_id: str) -> None:
        from rnnbench import store

        self.client = store.client(uri)
        self.experiment_id = experiment_id

    def finished(self, key: str) -> Any | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`rnnbench.run_key` = '{key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def result(self, key: str, threshold: float) -> str | None:
        """SUCCESS or FAILURE of the key's finished run; None when it has none."""
        run = self.finished(key)
        return None if run is None else run_result(run, threshold)
