"""The analytic baselines against the literature's numbers and against Monte-Carlo runs of the memoryless strategy."""

from __future__ import annotations

import math

import pytest
import torch

from rnnbench.base import Batch, Task
from rnnbench.tasks.adding import AddingTask
from rnnbench.tasks.associative_recall import AssociativeRecallTask
from rnnbench.tasks.copy import CopyTask
from rnnbench.tasks.parity import ParityTask
from rnnbench.tasks.selective_copy import SelectiveCopyTask
from rnnbench.tasks.temporal_order import TemporalOrderTask
from rnnbench.tasks.variable_copy import VariableCopyTask

NEG = -1e4



# ------------------------------------------------------------------------------------- literature numbers


@pytest.mark.parametrize(
    ("T", "ce", "acc_all"),
    [(100, 0.1733, 0.927), (200, 0.0945, 0.960), (300, 0.0650, 0.973), (500, 0.0400, 0.983),
     (1000, 0.0204, 0.991), (2000, 0.0103, 0.996)],
)
@pytest.mark.parametrize("variant", ["arjovsky2016", "tcn2018"])
def test_copy_baseline_matches_the_literature_table(T, ce, acc_all, variant):
    base = CopyTask(dependency_length=T, variant=variant).baseline()
    assert base["loss"] == pytest.approx(10 * math.log(8) / (T + 20))
    assert round(base["loss"], 4) == ce
    assert round(base["accuracy_all"], 3) == acc_all
    assert base["accuracy"] == 1 / 8


def test_adding_baselines_match_the_literature():
    assert AddingTask(600, "tcn2018").baseline()["loss"] == pytest.approx(1 / 6)  # not 0.1767
    assert AddingTask(100, "arjovsky2016").baseline()["loss"] == pytest.approx(1 / 6)
    assert AddingTask(100, "pascanu2013").baseline()["loss"] == pytest.approx(1 / 24)
    old = AddingTask(100, "hochreiter1997").baseline()
    assert old["loss"] == pytest.approx(1 / 24, abs=0.003)  # "about 1/24"
    assert old["accuracy"] == pytest.approx(0.15, abs=0.01)  # "only about 15 % inside the 0.04 tolerance"
    for variant in ("pascanu2013", "arjovsky2016", "tcn2018"):
        assert AddingTask(100, variant).baseline()["accuracy"] == pytest.approx(0.1536)


def test_classification_baselines_are_chance():
    assert TemporalOrderTask(100, "2bit").baseline() == pytest.approx({"loss": math.log(4), "accuracy": 0.25})
    assert TemporalOrderTask(100, "3bit").baseline() == pytest.approx({"loss": math.log(8), "accuracy": 0.125})
    assert ParityTask(40, "final").baseline() == pytest.approx({"loss": math.log(2), "accuracy": 0.5})
    assert AssociativeRecallTask(dependency_length=64, vocab_size=64).baseline() == pytest.approx(
        {"loss": math.log(32), "accuracy": 1 / 32}
    )
    assert SelectiveCopyTask(dependency_length=50, alphabet=16, symbols=16).baseline() == pytest.approx(
        {"loss": math.log(16), "accuracy": 1 / 16}
    )


# ----------------------------------------------------------------------- Monte-Carlo of the memoryless strategy


@pytest.mark.parametrize("variant", ["hochreiter1997", "pascanu2013", "arjovsky2016", "tcn2018"])
@pytest.mark.parametrize(("T", "tolerance"), [(22, 0.04), (60, 0.04), (40, 0.2)])
def test_adding_baseline_is_the_memoryless_predictor(variant, T, tolerance):
    """Predict the target's mean on many sequences: MSE and accuracy agree with the analytic values."""
    task = AddingTask(T, variant, tolerance)
    g = torch.Generator().manual_seed(11)
    errors = []
    for _ in range(40):
        batch = task.sample(512, g)
        errors.append(batch.y.squeeze(1) - task.target_mean())
    err = torch.cat(errors).double()
    n = err.numel()
    squared = err**2
    inside = ((err.abs() / task.scale) < tolerance).double()
    base = task.baseline()
    assert abs(float(squared.mean()) - base["loss"]) < 4 * float(squared.std()) / math.sqrt(n)
    assert abs(float(inside.mean()) - base["accuracy"]) < 4 * math.sqrt(base["accuracy"] * (1 - base["accuracy"]) / n)
    # the metrics of the task itself agree with the direct computation
    output = torch.full((512, 1), task.target_mean())
    metrics = task.metrics(output, batch)
    assert float(metrics["mse"]) == pytest.approx(float((batch.y - task.target_mean()).pow(2).mean()), rel=1e-5)


