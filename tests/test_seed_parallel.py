"""Seed-parallel training equals separate runs: same initial weights, data, clipping, optimiser and outcome per
seed; one member's huge gradients or divergence leave the others untouched."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from rnnbench.config import constructor_kwargs
from rnnbench.batched import KernelModel
from rnnbench.model import build_model, loop_named_parameters
from rnnbench.population import SinglePopulation, StackedPopulation
from rnnbench.tracking import NullTracker
from rnnbench.train import Member, RunResult, train

SEEDS = [3, 4, 5]
TINY = ("trainer=smoke", "tracking=none", "diagnostics=off", "model.hidden_size=8", "task.dependency_length=10",
        "trainer.steps=5", "trainer.eval_every=5", "trainer.log_every=1", "trainer.progress=none",
        "trainer.device=cpu", "trainer.final_eval_sequences=128")
CPU = torch.device("cpu")


def setup(compose, registry, *overrides: str) -> tuple[Any, Any, dict[str, Any], Any, dict[str, Any]]:
    cfg = compose(*TINY, *overrides)
    spec = registry.cell(cfg.cell.name)
    task = registry.task(cfg.task.name).task(**constructor_kwargs(cfg.task))
    model_kwargs = dict(num_layers=cfg.model.num_layers, bidirectional=cfg.model.bidirectional,
                        dropout=cfg.model.dropout)
    return cfg, spec, constructor_kwargs(cfg.cell), task, model_kwargs


def build_seed_models(spec, cell_kwargs, task, seeds, hidden, fused=True, **model_kwargs) -> list[torch.nn.Module]:
    """One model per seed, built as the runner builds a run's model."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(spec, cell_kwargs, task, hidden, fused=fused, **model_kwargs))
    return models


def separate_runs(cfg: Any, spec: Any, cell_kwargs: dict[str, Any], task: Any, models: list[torch.nn.Module]
                  ) -> tuple[list[RunResult], list[NullTracker]]:
    """The training loop once per seed (K = 1) on ``models``."""
    results, trackers = [], []
    for seed, model in zip(SEEDS, models):
        tracker = NullTracker()
        results += train(cfg, SinglePopulation(model), task, [Member(seed, tracker)], CPU)
        trackers.append(tracker)
    return results, trackers


def batched_run(cfg: Any, spec: Any, cell_kwargs: dict[str, Any], task: Any, model_kwargs: dict[str, Any],
                path: str = "auto", models: list[torch.nn.Module] | None = None
                ) -> tuple[list[RunResult], list[NullTracker]]:
    """The training loop once for all seeds (K = len(SEEDS)) as one stacked population."""
    if models is None:
        models = build_seed_models(spec, cell_kwargs, task, SEEDS, cfg.model.hidden_size, fused=cfg.model.fused,
                                   **model_kwargs)
    population = StackedPopulation(spec, cell_kwargs, task, models, cfg.model.hidden_size, path=path, **model_kwargs)
    trackers = [NullTracker() for _ in SEEDS]
    results = train(cfg, population, task, [Member(s, tr) for s, tr in zip(SEEDS, trackers)], CPU)
    return results, trackers


def values(tracker: NullTracker, key: str) -> list[tuple[int, float]]:
    return tracker.metrics.get(key, [])


def assert_same_run(batched: tuple[RunResult, NullTracker], separate: tuple[RunResult, NullTracker],
                    rtol: float = 1e-4) -> None:
    (b_res, b_tr), (s_res, s_tr) = batched, separate
    b_loss, s_loss = values(b_tr, "train/loss"), values(s_tr, "train/loss")
    assert [s for s, _ in b_loss] == [s for s, _ in s_loss]
    assert [v for _, v in b_loss] == pytest.approx([v for _, v in s_loss], rel=rtol)
    assert [v for _, v in values(b_tr, "train/grad_norm")] == pytest.approx(
        [v for _, v in values(s_tr, "train/grad_norm")], rel=rtol)
    assert set(b_tr.metrics) == set(s_tr.metrics)
    assert (b_res.outcome, b_res.step, b_res.diverged_step) == (s_res.outcome, s_res.step, s_res.diverged_step)
    for key, value in s_res.metrics.items():
        if not key.startswith("time/"):
            assert b_res.metrics[key] == pytest.approx(value, rel=rtol, abs=1e-6), key


