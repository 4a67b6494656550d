"""The installed ``rnnbench`` command in a subprocess, against real temporary MLflow stores."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

SMOKE = ["trainer=smoke", "model.hidden_size=8", "task.dependency_length=10"]


def runs_of(uri: str, experiment: str = "rnnbench"):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def test_help_lists_every_group(cli):
    proc = cli("--help", check=True)
    for group in ("cell:", "task:", "optim:", "trainer:", "tracking:", "launcher:", "model:"):
        assert group in proc.stdout


def test_run_is_tracked_with_the_public_schema(cli, mlflow_uri, tmp_path):
    proc = cli("task=adding", "cell=gru", "seed=3", *SMOKE, f"tracking.uri={mlflow_uri}", check=True)
    assert "rnnbench: gru on adding" in proc.stdout
    client, runs = runs_of(mlflow_uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["cell.name"] == "gru" and params["task.name"] == "adding"
    assert params["task.dependency_length"] == "10" and params["seed"] == "3"
    for key in ("model.hidden_size", "model.num_layers", "model.bidirectional", "trainer.steps",
                "trainer.batch_size", "trainer.device", "optim.lr", "trainer.grad_clip", "model.num_parameters",
                "task.sequence_length"):
        assert key in params, key
    metrics = run.data.metrics
    for key in ("train/loss", "eval/loss", "eval/accuracy", "baseline/loss", "baseline/accuracy"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["baseline/loss"] == pytest.approx(1 / 6)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 21))
    tags = run.data.tags
    assert tags["rnnbench.cell"] == "gru" and tags["rnnbench.task"] == "adding"
    assert tags["rnnbench.outcome"] in {"solved", "learning", "at_baseline", "diverged"}
    assert tags["rnnbench.cell.plugin"].startswith("rnnbench==")
    assert tags["rnnbench.task.plugin"].startswith("rnnbench==")
    assert tags["rnnbench.flush_denormal"] in {"true", "false"}
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_default_store_is_mlflow_db_in_the_working_directory(cli, tmp_path):
    cli("tracking.experiment=smoke", *SMOKE, check=True)
    assert (tmp_path / "mlflow.db").exists()
    names = [p.name for p in tmp_path.iterdir()]  # the store was created atomically: no lock, copy or probe left
    assert not [n for n in names if n.endswith(".lock") or ".rnnbench-tmp-" in n or ".rnnbench-probe-" in n], names
    _, runs = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "smoke")
    assert len(runs) == 1


def test_mlflow_tracking_uri_environment_is_honoured(cli, mlflow_uri, tmp_path):
    cli(*SMOKE, env={"MLFLOW_TRACKING_URI": mlflow_uri}, check=True)
    assert not (tmp_path / "mlflow.db").exists()
    assert len(runs_of(mlflow_uri)[1]) == 1


def test_relative_store_is_resolved_before_hydra_changes_directory(cli, tmp_path):
    cli(*SMOKE, "tracking.uri=sqlite:///rel.db", "hydra.job.chdir=true", check=True)
    assert (tmp_path / "rel.db").exists()


@pytest.mark.slow
def test_multirun_of_two_jobs(cli, mlflow_uri):
    proc = cli("-m", "cell=rnn_tanh,lstm", *SMOKE, f"tracking.uri={mlflow_uri}", check=True)
    _, runs = runs_of(mlflow_uri)
    (parent,) = [r for r in runs if r.data.tags.get("rnnbench.sweep") == "true"]
    children = [r for r in runs if r is not parent]
    assert sorted(r.data.tags["rnnbench.cell"] for r in children) == ["lstm", "rnn_tanh"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert proc.stdout.count("rnnbench: ") >= 2


@pytest.mark.slow
def test_stacked_bidirectional_runs_for_every_builtin_cell_in_one_sweep(cli, registry):
    builtin = sorted(n for n in registry.cells if registry.provenance("cell", n).startswith("rnnbench=="))
    proc = cli("-m", f"cell={','.join(builtin)}", "model.num_layers=2", "model.bidirectional=true",
               "trainer.steps=2", "trainer.eval_every=2", "trainer.batch_size=4", "model.hidden_size=4",
               "task.dependency_length=6", "tracking=none", check=True)
    assert proc.stdout.count("rnnbench: ") == len(builtin)


BAD_INPUTS = [
    (["cell=lstmm"], ["lstmm", "gru", "lstm"]),
    (["task=addng"], ["addng", "adding", "copy"]),
    (["optim=adagrad"], ["adagrad", "adam", "sgd"]),
    (["task.dependency_length=0"], ["task.dependency_length", "0"]),
    (["task.dependency_length=-5"], ["task.dependency_length", "-5"]),
    (["model.hidden_size=0"], ["model.hidden_size", "0"]),
    (["trainer.steps=0"], ["trainer.steps", "0"]),
    (["trainer.batch_size=0"], ["trainer.batch_size", "0"]),
    (["optim.lr=fast"], ["lr", "fast"]),
    (["trainer.device=cuda:7"], ["trainer.device", "cuda:7"]),
    (["task.variant=nosuch"], ["task.variant", "nosuch"]),
]
if not __import__("torch").cuda.is_available():
    BAD_INPUTS.append((["trainer.device=cuda"], ["trainer.device", "cuda", "auto or cpu"]))


@pytest.mark.parametrize("overrides, expected", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_message_and_writes_nothing(cli, tmp_path, overrides, expected):
    proc = cli(*SMOKE, *overrides)
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err + proc.stdout
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rnnbench: error: "), err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, mlruns/, outputs/, checkpoints/


def test_unreachable_tracking_server_fails_fast_before_training(cli, tmp_path):
    proc = cli(*SMOKE, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert proc.returncode == 2
    assert "cannot reach the MLflow tracking server at http://127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "step" not in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_full_error_shows_traceback_when_asked(cli):
    proc = cli(*SMOKE, "trainer.steps=0", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    assert "trainer.steps=0" in proc.stderr


@pytest.mark.slow
def test_seed_parallel_logs_one_run_per_seed_close_to_separate_runs(cli, mlflow_uri):
    cli("trainer.seeds=3", "seed=4", *SMOKE, f"tracking.uri={mlflow_uri}", check=True)
    client, runs = runs_of(mlflow_uri)
    batched = {r.data.params["seed"]: r for r in runs}
    assert sorted(batched) == ["4", "5", "6"]
    assert {r.data.tags["rnnbench.seed_parallel"] for r in runs} == {"3"}
    assert len({r.data.tags["rnnbench.run_key"] for r in runs}) == 3
    cli("seed=5", *SMOKE, f"tracking.uri={mlflow_uri}", "trainer.resume=false", check=True)
    _, after = runs_of(mlflow_uri)
    (single,) = [r for r in after if "rnnbench.seed_parallel" not in r.data.tags]
    first = lambda run: [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"),  # noqa: E731
                                                 key=lambda m: m.step)][:3]
    assert first(single) == pytest.approx(first(batched["5"]), rel=1e-4)
