"""Training steps replayed as CUDA graphs (rnnbench.graphs) compute what the eager steps compute.

The CUDA tests run only where torch sees a GPU (``benchmarks/gpu_check.sh`` runs them on one); the rest run
everywhere."""

from __future__ import annotations

import copy
import logging
import os

import pytest
import torch

from rnnbench.graphs import CudaGraphs, graphs_wanted
from rnnbench.population import SinglePopulation, StackedPopulation
from rnnbench.tracking import NullTracker
from rnnbench.train import Member, train
from test_seed_parallel import SEEDS, build_seed_models, setup, values

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic matmuls
CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
STEPS = ("trainer.steps=24", "trainer.eval_every=8", "trainer.log_every=1", "trainer.device=cuda",
         "trainer.deterministic=true")


def emulated_graphs(fn, sample_args, allow_unused_input=False):
    """torch.cuda.make_graphed_callables' autograd contract without a GPU: the sample args are the static inputs
    (arguments with another address are copied into them), the outputs come back detached, and the backward
    returns autograd's gradients with respect to the static inputs that need one, each detached (so two inputs
    that received the same gradient get two tensors sharing its storage, as torch's graphed callables return)."""
    static, last = tuple(sample_args), {}

    class Replayed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            for placeholder, given in zip(static, inputs):
                if placeholder.data_ptr() != given.data_ptr():
                    placeholder.copy_(given)
            with torch.enable_grad():
                last["out"] = fn(*static)
            return last["out"].detach()

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            wanted = [t for t in static if t.requires_grad]
            grads = iter(torch.autograd.grad(last["out"], wanted, grad, allow_unused=allow_unused_input))
            return tuple(next(grads).detach() if t.requires_grad else None for t in static)  # as torch does

    return Replayed.apply


@pytest.fixture
def emulated(monkeypatch):
    """CudaGraphs on the CPU, capturing through :func:`emulated_graphs`; yields the list of captures."""
    captures = []

    def capture(fn, sample_args, allow_unused_input=False):
        captures.append(tuple(t.shape for t in sample_args))
        return emulated_graphs(fn, sample_args, allow_unused_input)

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", capture)
    monkeypatch.setattr(CudaGraphs, "device_type", "cpu")
    yield captures


def trained(cfg, task, population, seeds, device=CUDA):
    trackers = [NullTracker() for _ in seeds]
    results = train(cfg, population, task, [Member(s, t) for s, t in zip(seeds, trackers)], device)
    return results, trackers


def eager_and_graphed(cfg, spec, cell_kwargs, task, model_kwargs, models, device):
    """The training loop on copies of ``models`` (one: a single run; more: stacked seeds), eagerly and with
    ``capture_graphs``: both runs' (results, trackers), and the graphed population."""
    seeds, runs = SEEDS[:len(models)], []
    for graphed in (False, True):
        ms = copy.deepcopy(models)
        population = (SinglePopulation(ms[0]) if len(ms) == 1 else
                      StackedPopulation(spec, cell_kwargs, task, ms, cfg.model.hidden_size, **model_kwargs))
        if graphed:
            population.capture_graphs()
        runs.append(trained(cfg, task, population, seeds, device))
    return runs, population


def assert_identical(a, b):
    """Every logged value and every final metric equal bit for bit (the message gives the largest relative
    difference, to tell rounding from a wrong gradient)."""
    (a_res, a_tr), (b_res, b_tr) = a, b
    for ra, rb, ta, tb in zip(a_res, b_res, a_tr, b_tr):
        assert set(ta.metrics) == set(tb.metrics)
        for key in ta.metrics:
            if not key.startswith("time/"):
                va, vb = values(ta, key), values(tb, key)
                worst = max((abs(x - y) / max(abs(y), 1e-30) for (_, x), (_, y) in zip(va, vb)), default=0.0)
                assert va == vb, f"{key}: largest relative difference {worst:.3g}"
        assert (ra.outcome, ra.step) == (rb.outcome, rb.step)
        assert {k: v for k, v in ra.metrics.items() if not k.startswith("time/")} == {
            k: v for k, v in rb.metrics.items() if not k.startswith("time/")}