@pytest.mark.parametrize(
    ("cell", "fused", "path", "overrides"),
    [
        ("gru", True, "kernel", ()),
        ("lstm", True, "kernel", ()),
        ("rnn_tanh", True, "kernel", ()),
        ("rnn_tanh", False, "kernel", ()),
        ("gru", False, "vmap", ()),
        ("peephole_lstm", False, "vmap", ()),
        ("peephole_lstm", False, "kernel", ()),
        ("gru_cho2014", False, "kernel", ()),
        ("lstm_fgr", False, "kernel", ("model.num_layers=2", "model.bidirectional=true", "task=copy",
                                       "task.dependency_length=5")),
        ("mingru", False, "kernel", ()),
        ("mingru", False, "vmap", ()),
        ("indrnn", False, "kernel", ()),
        ("slstm", False, "kernel", ("model.num_layers=2", "model.bidirectional=true", "task=copy",
                                    "task.dependency_length=5")),
        ("lru", False, "kernel", ()),
        ("s6", False, "kernel", ()),
        ("orthogonal_rnn", False, "kernel", ()),
        ("orthogonal_rnn", False, "vmap", ()),
        ("lstm", True, "kernel", ("model.num_layers=2", "model.bidirectional=true", "task=copy",
                                  "task.dependency_length=5")),
        ("gru", True, "kernel", ("task.variant=pascanu2013", "task.dependency_length=20")),  # lengths vary
    ],
)
def test_batched_equals_separate_runs(compose, registry, cell, fused, path, overrides):
    cfg, spec, cell_kwargs, task, model_kwargs = setup(
        compose, registry, f"cell={cell}", f"model.fused={str(fused).lower()}", *overrides)
    models = build_seed_models(spec, cell_kwargs, task, SEEDS, cfg.model.hidden_size, fused=fused, **model_kwargs)
    assert StackedPopulation(spec, cell_kwargs, task, copy.deepcopy(models), 8, **model_kwargs).path == "kernel"
    separate = separate_runs(cfg, spec, cell_kwargs, task, copy.deepcopy(models))
    batched = batched_run(cfg, spec, cell_kwargs, task, model_kwargs, path)
    for k in range(len(SEEDS)):
        assert_same_run((batched[0][k], batched[1][k]), (separate[0][k], separate[1][k]))


def test_auto_takes_vmap_for_a_cell_without_a_stacked_path(compose, registry):
    """A cell that implements only the step (a plugin's usual case) trains seed-parallel through vmap."""
    import dataclasses

    from rnnbench.plugins.rnn import RNNCell

    class StepOnly(RNNCell):
        def stacked_sequence(self, params, x, reverse=False):
            return None

    cfg, spec, cell_kwargs, task, model_kwargs = setup(compose, registry, "cell=rnn_sigmoid")
    spec = dataclasses.replace(spec, cell=lambda *a, **k: StepOnly(*a, nonlinearity="sigmoid", **k))
    models = build_seed_models(spec, cell_kwargs, task, SEEDS, 8, fused=False, **model_kwargs)
    assert StackedPopulation(spec, cell_kwargs, task, models, 8, **model_kwargs).path == "vmap"
    with pytest.raises(ValueError, match="no stacked whole-sequence path"):
        StackedPopulation(spec, cell_kwargs, task, models, 8, path="kernel", **model_kwargs)


def test_initial_weights_are_those_of_the_runner(compose, registry):
    cfg, spec, cell_kwargs, task, model_kwargs = setup(compose, registry, "cell=lstm")
    models = build_seed_models(spec, cell_kwargs, task, SEEDS, 8, fused=True, **model_kwargs)
    stacked = StackedPopulation(spec, cell_kwargs, task, models, 8, **model_kwargs).params
    for k, seed in enumerate(SEEDS):
        torch.manual_seed(seed)  # what run_job does right before build_model
        reference = build_model(spec, cell_kwargs, task, 8, fused=True, **model_kwargs)
        for name, p in loop_named_parameters(reference).items():
            assert torch.equal(stacked[name][k], p.detach()), name


