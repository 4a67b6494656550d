"""Capacity sweeps (``sweeper=capacity``): ladders climbed per configuration and seed until a failure, state read
back from the store, resume, seed-parallel jobs, launchers; and the capacity table of the report."""

from __future__ import annotations

import csv
import json
import statistics
import tempfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rnnbench import identity

BASE = ("task=adding", "trainer=smoke", "diagnostics=off")

# A tiny adding problem that a small GRU learns at T=4 in 100 steps and not at T=8 (measured on CPU: final accuracy
# 1.0 / 0.998 at T=4, 0.91 / 0.70 at T=8, about 0.59 at T=16, seeds 0 / 1), while rnn_tanh stays near 0.6 at T=4.
TINY = ["task=adding", "task.tolerance=0.15", "trainer=smoke", "trainer.steps=100", "trainer.early_stop=false",
        "trainer.final_eval_sequences=1000", "model.hidden_size=8", "optim.lr=0.02", "diagnostics=off",
        "trainer.progress=none", "trainer.threads=1"]


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# --- the ladder, without training -----------------------------------------------------------------------------


def test_ladder_arguments_sort_the_lengths_and_keep_the_other_sweeps():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from rnnbench.capacity import CapacityError, ladder_arguments

    parsed = OverridesParser.create().parse_overrides(
        ["cell=gru,lstm", "task.dependency_length=50,25,100", "seed=0,1", "task.dependency_length=200,100"])
    lengths, units, index = ladder_arguments(parsed)
    assert lengths == ["task.dependency_length=100", "task.dependency_length=200"]  # the later override wins
    assert index == 1 and len(units) == 4
    assert units[0] == ["cell=gru", "seed=0"] and units[-1] == ["cell=lstm", "seed=1"]
    with pytest.raises(CapacityError, match="integers"):
        ladder_arguments(OverridesParser.create().parse_overrides(["task.dependency_length=1.5,3"]))


def test_ladder_stops_after_patience_failures_and_lists_what_is_not_run():
    from rnnbench.capacity_ladder import FAILURE, MISSING, SUCCESS, Ladder, Rung

    rungs = [Rung(t, [f"task.dependency_length={t}"], [f"k{t}"], [0], f"g{t}", {}, 0.99) for t in (25, 50, 100, 200)]
    ladder = Ladder(0, 0, rungs)
    ladder.record(SUCCESS, launched=True)
    assert ladder.next is rungs[1] and not ladder.stopped
    ladder.record(FAILURE, launched=True)
    assert ladder.stopped and ladder.done and ladder.next is None
    assert ladder.capacity == 25 and ladder.stop_length == 50 and ladder.not_run == rungs[2:]
    patient = Ladder(0, 0, rungs, patience=2)
    for result in (FAILURE, SUCCESS, MISSING):
        patient.record(result, launched=True)
    assert not patient.stopped and patient.next is rungs[3] and patient.capacity is None  # the first failed
    patient.record(FAILURE, launched=False)
    assert patient.stopped and patient.not_run == [] and patient.to_json()["results"][-1] == FAILURE


def test_wave_jobs_keep_climbing_seeds_together_and_split_the_rest():
    from rnnbench.capacity_ladder import FAILURE, SUCCESS, Ladder, Rung, blocks, wave_jobs, with_override

    assert blocks([3, 0, 1, 5, 6]) == [(0, 2), (3, 1), (5, 2)]
    assert with_override(["seed=0", "cell=gru"], "seed", 2) == ["seed=2", "cell=gru"]
    assert with_override(["+trainer.seeds=3"], "trainer.seeds", 1) == ["+trainer.seeds=1"]
    rungs = [Rung(t, ["cell=gru", f"task.dependency_length={t}", "trainer.seeds=3"], [f"k{t}s{s}" for s in range(3)],
                  [0, 1, 2], f"g{t}", {}, 0.99) for t in (4, 8, 16)]
    ladders = [Ladder(0, s, rungs) for s in range(3)]
    (job,) = wave_jobs(ladders)
    assert job[0] == rungs[0].overrides and [ld.seed for ld in job[1]] == [0, 1, 2]  # all climb: the planned job
    for ladder, result in zip(ladders, (SUCCESS, FAILURE, SUCCESS)):
        ladder.record(result, launched=True)
    jobs = wave_jobs(ladders)
    assert [o for o, _ in jobs] == [["cell=gru", "task.dependency_length=8", "trainer.seeds=1", "seed=0"],
                                    ["cell=gru", "task.dependency_length=8", "trainer.seeds=1", "seed=2"]]