@pytest.mark.parametrize(("cell", "seeds", "overrides"), [
    ("peephole_lstm", 1, ()),
    ("peephole_lstm", 3, ()),
    ("gru", 3, ("task.variant=pascanu2013", "task.dependency_length=20")),  # lengths vary: more than 4 shapes
])
def test_the_capture_wiring_trains_as_eager_steps_do(compose, registry, emulated, cell, seeds, overrides):
    """What CudaGraphs adds around a capture (placeholders for the batch and for gathered members, parameters as
    the graph's own inputs, the shape limit) changes no number: bit for bit on the CPU with an emulated capture."""
    cfg, spec, cell_kwargs, task, model_kwargs = setup(compose, registry, f"cell={cell}", "model.fused=false",
                                                       "trainer.steps=24", "trainer.eval_every=8",
                                                       "trainer.grad_clip=0.05", *overrides)
    models = build_seed_models(spec, cell_kwargs, task, SEEDS[:seeds], cfg.model.hidden_size, fused=False,
                               **model_kwargs)
    runs, population = eager_and_graphed(cfg, spec, cell_kwargs, task, model_kwargs, models, torch.device("cpu"))
    assert_identical(runs[0], runs[1])
    graphs = population.graphs
    assert graphs is not None and graphs.failed is None
    assert len(emulated) == len(graphs.graphs) == (graphs.limit if cell == "gru" else 1)


def test_no_capture_without_gradients_and_a_refused_capture_runs_eagerly(registry, emulated, monkeypatch, caplog):
    spec, task = registry.cell("peephole_lstm"), registry.task("adding").task(dependency_length=5)
    model = build_seed_models(spec, {}, task, [0], 8, fused=False)[0]
    population = SinglePopulation(model)
    population.capture_graphs()
    x = task.sample(4, torch.Generator().manual_seed(0)).x
    with torch.no_grad():
        eager = population.forward([x], [0])[0]
    assert emulated == [] and population.graphs.graphs == {}

    def refuse(fn, sample_args, allow_unused_input=False):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", refuse)
    with caplog.at_level(logging.WARNING, logger="rnnbench"):
        for _ in range(3):
            assert torch.equal(population.forward([x], [0])[0], eager)
    assert population.graphs.failed == "RuntimeError: operation not permitted when stream is capturing"
    assert [r.getMessage() for r in caplog.records] == [
        "this model's training step cannot be captured in a CUDA graph (RuntimeError: operation not permitted when "
        "stream is capturing); it runs eagerly"]


def test_off_cuda_the_function_runs_as_it_is(registry):
    model = build_seed_models(registry.cell("gru"), {}, registry.task("adding").task(dependency_length=5), [0], 8,
                              fused=False)[0]
    graphs = CudaGraphs(lambda x, *params: model(x))
    x = torch.randn(4, 6, 2)
    assert torch.equal(graphs(x, *model.parameters()), model(x))
    assert graphs.graphs == {} and graphs.failed is None


def test_torchs_fused_module_is_never_captured(registry):
    task = registry.task("adding").task(dependency_length=5)
    fused = SinglePopulation(build_seed_models(registry.cell("lstm"), {}, task, [0], 8, fused=True)[0])
    loop = SinglePopulation(build_seed_models(registry.cell("lstm"), {}, task, [0], 8, fused=False)[0])
    fused.capture_graphs()
    loop.capture_graphs()
    assert (fused.path, fused.graphs) == ("fused", None) and loop.graphs is not None


def test_graphs_are_wanted_on_cuda_only_and_never_with_dropout(compose):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert graphs_wanted(compose("task=adding", "cell=gru"), cuda)
    assert not graphs_wanted(compose("task=adding", "cell=gru"), cpu)
    assert not graphs_wanted(compose("task=adding", "cell=gru", "trainer.cuda_graphs=false"), cuda)
    assert not graphs_wanted(compose("task=adding", "cell=gru", "model.num_layers=2", "model.dropout=0.1"), cuda)


@needs_cuda
@pytest.mark.parametrize(("cell", "seeds", "overrides"), [
    ("peephole_lstm", 1, ()),
    ("slstm", 1, ()),
    ("mingru", 1, ()),
    ("gru_cho2014", 1, ("model.num_layers=2", "model.bidirectional=true", "task=copy", "task.dependency_length=5")),
    ("peephole_lstm", 3, ()),  # two biases added: their gradients alias one buffer (own_gradients)
    ("s6", 3, ()),
    ("gru", 3, ("task.variant=pascanu2013", "task.dependency_length=20")),  # lengths vary: several graphs
])
def test_graphed_training_is_the_eager_training(compose, registry, cell, seeds, overrides):
    cfg, spec, cell_kwargs, task, model_kwargs = setup(compose, registry, f"cell={cell}", "model.fused=false",
                                                       *STEPS, *overrides)
    torch.use_deterministic_algorithms(True)
    try:
        models = [m.to(CUDA) for m in build_seed_models(spec, cell_kwargs, task, SEEDS[:seeds], cfg.model.hidden_size,
                                                        fused=False, **model_kwargs)]
        runs, population = eager_and_graphed(cfg, spec, cell_kwargs, task, model_kwargs, models, CUDA)
    finally:
        torch.use_deterministic_algorithms(False)
    graphs = population.graphs
    assert graphs is not None and graphs.failed is None and graphs.graphs
    assert_identical(runs[0], runs[1])


