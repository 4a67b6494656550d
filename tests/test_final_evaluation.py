"""The final evaluation decides a run's outcome: its error rates against the binomial figures in the README, the
computed ``at_baseline`` margin, and divergence reported at its first non-finite step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rnnbench.evaluation import evaluate, outcome_of
from rnnbench.population import Population

CPU = torch.device("cpu")
THRESHOLD = 0.99
SEQUENCES = 10_000


class KnownAccuracy(Population):
    """A predictor on the parity task that answers each sequence right with probability ``p``, independently."""

    size, path, names = 1, "stub", []

    def __init__(self, p: float, seed: int) -> None:
        self.p, self.gen = p, torch.Generator().manual_seed(seed)
        self.batches: list = []

    def forward(self, xs, members):
        (x,) = xs
        right = torch.rand(x.shape[0], generator=self.gen) < self.p
        target = self.batches.pop(0).y
        answer = torch.where(right, target, 1 - target)
        return [torch.nn.functional.one_hot(answer, 2).float() * 10.0]

    def train(self, mode: bool) -> None:
        pass


class Recording:
    """Parity with its batches handed to the predictor, so that it knows the right answers."""

    def __init__(self, task, population: KnownAccuracy) -> None:
        self.task, self.population = task, population

    def sample(self, n, gen):
        batch = self.task.sample(n, gen)
        self.population.batches.append(batch)
        return batch

    def metrics(self, out, batch):
        return self.task.metrics(out, batch)


def binomial_at_least(n: int, p: float, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space."""
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def readme_figures() -> dict[float, float]:
    """P(final evaluation says solved | true accuracy p), as the README's table states them."""
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    (top,) = [i for i, line in enumerate(lines) if line.startswith("| true accuracy p |")]
    ps = [float(v) for v in lines[top].split("|")[2:-1]]
    rates = [float(v) for v in lines[top + 2].split("|")[2:-1]]
    return dict(zip(ps, rates))


README_FIGURES = readme_figures()


@pytest.mark.parametrize("p", sorted(README_FIGURES))
def test_readme_figures_are_the_binomial_ones(p):
    assert binomial_at_least(SEQUENCES, p, math.ceil(THRESHOLD * SEQUENCES)) == pytest.approx(
        README_FIGURES[p], rel=0.05)


@pytest.mark.parametrize("p", [0.98, 0.988, 0.992, 0.995])
def test_solved_rate_of_a_predictor_of_known_accuracy(registry, p):
    """Many final evaluations of a predictor of true accuracy ``p``: the fraction tagged ``solved`` matches the
    binomial probability within four standard deviations of the observed rate."""
    task = registry.task("parity").task(dependency_length=2)
    draws = 150
    solved = 0
    for draw in range(draws):
        population = KnownAccuracy(p, seed=draw)
        ev = evaluate(population, Recording(task, population), {0: draw}, "final:1", SEQUENCES, SEQUENCES, CPU)[0]
        assert ev.sequences == SEQUENCES
        solved += outcome_of(ev, task.baseline(), SimpleNamespace(solved_threshold=THRESHOLD, baseline_z=3.0)) \
            == "solved"
    expected = binomial_at_least(SEQUENCES, p, math.ceil(THRESHOLD * SEQUENCES))
    sd = math.sqrt(expected * (1 - expected) / draws)
    assert abs(solved / draws - expected) <= 4 * sd + 1.0 / draws, (p, solved / draws, expected)


class Constant(Population):
    """The memoryless predictor of the adding problem: always the target's mean."""

    size, path, names = 1, "stub", []

    def forward(self, xs, members):
        return [torch.ones(xs[0].shape[0], 1)]

    def train(self, mode: bool) -> None:
        pass


def test_a_constant_predictor_is_at_baseline(registry):
    """With a 3-standard-error margin, a memoryless predictor is tagged ``learning`` about 0.13 % of the time
    (the fixed 10 % margin on 256 sequences tagged it ``learning`` 31 times in 400)."""
    task = registry.task("adding").task(dependency_length=10)
    trainer = SimpleNamespace(solved_threshold=THRESHOLD, baseline_z=3.0)
    outcomes = [outcome_of(evaluate(Constant(), task, {0: draw}, "final:1", 2000, 100, CPU)[0], task.baseline(),
                           trainer) for draw in range(300)]
    assert outcomes.count("at_baseline") >= 296, outcomes.count("learning")


def test_standard_error_is_that_of_the_mean_loss(registry):
    task = registry.task("adding").task(dependency_length=10)
    ev = evaluate(Constant(), task, {0: 1}, "final:1", 4000, 100, CPU)[0]
    # the squared error of a constant predictor on a sum of two U[0,1] has standard deviation sqrt(7/180)
    assert ev.loss_se == pytest.approx(math.sqrt(7 / 180) / math.sqrt(4000), rel=0.3)
    assert ev.metrics["loss"] == pytest.approx(1 / 6, abs=4 * ev.loss_se)


@pytest.mark.slow
def test_divergence_is_reported_at_one_step_everywhere(cli, mlflow_uri):
    """The issue's command: console line, tag and stored metrics agree on the first non-finite step."""
    from mlflow.tracking import MlflowClient

    proc = cli("cell=rnn_relu", "optim.lr=5", "trainer.grad_clip=null", "trainer.steps=45", "diagnostics=off",
               "trainer.progress=none", f"tracking.uri={mlflow_uri}", check=True)
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("rnnbench: rnn_relu")]
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs(["1"])
    step = int(run.data.tags["rnnbench.diverged_step"])
    assert run.data.tags["rnnbench.outcome"] == "diverged" and f"diverged at step {step};" in line
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert all(m.step < step and math.isfinite(m.value) for m in losses)
    for key in run.data.metrics:
        assert all(math.isfinite(m.value) for m in client.get_metric_history(run.info.run_id, key)), key


@pytest.mark.slow
def test_solved_means_the_final_evaluation_reached_the_threshold(cli, mlflow_uri):
    """An early stop is confirmed: a run tagged solved has final/accuracy at or above the threshold, measured on
    final/sequences fresh sequences, and the console line reports that evaluation."""
    from mlflow.tracking import MlflowClient

    proc = cli("task=parity", "task.dependency_length=2", "cell=gru", "model.hidden_size=16", "trainer.steps=1500",
               "trainer.eval_every=50", "optim.lr=0.01", "diagnostics=off", "trainer.progress=none",
               f"tracking.uri={mlflow_uri}", check=True)
    (run,) = MlflowClient(tracking_uri=mlflow_uri).search_runs(["1"])
    metrics = run.data.metrics
    assert run.data.tags["rnnbench.outcome"] == "solved"
    assert metrics["final/accuracy"] >= 0.99 and metrics["final/sequences"] == 10_000
    assert f"accuracy={metrics['final/accuracy']:.4g}" in proc.stdout