def test_a_split_job_trains_the_planned_runs(compose):
    """``seed=s trainer.seeds=1`` has the run key of member s of the planned ``trainer.seeds=K`` job."""
    from rnnbench.sweep_manifest import job_members

    planned = job_members(compose(*BASE, "cell=gru", "trainer.seeds=3"))
    split = job_members(compose(*BASE, "cell=gru", "trainer.seeds=1", "seed=2"))
    assert planned["seeds"] == [0, 1, 2] and split["run_keys"] == planned["run_keys"][2:]
    assert split["group_key"] == planned["group_key"]


def _with_hydra(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="rnnbench.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_capacity_preset_composes(compose):
    cfg = _with_hydra("experiment=capacity_classic")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.rnnbench_capacity.CapacitySweeper" and sweeper.patience == 1
    assert sweeper.params["task.dependency_length"] == "25,50,100,200,400,800,1600"
    assert sweeper.params["cell"] == "rnn_tanh,irnn,lstm,lstm1997,peephole_lstm,gru"
    assert cfg.model.param_budget == 10000 and cfg.trainer.seeds == 3
    assert cfg.tracking.experiment == "capacity_classic"
    assert compose("experiment=capacity_all").tracking.experiment == "capacity_all"
    assert _with_hydra().hydra.sweeper._target_.endswith("BasicSweeper")
    assert _with_hydra("sweeper=capacity", "hydra.sweeper.patience=2").hydra.sweeper.patience == 2


def test_a_capacity_sweep_that_cannot_run_is_refused_before_it_starts(compose):
    from rnnbench.capacity import CapacityError, check_config

    with pytest.raises(CapacityError, match=r"hydra.sweeper.patience=0 is not allowed: a positive integer"):
        check_config(_with_hydra("sweeper=capacity", "hydra.sweeper.patience=0"))
    with pytest.raises(CapacityError, match="needs tracking=mlflow"):
        check_config(_with_hydra("sweeper=capacity", "tracking=none"))
    check_config(_with_hydra("tracking=none"))  # the basic sweeper: nothing to check


# --- the capacity table from runs in a store -----------------------------------------------------------------


def log_run(client, experiment_id: str, resolved: dict, accuracy: float, seconds: float = 10.0) -> str:
    """A finished run as the runner logs it (params, run/group key tags, final accuracy, timing)."""
    from mlflow.entities import Metric, Param, RunTag

    params = identity.flatten(resolved)
    params.update({"model.num_parameters": "297", "task.sequence_length": str(resolved["task"]["dependency_length"])})
    tags = {"rnnbench.run_key": identity.run_key(resolved), "rnnbench.group_key": identity.group_key(resolved),
            "rnnbench.cell": resolved["cell"]["name"], "rnnbench.task": resolved["task"]["name"],
            "rnnbench.threads": "1"}
    run = client.create_run(experiment_id, start_time=1_000_000, tags=tags)
    rid = run.info.run_id
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(rid, params=items[i:i + 100])
    steps = resolved["trainer"]["steps"]
    client.log_batch(rid, metrics=[Metric("final/accuracy", accuracy, 0, steps),
                                   Metric("time/steps_per_second", steps / (seconds - 1.0), 0, steps)],
                     tags=[RunTag("rnnbench.outcome", "solved" if accuracy >= 0.99 else "learning")])
    client.set_terminated(rid, "FINISHED", end_time=1_000_000 + int(seconds * 1000))
    return rid


def test_best_learning_rate_robustness_and_not_run_lengths(mlflow_uri, tmp_path, compose):
    """Two learning rates x three seeds on T = 25, 50, 100: capacities per seed, the best learning rate (a tie in
    the median broken by the higher minimum), robustness, and lengths a capacity sweep did not run."""
    from rnnbench.report import main
    from rnnbench.sweep_manifest import job_members

    client = _client(mlflow_uri)
    exp = client.create_experiment("cap")
    # lr -> seed -> accuracies at T=25, 50, 100 (None: not run, above a failure)
    plan = {0.001: {0: (1.0, 1.0, 0.5), 1: (1.0, 0.5, None), 2: (0.4, None, None)},   # 50, 25, none: median 25
            0.003: {0: (1.0, 0.3, None), 1: (1.0, 0.6, None), 2: (1.0, 1.0, 1.0)}}   # 25, 25, 100: median 25
    lines = []
    for lr, seeds in plan.items():
        for t_index, t in enumerate((25, 50, 100)):
            overrides = (*BASE, "cell=gru", f"optim.lr={lr}", f"task.dependency_length={t}")
            for seed, accuracies in seeds.items():
                members = job_members(compose(*overrides, f"seed={seed}"))
                lines.append({"event": "plan", "overrides": [*overrides[3:], f"seed={seed}"], **members})
                resolved = OmegaConf.to_container(compose(*overrides, f"seed={seed}"), resolve=True)
                if accuracies[t_index] is None:
                    lines.append({"event": "skip", "run_key": members["run_keys"][0], "seed": seed,
                                  "group_key": members["group_key"], "settings": members["settings"],
                                  "reason": "not run: above a failure"})
                else:
                    log_run(client, exp, resolved, accuracies[t_index], seconds=2.0 + t / 25)
    parent = client.create_run(exp, tags={"rnnbench.sweep": "true"}).info.run_id
    listing = tmp_path / "runs.json"
    listing.write_text(json.dumps({"jobs": lines}))
    client.log_artifact(parent, str(listing), "sweep")
    client.set_terminated(parent, "FINISHED")

    out = tmp_path / "rep"
    assert main(["--tracking-uri", mlflow_uri, "--experiment", "cap", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (row,) = summary["capacity"]["rows"]
    by_lr = {o["lr"]: o for o in row["by_lr"]}
    assert by_lr[0.001]["seeds"] == {"0": 50, "1": 25, "2": None} and by_lr[0.001]["median"] == 25
    assert by_lr[0.003]["seeds"] == {"0": 25, "1": 25, "2": 100} and by_lr[0.003]["median"] == 25
    assert row["best_lr"] == 0.003 and row["capacity"]["min"] == 25  # equal medians: the higher minimum wins
    assert row["robustness"] == {"25": 1.0, "50": 0.0, "100": 0.0}
    assert row["num_parameters"] == "297" and row["complete"] is True
    (line,) = [ln for ln in summary["lines"] if ln["settings"]["optim.lr"] == "0.001"]
    assert line["points"]["100"]["statuses"] == {"FINISHED": 1, "NOT_RUN": 2}
    assert line["points"]["100"]["complete"] is True
    assert line["points"]["100"]["seeds"]["2"]["status"] == "NOT_RUN"
    assert not any("no finished run" in note for note in summary["notes"])
    saved = summary["capacity"]["ladder"]
    assert saved["runs"] == {"run": 13, "not_run": 5, "grid": 18, "saved_fraction": round(5 / 18, 4)}
    assert saved["cpu_seconds"]["not_run_estimated"] > 0 and saved["not_estimated"] == 0
    text = (out / "capacity.md").read_text()
    assert "| gru | **25 [25-100]** at lr 0.003, 297 params |" in text
    rows = list(csv.DictReader((out / "capacity.csv").open()))
    assert rows[0]["best_lr"] == "0.003" and rows[0]["capacity_median"] == "25"
    assert (out / "capacity.png").stat().st_size > 0
    assert "not run (above a failure)" not in (out / "report.md").read_text()  # seeds of one point partly ran
    assert "1 not run" in (out / "report.md").read_text()


# --- capacity sweeps end to end ---------------------------------------------------------------------------------


def _store_runs(uri: str, experiment: str) -> list:
    from rnnbench.store import search_all

    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    return search_all(client, [exp.experiment_id])


def _listing(uri: str, parent_id: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(_client(uri).download_artifacts(parent_id, "sweep/runs.json", tmp)).read_text())


def _check_ladders(uri: str, experiment: str, threshold: float) -> tuple[list, dict]:
    """From the store: every ladder ran exactly the lengths up to and including its first failure, every other
    planned length is recorded as not run, and every run is a planned one. Returns (children, parent listing)."""
    runs = _store_runs(uri, experiment)
    (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if "rnnbench.run_key" in r.data.tags]
    assert all(r.info.status == "FINISHED" for r in children)
    listing = _listing(uri, parent.info.run_id)
    plan = [line for line in listing["jobs"] if line.get("event") == "plan"]
    planned = {key: (line["group_key"], seed, line["capacity"]["unit"], line["capacity"]["length"])
               for line in plan for key, seed in zip(line["run_keys"], line["seeds"])}
    skipped = {line["run_key"] for line in listing["jobs"] if line.get("event") == "skip"}
    ran = {r.data.tags["rnnbench.run_key"]: r for r in children}
    assert set(ran) <= set(planned)  # a split seed-parallel job trains the planned runs
    ladders: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for key, (_, seed, unit, length) in planned.items():
        ladders.setdefault((unit, seed), []).append((length, key))
    ladder_lines = [line for line in listing["jobs"] if line.get("event") == "ladder"]
    assert {(line["unit"], line["seed"]) for line in ladder_lines} == set(ladders)  # every (config, seed) climbed
    for rungs in ladders.values():
        rungs.sort()
        ok = [ran[key].data.metrics["final/accuracy"] >= threshold
              and ran[key].data.tags["rnnbench.outcome"] != "diverged" if key in ran else None for _, key in rungs]
        first_failure = next((i for i, v in enumerate(ok) if v is not True), len(ok))
        assert all(v is not None for v in ok[: first_failure + 1]), ok  # climbed up to the first failure...
        assert all(v is None for v in ok[first_failure + 1:]), ok       # ...and never above it
        assert {key for _, key in rungs[first_failure + 1:]} <= skipped
    return children, listing


@pytest.mark.slow
def test_capacity_sweep_climbs_per_seed_stops_at_a_failure_and_resumes(tmp_path, cli):
    """gru and rnn_tanh, two seeds as one seed-parallel job, T = 4, 8, 16 at threshold 0.9 (measured: gru's seeds
    reach 0.86 and 0.98 at T=8, rnn_tanh fails at T=4): the seeds climb
    together, split when one fails at T=8, nothing runs above a failure, and the same command again launches
    nothing."""
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "sweeper=capacity", "cell=gru,rnn_tanh", "task.dependency_length=4,8,16", "trainer.seeds=2",
            *TINY, "trainer.solved_threshold=0.9", f"tracking.uri={db}", "tracking.experiment=cap",
            f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    children, listing = _check_ladders(db, "cap", 0.9)
    ladders = [line for line in listing["jobs"] if line.get("event") == "ladder"]
    assert any(line["stopped_at"] == line["lengths"][1] for line in ladders)  # a ladder failed at its second length
    by_t = {}
    for run in children:
        by_t.setdefault(int(run.data.params["task.dependency_length"]), []).append(run)
    assert len(by_t[4]) == 4 and all("rnnbench.seed_parallel" in r.data.tags for r in by_t[4])
    assert 16 not in by_t or len(by_t[16]) < len(by_t[8])

    again = cli(*args[:-1], f"hydra.sweep.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert ", 0 run(s) launched in 0 wave(s)" in again.stderr
    assert len([r for r in _store_runs(db, "cap") if "rnnbench.run_key" in r.data.tags]) == len(children)
    parents = [r for r in _store_runs(db, "cap") if r.data.tags.get("rnnbench.sweep") == "true"]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    second = next(p for p in parents if p.data.tags["rnnbench.sweep.dir"].endswith("again"))
    assert int(second.data.tags["rnnbench.sweep.reused_runs"]) == len(children)
    assert int(second.data.tags["rnnbench.sweep.not_run"]) == 12 - len(children)


@pytest.mark.slow
def test_capacity_sweep_best_learning_rate_with_joblib(tmp_path, cli):
    """Two learning rates, two seeds, launcher=joblib: summary.json's capacity per learning rate, best learning rate
    and robustness match the runs in the store; the parent run gets the capacity table and figure."""
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = cli("-m", "sweeper=capacity", "launcher=joblib", "hydra.launcher.n_jobs=2", "cell=gru",
               "task.dependency_length=4,8", "seed=0,1", *TINY, "optim.lr=0.02,0.005", "trainer.solved_threshold=0.8",
               f"tracking.uri={db}", "tracking.experiment=lr", f"hydra.sweep.dir={tmp_path / 'multirun'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    children, _ = _check_ladders(db, "lr", 0.8)
    parent = next(r for r in _store_runs(db, "lr") if r.data.tags.get("rnnbench.sweep") == "true")
    assert parent.data.tags["rnnbench.sweep.launcher"] == "JoblibLauncher"
    client = _client(db)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/capacity.md", "report/capacity.csv", "report/capacity.png", "report/summary.json"} <= arts
    with tempfile.TemporaryDirectory() as tmp:
        summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "report/summary.json", tmp)).read_text())

    capacity: dict[float, dict[int, int | None]] = {}  # from the store: lr -> seed -> contiguous capacity
    for lr in (0.02, 0.005):
        for seed in (0, 1):
            best = None
            for t in (4, 8):
                run = next((r for r in children if float(r.data.params["optim.lr"]) == lr
                            and int(r.data.params["seed"]) == seed and int(r.data.params["task.dependency_length"]) == t),
                           None)
                if run is None or run.data.metrics["final/accuracy"] < 0.8:
                    break
                best = t
            capacity.setdefault(lr, {})[seed] = best
    median = {lr: statistics.median_low([c or 0 for c in caps.values()]) or None for lr, caps in capacity.items()}
    lowest = {lr: min(c or 0 for c in caps.values()) for lr, caps in capacity.items()}
    best_lr = max(capacity, key=lambda lr: (median[lr] or 0, lowest[lr], -lr))
    (row,) = summary["capacity"]["rows"]
    assert {o["lr"]: o["seeds"] for o in row["by_lr"]} == {lr: {str(s): c for s, c in caps.items()}
                                                           for lr, caps in capacity.items()}
    assert row["best_lr"] == best_lr and row["capacity"]["median"] == median[best_lr]
    assert row["robustness"] == {str(t): sum((median[lr] or 0) >= t for lr in capacity) / 2 for t in (4, 8)}


@pytest.mark.slow
def test_capacity_sweep_with_the_submitit_launcher(tmp_path, cli):
    """The submitit launcher (its local mode: what launcher=slurm uses, without a cluster) runs the waves."""
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = cli("-m", "sweeper=capacity", "hydra/launcher=submitit_local", "cell=gru", "task.dependency_length=4,8,16",
               *TINY, "trainer.solved_threshold=0.95", f"tracking.uri={db}", "tracking.experiment=slurm",
               f"hydra.sweep.dir={tmp_path / 'multirun'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    children, listing = _check_ladders(db, "slurm", 0.95)
    parent = next(r for r in _store_runs(db, "slurm") if r.data.tags.get("rnnbench.sweep") == "true")
    assert parent.data.tags["rnnbench.sweep.launcher"] == "LocalLauncher"
    (ladder,) = [line for line in listing["jobs"] if line.get("event") == "ladder"]
    assert ladder["lengths"] == [4, 8, 16] and len(children) == len(ladder["results"]) >= 1


def test_the_readme_shows_the_committed_capacity_table():
    """The README's results table is the one `rnnbench report` wrote into docs/capacity/ (no hand edits)."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme.split("## Results: memory capacity", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:  # the first table of the section
        if not line.startswith("|"):
            break
        table.append(line)
    written = set((root / "docs" / "capacity" / "capacity.md").read_text().splitlines())
    assert len(table) >= 3 and all(line in written for line in table), [t for t in table if t not in written]
    summary = json.loads((root / "docs" / "capacity" / "summary.json").read_text())
    assert {row["cell"] for row in summary["capacity"]["rows"]} == {line.split("|")[1].strip()
                                                                   for line in table[2:]}


def test_robustness_is_unknown_where_an_incomplete_learning_rate_has_not_been_run_that_far():
    from types import SimpleNamespace

    from rnnbench.report_capacity import Option, Row

    line = SimpleNamespace(points=[SimpleNamespace(dependency_length=t) for t in (25, 50, 100, 200)])
    done = Option(line, 1e-3, {0: 50, 1: 50, 2: 25}, complete=True)     # failed at 100: known everywhere
    climbing = Option(line, 3e-3, {0: 100, 1: 100, 2: 50}, complete=False)  # T=200 not run yet
    row = Row(panel=None, cell="gru", label="gru", options=[done, climbing])
    assert row.robustness == {25: 1.0, 50: 1.0, 100: 0.5, 200: None}  # 3e-3 reached 100, is not yet past it
    row = Row(panel=None, cell="gru", label="gru", options=[done, Option(line, 3e-3, climbing.capacities, True)])
    assert row.robustness == {25: 1.0, 50: 1.0, 100: 0.5, 200: 0.0}
