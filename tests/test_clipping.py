"""Clipping by the global norm scales every parameter's gradient exactly once, on every cell's training path.

Autograd can hand two parameters views of one gradient tensor (two biases added inside a kernel, each reached
through a view such as ``unsqueeze``; a CUDA-graphed step's aliases), and an in-place clip then scales that
memory once per parameter. The reference here is ``torch.autograd.grad`` (one tensor per parameter), the clip
written out, and one plain SGD step."""

from __future__ import annotations

import copy

import pytest
import torch

from rnnbench.evaluation import generator
from rnnbench.manager import get_registry
from rnnbench.population import SinglePopulation, StackedPopulation
from rnnbench.tracking import NullTracker
from rnnbench.train import Member, train
from test_seed_parallel import SEEDS, build_seed_models, setup

CLIP = 1e-3
LR = 0.5
ONE_SGD_STEP = ("optim=sgd", f"optim.lr={LR}", "optim.momentum=0", "trainer.steps=1", "trainer.eval_every=1",
                f"trainer.grad_clip={CLIP}", "trainer.early_stop=false", "trainer.final_eval_sequences=16")


def expected_after_one_step(model, task, cfg, seed):
    """The model's parameters after one SGD step on its first training batch, its gradient clipped to norm CLIP."""
    batch = task.sample(cfg.trainer.batch_size, generator(seed, "train", torch.device("cpu")))
    params = list(model.parameters())
    grads = torch.autograd.grad(task.loss(model(batch.x), batch), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    norm = torch.stack([g.square().sum() for g in grads]).sum().sqrt()
    coef = (CLIP / (norm + 1e-6)).clamp(max=1.0)
    assert coef < 0.5  # the clip engages
    return [(p - LR * coef * g).detach() for p, g in zip(params, grads)]


@pytest.mark.parametrize("cell", sorted(get_registry().cells))
def test_one_clipped_step_scales_every_gradient_once(compose, registry, cell):
    cfg, spec, cell_kwargs, task, model_kwargs = setup(compose, registry, f"cell={cell}", "model.fused=false",
                                                       *ONE_SGD_STEP)
    model = build_seed_models(spec, cell_kwargs, task, SEEDS[:1], cfg.model.hidden_size, fused=False)[0]
    expected = expected_after_one_step(copy.deepcopy(model), task, cfg, SEEDS[0])
    train(cfg, SinglePopulation(model), task, [Member(SEEDS[0], NullTracker())], torch.device("cpu"))
    for (name, p), e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("cell", ["peephole_lstm", "gru_cho2014", "rnn_tanh"])
def test_stacked_members_are_clipped_once_each(compose, registry, cell):
    cfg, spec, cell_kwargs, task, model_kwargs = setup(compose, registry, f"cell={cell}", "model.fused=false",
                                                       *ONE_SGD_STEP)
    models = build_seed_models(spec, cell_kwargs, task, SEEDS, cfg.model.hidden_size, fused=False)
    expected = [expected_after_one_step(copy.deepcopy(m), task, cfg, s) for m, s in zip(models, SEEDS)]
    population = StackedPopulation(spec, cell_kwargs, task, models, cfg.model.hidden_size, **model_kwargs)
    train(cfg, population, task, [Member(s, NullTracker()) for s in SEEDS], torch.device("cpu"))
    for k in range(len(SEEDS)):
        for (name, p), e in zip(population.model_of(k).named_parameters(), expected[k]):
            torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-7, msg=f"member {k}: {name}")