def test_adding_mean_is_the_best_constant():
    task = AddingTask(50, "hochreiter1997")
    batch = task.sample(20000, torch.Generator().manual_seed(3))
    mse = {c: float((batch.y - c).pow(2).mean()) for c in (0.45, 0.5, 0.55)}
    assert mse[0.5] < mse[0.45] and mse[0.5] < mse[0.55]


def _support(task: Task) -> tuple[int, int]:
    """Classes a memoryless model spreads its mass over at the scored positions: [low, high)."""
    if isinstance(task, (CopyTask, VariableCopyTask, SelectiveCopyTask)):
        return 1, task.alphabet + 1
    if isinstance(task, AssociativeRecallTask):
        return task.vocab_size // 2, task.vocab_size
    return 0, task.output_size


def memoryless(task: Task, batch: Batch, noise: torch.Generator | None) -> torch.Tensor:
    """The best memoryless strategy's logits; with ``noise``, a random guess over the same support instead.

    It knows where it is asked to recall (the mask; copy: the step index says so; variable_copy: only a memory
    of the delimiter would, so there this is the window-aware predictor its ``baseline()`` names) and, for
    running parity, that the first parity is the first bit; it remembers no content.
    """
    low, high = _support(task)
    shape = (*batch.y.shape, task.output_size)
    logits = torch.full(shape, NEG)
    spread = torch.zeros(*batch.y.shape, high - low) if noise is None else torch.rand(
        *batch.y.shape, high - low, generator=noise
    )
    logits[..., low:high] = spread
    if batch.mask is not None:
        logits[~batch.mask] = NEG
        logits[..., 0] = torch.where(batch.mask, torch.tensor(NEG), torch.tensor(0.0))
    if isinstance(task, ParityTask) and task.variant == "running":
        first = batch.x[:, 0].argmax(-1)
        logits[:, 0] = NEG
        logits[torch.arange(len(first)), 0, first] = 0.0
    return logits


MC_CASES = [
    CopyTask(dependency_length=30, variant="arjovsky2016", alphabet=8, symbols=10),
    CopyTask(dependency_length=30, variant="tcn2018", alphabet=5, symbols=4),
    VariableCopyTask(dependency_length=30, min_delay=5, alphabet=6, symbols=5),
    SelectiveCopyTask(dependency_length=30, alphabet=8, symbols=6),
    TemporalOrderTask(50, "2bit"),
    TemporalOrderTask(50, "3bit"),
    AssociativeRecallTask(dependency_length=40, vocab_size=32, num_kv_pairs=6),
    ParityTask(20, "final"),
    ParityTask(20, "running"),
]


@pytest.mark.parametrize("task", MC_CASES, ids=lambda t: f"{type(t).__name__}-{getattr(t, 'variant', '')}")
def test_classification_baseline_is_the_memoryless_strategy(task):
    base = task.baseline()
    g, noise = torch.Generator().manual_seed(21), torch.Generator().manual_seed(22)
    losses, accuracies, all_positions = [], [], []
    scored = 0
    for _ in range(20):
        batch = task.sample(256, g)
        losses.append(float(task.loss(memoryless(task, batch, None), batch)))
        metrics = task.metrics(memoryless(task, batch, noise), batch)
        accuracies.append(float(metrics["accuracy"]))
        if "accuracy_all" in metrics:
            all_positions.append(float(metrics["accuracy_all"]))
        scored += int(batch.mask.sum()) if batch.mask is not None else batch.y.numel()
    assert sum(losses) / len(losses) == pytest.approx(base["loss"], rel=1e-4)
    acc = sum(accuracies) / len(accuracies)
    assert abs(acc - base["accuracy"]) < 4 * math.sqrt(base["accuracy"] * (1 - base["accuracy"]) / scored) + 1e-6
    if all_positions:
        assert sum(all_positions) / len(all_positions) == pytest.approx(base["accuracy_all"], abs=0.01)


