"""Exploding gradients: clipping bounds the applied update; a forced explosion ends as ``diverged``, cleanly."""

from __future__ import annotations

import math

import pytest
import torch

from rnnbench.config import constructor_kwargs
from rnnbench.model import build_model
from rnnbench.tracking import NullTracker
from conftest import train_one

NORMAL_OUTCOMES = {"solved", "learning", "at_baseline"}


def one_sgd_step(compose, registry, *overrides: str) -> tuple[torch.Tensor, float, NullTracker]:
    """The parameter change of one plain SGD step (lr 1, no momentum) on a tanh RNN, the float32 rounding
    bound of one element of that change (``p + d - p`` is not exactly ``d``), and the tracker."""
    cfg = compose("trainer=smoke", "tracking=none", "diagnostics=off", "cell=rnn_tanh", "optim=sgd", "optim.lr=1.0",
                  "optim.momentum=0.0", "trainer.steps=1", "task.dependency_length=10", "model.hidden_size=8",
                  *overrides)
    task = registry.task(cfg.task.name).task(**constructor_kwargs(cfg.task))
    torch.manual_seed(0)
    model = build_model(registry.cell(cfg.cell.name), constructor_kwargs(cfg.cell), task, cfg.model.hidden_size)
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    tracker = NullTracker()
    result = train_one(cfg, model, task, tracker)
    assert result.outcome != "diverged"
    rounding = 2 * torch.finfo(torch.float32).eps * float(before.abs().max() + 1)
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach() - before, rounding, tracker


def test_norm_clipping_bounds_the_update(compose, registry):
    clip = 0.01
    delta, rounding, tracker = one_sgd_step(compose, registry, f"trainer.grad_clip={clip}", "trainer.clip_mode=norm")
    (_, grad_norm), = tracker.metrics["train/grad_norm"]
    assert grad_norm > 10 * clip  # the raw gradient was clipped
    assert float(delta.norm()) <= clip * 1.0 + rounding * delta.numel() ** 0.5
    assert float(delta.norm()) == pytest.approx(clip, rel=1e-3)
    assert tracker.metrics["train/clip_fraction"][-1][1] == 1.0


def test_value_clipping_bounds_each_element(compose, registry):
    clip = 1e-3
    delta, rounding, _ = one_sgd_step(compose, registry, f"trainer.grad_clip={clip}", "trainer.clip_mode=value")
    assert float(delta.abs().max()) <= clip * 1.0 + rounding
    assert float(delta.abs().max()) == pytest.approx(clip, abs=rounding)  # some element was clipped


def test_unclipped_update_is_the_raw_gradient(compose, registry):
    delta, _, tracker = one_sgd_step(compose, registry, "trainer.grad_clip=null")
    (_, grad_norm), = tracker.metrics["train/grad_norm"]
    assert float(delta.norm()) == pytest.approx(grad_norm, rel=1e-5)


@pytest.mark.slow
def test_forced_explosion_ends_as_diverged_inside_a_multirun(cli, mlflow_uri):
    from mlflow.tracking import MlflowClient

    proc = cli("-m", "cell=rnn_tanh", "optim=sgd", "optim.lr=1e-2,1e4", "trainer.grad_clip=null", "trainer=smoke",
               "task.dependency_length=10", "model.hidden_size=8", "diagnostics.every=2", "trainer.progress=none",
               f"tracking.uri={mlflow_uri}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("rnnbench").experiment_id])
    by_lr = {r.data.params["optim.lr"]: r for r in runs if "rnnbench.cell" in r.data.tags}  # not the sweep parent
    assert set(by_lr) == {"0.01", "10000.0"}

    exploded, normal = by_lr["10000.0"], by_lr["0.01"]
    assert exploded.info.status == "FINISHED"
    assert exploded.data.tags["rnnbench.outcome"] == "diverged"
    diverged_step = int(exploded.data.tags["rnnbench.diverged_step"])
    assert 1 <= diverged_step <= 20
    assert normal.info.status == "FINISHED"
    assert normal.data.tags["rnnbench.outcome"] in NORMAL_OUTCOMES
    assert "rnnbench.diverged_step" not in normal.data.tags

    for run in (exploded, normal):
        for key in run.data.metrics:
            values = [m.value for m in client.get_metric_history(run.info.run_id, key)]
            assert all(math.isfinite(v) for v in values), (key, values)
    losses = client.get_metric_history(exploded.info.run_id, "train/loss")
    assert max(m.step for m in losses) < diverged_step
    assert "diag/grad_norm_last" in normal.data.metrics
