"""The seeds a sweep planned, read from its manifest (``rnnbench/sweep.py``): the report's denominator.

A sweep's manifest has one JSON line per job. ``"event": "plan"`` lines are written when the sweep starts, one
per job the sweeper will launch; lines without an event (or ``"event": "end"``) are written when a job ends,
from the job's own config. Each carries the job's ``run_keys``, ``seeds`` (one per member run), its
``group_key`` (``rnnbench.identity.group_key``) and ``settings`` (``identity.group_settings`` of the job's
flattened config). A job's end line wins over its plan line (matched by overrides). A capacity sweep
(``rnnbench/capacity.py``) adds ``"event": "skip"`` lines: a planned run it did not launch because its seed
failed at a shorter length (``"reason": "not run: above a failure at T=..."``); the report shows those as not
run, never as missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Plan:
    """Planned runs: run key -> (group key, seed); the settings of each planned group."""

    members: dict[str, tuple[str, int]] = field(default_factory=dict)
    groups: dict[str, dict[str, str]] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    """Planned run keys whose group is unknown (a manifest written before groups were recorded)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Planned run keys not run by design (a capacity ladder stopped below them) -> the reason."""

    def __bool__(self) -> bool:
        return bool(self.members or self.unplaced)

    def seeds(self) -> dict[str, set[int]]:
        """Group key -> planned seeds."""
        out: dict[str, set[int]] = {}
        for group, seed in self.members.values():
            out.setdefault(group, set()).add(seed)
        return out

    def not_run(self) -> dict[tuple[str, int], str]:
        """(group key, seed) -> reason, for the planned runs not run by design."""
        return {self.members[k]: why for k, why in self.skipped.items() if k in self.members}

    def merge(self, other: Plan) -> Plan:
        members = dict(self.members, **other.members)
        groups = dict(other.groups, **self.groups)
        unplaced = [k for k in dict.fromkeys([*self.unplaced, *other.unplaced]) if k not in members]
        return Plan(members, groups, unplaced, dict(other.skipped, **self.skipped))

    def to_json(self) -> dict[str, Any]:
        return {
            "members": [{"run_key": k, "group_key": g, "seed": s} for k, (g, s) in self.members.items()],
            "groups": self.groups,
            "unplaced_run_keys": self.unplaced,
            "not_run": self.skipped,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        members = {m["run_key"]: (str(m["group_key"]), int(m["seed"])) for m in data.get("members", [])}
        groups = {str(k): _settings(v) for k, v in (data.get("groups") or {}).items()}
        skipped = {str(k): str(v) for k, v in (data.get("not_run") or {}).items()}
        return cls(members, groups, [str(k) for k in data.get("unplaced_run_keys", [])], skipped)


def _settings(recorded: dict[str, Any]) -> dict[str, str]:
    """A planned group's settings as the report compares them: ``identity.group_settings`` of what the plan
    recorded, so a plan written by an older rnnbench describes its configurations as their runs do."""
    from rnnbench.identity import group_settings

    return group_settings({str(k): str(v) for k, v in recorded.items()})


def ended_jobs(lines: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The manifest lines written when a job ended."""
    return [line for line in lines if line.get("event", "end") == "end"]


def planned_jobs(lines: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Every job of the sweep: the ended ones, and the planned ones that have not ended (yet, or ever)."""
    lines = list(lines)
    ended = ended_jobs(lines)
    seen = {tuple(job.get("overrides") or []) for job in ended}
    pending = [j for j in lines if j.get("event") == "plan" and tuple(j.get("overrides") or []) not in seen]
    return ended + pending


def plan_from_jobs(lines: Iterable[Mapping[str, Any]]) -> Plan:
    """The plan of a sweep from its manifest lines (or the ``jobs`` of its ``sweep/runs.json``)."""
    lines = list(lines)
    plan = Plan()
    unplaced: list[str] = []
    for job in planned_jobs(lines):
        keys = [str(k) for k in job.get("run_keys") or []]
        group, seeds = job.get("group_key"), job.get("seeds") or []
        if not group or len(seeds) != len(keys):
            unplaced.extend(keys)
            continue
        for key, seed in zip(keys, seeds):
            plan.members[key] = (str(group), int(seed))
        if job.get("settings"):
            plan.groups.setdefault(str(group), _settings(job["settings"]))
    for line in lines:
        if line.get("event") != "skip" or not line.get("run_key"):
            continue
        key = str(line["run_key"])
        if line.get("group_key") and line.get("seed") is not None:
            plan.members.setdefault(key, (str(line["group_key"]), int(line["seed"])))
            if line.get("settings"):
                plan.groups.setdefault(str(line["group_key"]), _settings(line["settings"]))
        plan.skipped[key] = str(line.get("reason") or "not run")
    plan.unplaced = [k for k in dict.fromkeys(unplaced) if k not in plan.members]
    return plan
