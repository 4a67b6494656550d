"""The report's objects: a point (one configuration, its planned seeds), a line (the points of one cell that
differ only in the x axis) and a panel (one task); the success, solved and longest-solved rules live here."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from rnnbench.report_data import RunRecord

STATUS_ORDER = ("FINISHED", "NOT_RUN", "RUNNING", "SCHEDULED", "KILLED", "FAILED", "MISSING")
NOT_RUN = "NOT_RUN"
"""A planned seed that a capacity sweep did not run: its ladder failed at a shorter length (a failure here)."""


def succeeded_value(status: str, diverged: bool, value: float | None, threshold: float) -> bool:
    """The success rule: the run FINISHED, did not diverge and its finite metric reached the threshold."""
    return (status == "FINISHED" and not diverged and value is not None and math.isfinite(value)
            and value >= threshold)


def succeeded(record: RunRecord | None, threshold: float) -> bool:
    """A seed succeeds when its run FINISHED, did not diverge and reached the threshold."""
    return record is not None and succeeded_value(record.status, record.diverged, record.value, threshold)


def fmt_x(x: float | None) -> str:
    return "-" if x is None else str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass
class Point:
    """One configuration on its line: the planned seeds and the run that counts for each (None: no run)."""

    group_key: str
    dependency_length: int
    x: float
    seeds: dict[int, RunRecord | None]
    threshold: float
    not_run: dict[int, str] = field(default_factory=dict)
    """Planned seeds without a run by design (above a failure of their capacity ladder) -> why."""

    def status_of(self, seed: int) -> str:
        record = self.seeds.get(seed)
        if record is not None:
            return record.status
        return NOT_RUN if seed in self.not_run else "MISSING"

    @property
    def planned(self) -> int:
        return len(self.seeds)

    @property
    def records(self) -> list[RunRecord]:
        return [r for _, r in sorted(self.seeds.items()) if r is not None]

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.records if r.status == "FINISHED"]

    @property
    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seed in self.seeds:
            status = self.status_of(seed)
            counts[status] = counts.get(status, 0) + 1
        rank = {s: i for i, s in enumerate(STATUS_ORDER)}
        return dict(sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))

    @property
    def successes(self) -> int:
        return sum(succeeded(r, self.threshold) for r in self.seeds.values())

    @property
    def diverged(self) -> int:
        return sum(r.diverged for r in self.finished)

    @property
    def not_run_count(self) -> int:
        return sum(self.status_of(seed) == NOT_RUN for seed in self.seeds)

    @property
    def complete(self) -> bool:
        """Every planned seed has a finished run, or was not run by design (above a failure)."""
        return all(self.status_of(seed) in ("FINISHED", NOT_RUN) for seed in self.seeds)

    @property
    def solved(self) -> bool:
        """A strict majority of the planned seeds succeeded (a missing or unfinished seed is a failure)."""
        return 2 * self.successes > self.planned

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.finished if r.value is not None]

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def low(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def high(self) -> float | None:
        return max(self.values) if self.values else None

    @property
    def baseline(self) -> float | None:
        values = [r.baseline for r in self.records if r.baseline is not None]
        return statistics.median(values) if values else None

    @property
    def incomplete_text(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in self.statuses.items() if s not in ("FINISHED", NOT_RUN))

    @property
    def success_text(self) -> str:
        text = f"{self.successes}/{self.planned}"
        if self.diverged:
            text += f" ({self.diverged} diverged)"
        if self.not_run_count:
            text += f", {self.not_run_count} not run (above a failure)"
        if not self.complete:
            text += f", incomplete: {self.incomplete_text}"
        return text


@dataclass
class Line:
    """The configurations of one cell that differ only in the x axis."""

    task: str
    cell: str
    settings: dict[str, str]
    points: list[Point]
    distinguishing: dict[str, str] = field(default_factory=dict)
    """The settings that tell this line apart from the other lines of the same cell and task."""

    @property
    def label(self) -> str:
        if not self.distinguishing:
            return self.cell
        return f"{self.cell} ({', '.join(f'{k}={v}' for k, v in self.distinguishing.items())})"

    @property
    def xs(self) -> list[float]:
        return [p.x for p in self.points]

    @property
    def first_failure(self) -> Point | None:
        return next((p for p in self.points if not p.solved), None)

    @property
    def longest_solved(self) -> float | None:
        """The largest x such that every tested x up to it (from the shortest) is solved; None: none."""
        longest = None
        for point in self.points:
            if not point.solved:
                break
            longest = point.x
        return longest

    @property
    def solved_above_failure(self) -> list[float]:
        """Solved x beyond the first failure: shown, never counted in the longest solved."""
        failure = self.first_failure
        return [] if failure is None else [p.x for p in self.points if p.x > failure.x and p.solved]

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.points)

    @property
    def success_rate(self) -> float | None:
        planned = sum(p.planned for p in self.points)
        return round(sum(p.successes for p in self.points) / planned, 3) if planned else None


@dataclass
class Panel:
    """One task: a figure panel and a report section."""

    task: str
    lines: list[Line]
    slug: str = ""

    @property
    def xs(self) -> list[float]:
        return sorted({x for line in self.lines for x in line.xs})

    @property
    def common(self) -> dict[str, str]:
        """Settings shared by every line of the panel (the dependency length aside)."""
        first, *rest = [line.settings for line in self.lines]
        return {k: v for k, v in first.items() if all(other.get(k) == v for other in rest)}

    @property
    def title(self) -> str:
        common = self.common
        parts = [self.task + (f" ({common['task.variant']})" if "task.variant" in common else "")]
        budget = common.get("model.param_budget")
        if budget not in (None, "null", "None", ""):
            parts.append(f"budget <={budget} params")
        elif "model.hidden_size" in common and "model.param_budget" in common:
            parts.append(f"hidden {common['model.hidden_size']}")
        if "trainer.steps" in common:
            parts.append(f"{common['trainer.steps']} steps")
        return ", ".join(parts)