@needs_cuda
@pytest.mark.parametrize(("cell", "seeds"), [("peephole_lstm", 3), ("peephole_lstm", 1), ("gru", 3), ("lstm1997", 3)])
def test_replayed_steps_have_the_eager_gradients(registry, cell, seeds):
    """One population's forward and backward, three times on the same weights and batch: every parameter's
    gradient bit for bit the same with and without graphs, and from one replay to the next."""
    spec, task = registry.cell(cell), registry.task("adding").task(dependency_length=10)
    models = [m.to(CUDA) for m in build_seed_models(spec, {}, task, SEEDS[:seeds], 8, fused=False)]
    xs = [task.sample(16, torch.Generator().manual_seed(1)).x.to(CUDA)] * seeds
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for graphed in (False, True):
            population = (SinglePopulation(models[0]) if seeds == 1 else
                          StackedPopulation(spec, {}, task, models, 8))
            if graphed:
                population.capture_graphs()
            for _ in range(3):
                for p in population.parameters():
                    p.grad = None
                sum(o.square().sum() for o in population.forward(xs, list(range(seeds)))).backward()
                grads.append([p.grad.clone() for p in population.parameters()])
    finally:
        torch.use_deterministic_algorithms(False)
    assert population.graphs is not None and population.graphs.graphs
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))


@needs_cuda
def test_a_model_that_cannot_be_captured_says_so_once_and_trains_eagerly(compose, registry, caplog):
    cfg, spec, cell_kwargs, task, model_kwargs = setup(compose, registry, "cell=orthogonal_rnn", *STEPS)
    model = build_seed_models(spec, cell_kwargs, task, SEEDS[:1], cfg.model.hidden_size, fused=False)[0].to(CUDA)
    torch.use_deterministic_algorithms(True)
    try:
        eager = trained(cfg, task, SinglePopulation(copy.deepcopy(model)), SEEDS[:1])
        population = SinglePopulation(copy.deepcopy(model))
        population.capture_graphs()
        with caplog.at_level(logging.WARNING, logger="rnnbench"):
            graphed = trained(cfg, task, population, SEEDS[:1])
    finally:
        torch.use_deterministic_algorithms(False)
    assert population.graphs is not None and population.graphs.failed
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warnings) == 1 and "runs eagerly" in warnings[0]
    assert_identical(eager, graphed)


@needs_cuda
@pytest.mark.slow
def test_the_runner_captures_on_cuda(compose, tmp_path, caplog):
    from rnnbench.runner import run_job

    base = ("task=adding", "cell=peephole_lstm", "tracking=none", "trainer.progress=none", "trainer.steps=20",
            "trainer.eval_every=10", "task.dependency_length=10", "trainer.device=cuda", "diagnostics=off")
    with caplog.at_level(logging.INFO, logger="rnnbench"):
        run_job(compose(*base), tmp_path / "a", tmp_path / "a")
    assert any("captured the training step" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rnnbench"):
        run_job(compose(*base, "trainer.cuda_graphs=false"), tmp_path / "b", tmp_path / "b")
    assert not any("CUDA graph" in r.getMessage() for r in caplog.records)


def test_the_run_key_is_unchanged_by_default_and_differs_for_eager_steps(compose):
    from omegaconf import OmegaConf

    from rnnbench import identity

    resolved = OmegaConf.to_container(compose("task=adding", "cell=gru"), resolve=True)
    before = dict(resolved, trainer={k: v for k, v in resolved["trainer"].items() if k != "cuda_graphs"})
    assert identity.run_key(resolved) == identity.run_key(before)  # runs recorded before the setting existed
    eager = OmegaConf.to_container(compose("task=adding", "cell=gru", "trainer.cuda_graphs=false"), resolve=True)
    assert identity.run_key(eager) != identity.run_key(resolved)