@pytest.mark.parametrize(
    ("optim", "fused"),
    [
        (("optim=sgd", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=0.01"), True),
        (("optim=adamw", "optim.weight_decay=0.1"), True),
        (("optim=rmsprop", "optim.momentum=0.5", "optim.weight_decay=0.01"), False),
        (("optim=adam", "optim.weight_decay=0.01", "trainer.clip_mode=value", "trainer.grad_clip=0.01"), True),
    ],
)
def test_one_optimizer_over_stacked_parameters_is_k_optimizers(compose, registry, optim, fused):
    """Adam/AdamW/RMSprop/SGD with momentum and weight decay are elementwise: stacking changes nothing."""
    cfg, spec, cell_kwargs, task, model_kwargs = setup(
        compose, registry, "cell=gru", f"model.fused={str(fused).lower()}", *optim)
    models = build_seed_models(spec, cell_kwargs, task, SEEDS, 8, fused=fused, **model_kwargs)
    separate_models = copy.deepcopy(models)
    separate = separate_runs(cfg, spec, cell_kwargs, task, separate_models)
    batched = batched_run(cfg, spec, cell_kwargs, task, model_kwargs, models=models)
    for k in range(len(SEEDS)):
        assert_same_run((batched[0][k], batched[1][k]), (separate[0][k], separate[1][k]))
        for (name, p), q in zip(models[k].named_parameters(), separate_models[k].parameters()):
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name  # trained weights copied back


def scaled(models: list[torch.nn.Module], index: int, name: str, factor: float) -> None:
    with torch.no_grad():
        loop_named_parameters(models[index])[name].mul_(factor)


def test_clipping_is_per_model(compose, registry):
    """Member 1's gradients are huge; a global clip would shrink members 0 and 2 too, a per-model clip does not."""
    clip = 50.0
    cfg, spec, cell_kwargs, task, model_kwargs = setup(
        compose, registry, "cell=rnn_tanh", "optim=sgd", "optim.lr=1.0", "optim.momentum=0.0",
        f"trainer.grad_clip={clip}", "trainer.steps=1", "trainer.eval_every=1")
    models = build_seed_models(spec, cell_kwargs, task, SEEDS, 8, fused=True, **model_kwargs)
    scaled(models, 1, "head.weight", 1e4)
    before = [torch.nn.utils.parameters_to_vector(m.parameters()).detach().clone() for m in models]
    separate_models = copy.deepcopy(models)
    separate_runs(cfg, spec, cell_kwargs, task, separate_models)
    results, trackers = batched_run(cfg, spec, cell_kwargs, task, model_kwargs, models=models)

    norms = [values(tr, "train/grad_norm")[0][1] for tr in trackers]
    assert norms[0] < clip and norms[2] < clip and norms[1] > 100 * clip, norms
    assert math.sqrt(sum(n * n for n in norms)) > clip  # a global clip would have rescaled every member
    for k, (model, ref) in enumerate(zip(models, separate_models)):
        delta = torch.nn.utils.parameters_to_vector(model.parameters()).detach() - before[k]
        expected = torch.nn.utils.parameters_to_vector(ref.parameters()).detach() - before[k]
        assert torch.allclose(delta, expected, rtol=1e-4, atol=1e-6), k
        if k != 1:
            assert float(delta.norm()) == pytest.approx(norms[k], rel=1e-4)  # the raw gradient, unclipped
    assert float((torch.nn.utils.parameters_to_vector(models[1].parameters()).detach() - before[1]).norm()) == \
        pytest.approx(clip, rel=1e-3)
    assert [r.metrics["train/clip_fraction"] for r in results] == [0.0, 1.0, 0.0]


def test_divergence_is_per_model(compose, registry):
    """Member 1 is non-finite from the first step: it is reported as diverged; the others train as if alone."""
    cfg, spec, cell_kwargs, task, model_kwargs = setup(
        compose, registry, "cell=gru", "trainer.grad_clip=null", "trainer.log_every=2", "trainer.steps=6",
        "trainer.eval_every=3")
    models = build_seed_models(spec, cell_kwargs, task, SEEDS, 8, fused=True, **model_kwargs)
    with torch.no_grad():
        loop_named_parameters(models[1])["encoder.layers.0.fwd.weight_hh"][0, 0] = math.nan
    separate = separate_runs(cfg, spec, cell_kwargs, task, copy.deepcopy(models))
    batched = batched_run(cfg, spec, cell_kwargs, task, model_kwargs, models=models)

    assert separate[0][1].outcome == "diverged" and separate[0][1].diverged_step == 1
    for k in range(len(SEEDS)):
        assert_same_run((batched[0][k], batched[1][k]), (separate[0][k], separate[1][k]))
    assert batched[0][1].step == batched[0][1].diverged_step == 1  # the first non-finite step, found at a flush
    assert values(batched[1][1], "train/loss") == []
    for k in (0, 2):
        assert batched[0][k].outcome != "diverged" and batched[0][k].step == 6
        assert all(torch.isfinite(p).all() for p in models[k].parameters())


def test_early_stop_freezes_each_member_at_its_own_step(compose, registry):
    cfg, spec, cell_kwargs, task, model_kwargs = setup(
        compose, registry, "cell=gru", "task=parity", "trainer.steps=6", "trainer.eval_every=2",
        "trainer.solved_threshold=0.53")  # near chance on parity: members pass checks and confirmations apart
    models = build_seed_models(spec, cell_kwargs, task, SEEDS, 8, fused=True, **model_kwargs)
    separate_models = copy.deepcopy(models)
    separate = separate_runs(cfg, spec, cell_kwargs, task, separate_models)
    batched = batched_run(cfg, spec, cell_kwargs, task, model_kwargs, models=models)
    assert len({r.step for r in separate[0]}) > 1  # members stop at different steps
    assert any(tr.metrics.get("confirm/accuracy") for tr in separate[1])  # a check passed, its confirmation not
    for k in range(len(SEEDS)):
        assert_same_run((batched[0][k], batched[1][k]), (separate[0][k], separate[1][k]))
        for p, q in zip(models[k].parameters(), separate_models[k].parameters()):
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)  # a frozen member is no longer updated


@pytest.mark.parametrize("mode_cell", ["gru", "lstm", "rnn_tanh", "rnn_relu", "rnn_sigmoid", "gru_cho2014",
                                       "lstm1997", "peephole_lstm", "cifg_lstm", "lstm_fgr", "lstm_noaf"])
@pytest.mark.parametrize("shape", ["last", "deep_bidirectional_sequence"])
def test_kernel_gradients_match_autograd_in_float64(registry, mode_cell, shape):
    """The stacked model against each member's own model: torch's fused module where the cell has one, else
    the step loop (probe)."""
    spec = registry.cell(mode_cell)
    task = registry.task("adding" if shape == "last" else "copy").task(dependency_length=6)
    model_kwargs = {} if shape == "last" else dict(num_layers=2, bidirectional=True)
    models = [m.double() for m in build_seed_models(spec, {}, task, [0, 1], 5, fused=True, **model_kwargs)]
    params = StackedPopulation(spec, {}, task, models, 5, **model_kwargs).params
    forward = KernelModel.create(spec, {}, task, 5, num_layers=model_kwargs.get("num_layers", 1),
                                 bidirectional=model_kwargs.get("bidirectional", False))
    x = torch.stack([task.sample(3, torch.Generator().manual_seed(k)).x.double() for k in range(2)])
    out = forward(params, x)
    weights = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    grads = torch.autograd.grad((out * weights).sum(), list(params.values()))
    for k, model in enumerate(models):
        reference = model(x[k]) if spec.fused else model.head(model.read(model.encoder.probe(x[k])[0]))
        assert torch.allclose(out[k], reference, rtol=1e-10, atol=1e-12)
        state = loop_named_parameters(model)
        expected = torch.autograd.grad((reference * weights[k]).sum(), list(state.values()))
        for name, got, want in zip(params, grads, expected):
            assert torch.allclose(got[k], want, rtol=1e-9, atol=1e-11), name
