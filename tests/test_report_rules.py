"""The report's rules on records built in memory (no store, no files): grouping, denominators, longest solved."""

from __future__ import annotations

import pytest

from rnnbench.report import Plan, RunRecord, aggregate, summary_metrics

BASE = {"task.name": "adding", "task.variant": "arjovsky2016", "cell.name": "gru", "model.bidirectional": "False",
        "optim.lr": "0.001"}


def rec(length: int, seed: int, value: float | None, *, status: str = "FINISHED", diverged: bool = False,
        start: int = 0, **settings: str) -> RunRecord:
    merged = dict(BASE, **{k.replace("__", "."): v for k, v in settings.items()})
    merged["task.dependency_length"] = str(length)
    group = "|".join(f"{k}={v}" for k, v in sorted(merged.items()))
    return RunRecord(run_id=f"r-{group}-{seed}-{start}", status=status, task=merged["task.name"],
                     cell=merged["cell.name"], seed=seed, dependency_length=length, group_key=group,
                     settings=merged, x=float(length), value=value, value_source="final/accuracy",
                     diverged=diverged, start_time=start)


def lines_of(records, plan=None):
    panels, notes = aggregate(records, plan)
    return {line.label: line for panel in panels for line in panel.lines}, panels, notes


def test_longest_solved_is_contiguous_from_the_shortest_length():
    records = [rec(t, s, acc) for t, acc in ((10, 1.0), (20, 0.2), (40, 1.0), (80, 1.0)) for s in range(3)]
    (line,) = lines_of(records)[0].values()
    assert line.longest_solved == 10
    assert line.first_failure.x == 20 and line.solved_above_failure == [40, 80]
    failing_first = [rec(t, s, acc) for t, acc in ((10, 0.5), (20, 1.0)) for s in range(3)]
    (line,) = lines_of(failing_first)[0].values()
    assert line.longest_solved is None and line.solved_above_failure == [20]


def test_strict_majority_of_planned_seeds():
    two_of_four = [rec(10, s, acc) for s, acc in enumerate((1.0, 1.0, 0.1, 0.1))]
    (line,) = lines_of(two_of_four)[0].values()
    assert line.points[0].successes == 2 and not line.points[0].solved  # 2 of 4 is no majority
    running = [rec(10, 0, 1.0), rec(10, 1, 1.0), rec(10, 2, None, status="RUNNING")]
    (line,) = lines_of(running)[0].values()
    point = line.points[0]
    assert point.solved and not point.complete and point.statuses == {"FINISHED": 2, "RUNNING": 1}


def test_plan_adds_missing_seeds_and_configurations():
    records = [rec(10, 0, 1.0)]
    group = records[0].group_key
    other = dict(BASE, **{"task.dependency_length": "20"})
    plan = Plan(members={"k0": (group, 0), "k1": (group, 1), "k2": (group, 2), "k3": ("g20", 0)},
                groups={group: records[0].settings, "g20": other})
    (line,) = lines_of(records, plan)[0].values()
    assert [(p.x, p.planned, p.successes, p.statuses) for p in line.points] == [
        (10, 3, 1, {"FINISHED": 1, "MISSING": 2}), (20, 1, 0, {"MISSING": 1})]
    assert line.longest_solved is None
    _, _, notes = lines_of(records, Plan(unplaced=["lost"]))
    assert any("could not be placed" in note for note in notes)


def test_lines_are_labelled_by_the_settings_that_differ():
    records = [rec(10, s, 1.0, model__bidirectional=bi, optim__lr=lr)
               for bi, lr in (("False", "0.001"), ("True", "0.001"), ("True", "0.01")) for s in range(3)]
    records += [rec(10, s, 0.3, cell__name="lstm") for s in range(3)]
    lines, panels, _ = lines_of(records)
    assert set(lines) == {
        "gru (model.bidirectional=False, optim.lr=0.001)", "gru (model.bidirectional=True, optim.lr=0.001)",
        "gru (model.bidirectional=True, optim.lr=0.01)", "lstm"}
    metrics = summary_metrics(panels)
    assert metrics["longest_solved/gru/model.bidirectional:True/optim.lr:0.01"] == 10.0
    assert "longest_solved/lstm" not in metrics and metrics["success_rate/lstm"] == 0.0


def test_duplicates_and_retries_pick_the_newest_finished_run():
    records = [rec(10, 0, 0.1, start=1), rec(10, 0, 1.0, start=2), rec(10, 0, None, status="FAILED", start=3)]
    (line,) = lines_of(records)[0].values()
    assert line.points[0].planned == 1 and line.points[0].values == [1.0] and line.points[0].complete


def test_success_rate_is_rounded():
    records = [rec(10, s, acc) for s, acc in enumerate((1.0, 0.1, 0.1))]
    _, panels, _ = lines_of(records)
    assert summary_metrics(panels) == {"success_rate/gru": 0.333}


@pytest.mark.parametrize("value, diverged, ok", [(0.99, False, True), (0.989, False, False), (1.0, True, False),
                                                 (None, False, False)])
def test_success_needs_finished_threshold_and_no_divergence(value, diverged, ok):
    (line,) = lines_of([rec(10, 0, value, diverged=diverged)])[0].values()
    assert line.points[0].solved is ok