def test_running_parity_current_bit_carries_no_information_after_the_first_step():
    task = ParityTask(20, "running")
    batch = task.sample(4000, torch.Generator().manual_seed(5))
    bits = batch.x.argmax(-1)
    guess = (bits == batch.y).float().mean(0)  # predict the current bit
    assert guess[0] == 1.0
    assert torch.allclose(guess[1:], torch.full((19,), 0.5), atol=0.04)
    assert float((bits == batch.y).float().mean()) == pytest.approx(task.baseline()["accuracy"], abs=0.01)


# -------------------------------------------------------- variable_copy: window-aware baseline, memoryless figure


def step_memoryless(task: VariableCopyTask, batch: Batch) -> torch.Tensor:
    """The best predictor that sees the step index and the current input only, by counting: at a blank input on
    step t, the chance that t is a recall step, spread over the A symbols; blank on every other input."""
    T, K, A, lo = task.dependency_length, task.symbols, task.alphabet, task.min_delay
    B, L = batch.y.shape
    delays = torch.arange(lo, T + 1)
    steps = torch.arange(L)[:, None]
    inside = ((steps >= K + delays) & (steps < 2 * K + delays)).sum(1).double()  # (L,) delays recalling at t
    delimiter = (steps == K - 1 + delays).sum(1).double()
    q = (inside / (len(delays) - delimiter).clamp_min(1)).clamp(1e-12, 1 - 1e-12)
    probs = torch.zeros(L, A + 1, dtype=torch.float64)
    probs[:, 0] = 1 - q
    probs[:, 1:] = (q / A)[:, None]
    logits = probs.log().float().expand(B, L, A + 1).clone()
    blank = batch.x.argmax(-1) == 0
    logits[~blank] = torch.tensor([0.0] + [NEG] * A)  # data or delimiter on input: the target is blank
    return logits


def test_variable_copy_baseline_is_window_aware_and_describe_gives_the_memoryless_figure():
    task = VariableCopyTask(dependency_length=50)  # K = 10, A = 8, delays 1..50
    described, base = task.describe(), task.baseline()
    assert "window" in described["baseline_kind"] and "not its contents" in described["baseline_kind"]
    assert set(base) >= {"loss", "accuracy"}
    assert base["loss"] == pytest.approx(10 * math.log(8) / 70)  # 0.297: knows the window
    assert base["loss"] == pytest.approx(0.2971, abs=1e-4)
    assert described["memoryless_loss"] == pytest.approx(0.6667, abs=1e-4)  # remembers nothing
    # one delay: the window is fixed, both figures are copy's
    fixed = VariableCopyTask(dependency_length=30, min_delay=30, alphabet=6, symbols=5)
    assert fixed.describe()["memoryless_loss"] == pytest.approx(fixed.baseline()["loss"])
    assert fixed.baseline()["loss"] == pytest.approx(CopyTask(30, "arjovsky2016", 6, 5).baseline()["loss"])


@pytest.mark.parametrize(("T", "lo", "K", "A"), [(50, 1, 10, 8), (30, 5, 5, 6), (12, 3, 4, 3)])
def test_variable_copy_memoryless_figure_is_the_step_memoryless_predictor(T, lo, K, A):
    """On sampled batches: the step-and-input predictor scores ``memoryless_loss``; the window-aware one scores
    ``baseline()["loss"]``, below it."""
    task = VariableCopyTask(dependency_length=T, min_delay=lo, alphabet=A, symbols=K)
    g = torch.Generator().manual_seed(31)
    step, window = [], []
    for _ in range(20):
        batch = task.sample(512, g)
        step.append(float(task.loss(step_memoryless(task, batch), batch)))
        window.append(float(task.loss(memoryless(task, batch, None), batch)))
    figure = task.describe()["memoryless_loss"]
    assert sum(step) / len(step) == pytest.approx(figure, rel=0.01)
    assert sum(window) / len(window) == pytest.approx(task.baseline()["loss"], rel=1e-4)
    assert task.baseline()["loss"] < figure
