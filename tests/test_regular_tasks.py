"""The regular-level tasks of Delétang et al. 2023 (even pairs, modular arithmetic, cycle navigation): targets
against independent references written from the definitions (string counting, Python's own evaluation of the
expression, NumPy sums), and their memoryless baselines against an exhaustive enumeration of every sequence at
small lengths and against the predictor they describe on sampled batches."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rnnbench.tasks.cycle_navigation import CycleNavigationTask
from rnnbench.tasks.even_pairs import EvenPairsTask
from rnnbench.tasks.modular_arithmetic import ModularArithmeticTask

OPS = "+-*"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def even_pairs_reference(bits: list[int]) -> int:
    text = "".join(map(str, bits))
    return (text.count("01") + text.count("10")) % 2


def cycle_reference(actions: np.ndarray, cycle: int) -> np.ndarray:
    return np.mod((actions - 1).sum(axis=1), cycle)


def expression_text(tokens: list[int], modulus: int) -> str:
    return "".join(str(t) if t < modulus else OPS[t - modulus] for t in tokens)


def arithmetic_reference(tokens: list[int], modulus: int) -> int:
    """Python evaluates the expression with its own precedence (``*`` before ``+`` and ``-``); % is in [0, m)."""
    return eval(expression_text(tokens, modulus)) % modulus  # noqa: S307 - digits and + - * only


@pytest.mark.parametrize("T", [1, 2, 3, 8, 40, 257])
def test_even_pairs_against_string_counting(T):
    batch = EvenPairsTask(T).sample(500, gen(T))
    bits = batch.x.argmax(-1)
    assert batch.x.sum(-1).eq(1).all() and batch.x.shape == (500, T, 2)
    assert batch.y.tolist() == [even_pairs_reference(row) for row in bits.tolist()]
    if T > 1:
        assert 0.4 < float(batch.y.float().mean()) < 0.6


@pytest.mark.parametrize(("T", "cycle"), [(1, 5), (2, 5), (9, 5), (40, 5), (333, 5), (17, 2), (17, 7)])
def test_cycle_navigation_against_numpy(T, cycle):
    batch = CycleNavigationTask(T, cycle_length=cycle).sample(500, gen(T))
    actions = batch.x.argmax(-1).numpy()
    assert set(np.unique(actions)) <= {0, 1, 2} and batch.x.shape == (500, T, 3)
    np.testing.assert_array_equal(batch.y.numpy(), cycle_reference(actions, cycle))


@pytest.mark.parametrize(("T", "modulus"), [(1, 5), (2, 5), (3, 5), (4, 5), (9, 5), (40, 5), (41, 5), (500, 5),
                                            (21, 2), (21, 3), (33, 11)])
def test_modular_arithmetic_against_python_evaluation(T, modulus):
    task = ModularArithmeticTask(T, modulus=modulus)
    batch = task.sample(400, gen(T + modulus))
    tokens = batch.x.argmax(-1)
    length = T if T % 2 else T - 1
    assert batch.x.shape == (400, length, modulus + 3) and batch.x.sum(-1).eq(1).all()
    assert (tokens[:, 0::2] < modulus).all() and (tokens[:, 1::2] >= modulus).all()
    assert batch.y.tolist() == [arithmetic_reference(row, modulus) for row in tokens.tolist()]
    if length >= 7:  # every operator is drawn
        assert set(tokens[:, 1::2].unique().tolist()) == {modulus, modulus + 1, modulus + 2}


def test_modular_arithmetic_paper_examples():
    from rnnbench.tasks.modular_arithmetic import evaluate

    # modulo 5: 1 + 2 * 3 = 2, 1 - 1 - 1 = 4, 0 * 1 + 4 * 3 - 2 = 0 (the reference's docstring)
    numbers = torch.tensor([[1, 2, 3, 0, 0], [1, 1, 1, 0, 0], [0, 1, 4, 3, 2]])
    plus, minus, times = 0, 1, 2
    operators = torch.tensor([[plus, times, plus, plus], [minus, minus, plus, plus], [times, plus, times, minus]])
    assert evaluate(numbers, operators, 5).tolist() == [2, 4, 0]


# ------------------------------------------------------------------------------------------- baselines


def enumerate_joint(task, sequences) -> np.ndarray:
    """The exact joint law of (last input, class) by enumerating every sequence (each equally likely)."""
    joint = np.zeros((task.input_size, task.output_size))
    count = 0
    for seq, label in sequences:
        joint[seq[-1], label] += 1
        count += 1
    return joint / count


def conditional_entropy(joint: np.ndarray) -> tuple[float, float]:
    loss = 0.0
    for a in range(joint.shape[0]):
        pa = joint[a].sum()
        for y in range(joint.shape[1]):
            if joint[a, y] > 0:
                loss -= joint[a, y] * math.log(joint[a, y] / pa)
    return loss, float(sum(joint[a].max() for a in range(joint.shape[0])))


def all_even_pairs(T):
    for bits in itertools.product(range(2), repeat=T):
        yield bits, even_pairs_reference(list(bits))


def all_cycles(T, cycle):
    for actions in itertools.product(range(3), repeat=T):
        yield actions, int(sum(a - 1 for a in actions) % cycle)


def all_expressions(T, modulus):
    n = (T - 1) // 2 if T % 2 else (T - 2) // 2
    for numbers in itertools.product(range(modulus), repeat=n + 1):
        for ops in itertools.product(range(3), repeat=n):
            tokens = [numbers[0]] + [t for pair in zip((modulus + o for o in ops), numbers[1:]) for t in pair]
            yield tokens, arithmetic_reference(tokens, modulus)


ENUMERATED = [
    *[(EvenPairsTask(T), lambda T=T: all_even_pairs(T)) for T in (1, 2, 3, 6)],
    *[(CycleNavigationTask(T, cycle_length=c), lambda T=T, c=c: all_cycles(T, c)) for T, c in
      ((1, 5), (2, 5), (3, 5), (6, 5), (7, 3), (5, 2))],
    *[(ModularArithmeticTask(T, modulus=m), lambda T=T, m=m: all_expressions(T, m)) for T, m in
      ((1, 5), (2, 5), (3, 5), (4, 5), (5, 5), (7, 5), (7, 3), (9, 2))],
]


@pytest.mark.parametrize(("task", "sequences"), ENUMERATED,
                         ids=[f"{type(t).__name__}-T{t.dependency_length}-{t.output_size}" for t, _ in ENUMERATED])
def test_baseline_equals_the_enumerated_memoryless_predictor(task, sequences):
    """H(class | last input) and the accuracy of the best guess from the last input, over every sequence."""
    loss, accuracy = conditional_entropy(enumerate_joint(task, sequences()))
    assert task.baseline() == pytest.approx({"loss": loss, "accuracy": accuracy}, abs=1e-12)


def predictor_logits(task, batch) -> torch.Tensor:
    """log P(class | last input) from the exact law the baseline comes from: the memoryless predictor."""
    from rnnbench.tasks.cycle_navigation import position_law
    from rnnbench.tasks.modular_arithmetic import answer_law

    last = batch.x[:, -1].argmax(-1)
    if isinstance(task, ModularArithmeticTask):
        joint = answer_law(task.pairs, task.modulus)
    elif isinstance(task, CycleNavigationTask):
        before = position_law(task.dependency_length - 1, task.cycle_length)
        joint = np.stack([np.roll(before, a - 1) for a in range(3)]) / 3
    else:
        joint = np.full((2, 2), 0.25)
    conditional = joint / joint.sum(axis=1, keepdims=True)
    return torch.tensor(np.log(np.clip(conditional, 1e-300, None)), dtype=torch.float64)[last]


@pytest.mark.parametrize("task", [EvenPairsTask(30), CycleNavigationTask(4), CycleNavigationTask(12),
                                  ModularArithmeticTask(5), ModularArithmeticTask(11), ModularArithmeticTask(41)],
                         ids=lambda t: f"{type(t).__name__}-T{t.dependency_length}")
def test_baseline_is_scored_by_the_memoryless_predictor_on_samples(task):
    """On sampled batches the memoryless predictor's cross-entropy and accuracy match the analytic baseline."""
    base = task.baseline()
    g = gen(7)
    losses, correct, n = [], 0, 0
    for _ in range(20):
        batch = task.sample(1000, g)
        logits = predictor_logits(task, batch)
        losses.append(torch.nn.functional.cross_entropy(logits, batch.y, reduction="none"))
        correct += int((logits.argmax(-1) == batch.y).sum())
        n += len(batch.y)
    loss = torch.cat(losses)
    assert abs(float(loss.mean()) - base["loss"]) < 4 * float(loss.std()) / math.sqrt(n) + 1e-9
    p = base["accuracy"]
    assert abs(correct / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9
    # the task's own metrics agree with the direct computation
    metrics = task.metrics(logits.float(), batch)
    assert float(metrics["loss"]) == pytest.approx(float(losses[-1].mean()), rel=1e-5)


def test_baselines_tend_to_chance():
    assert CycleNavigationTask(500).baseline() == pytest.approx({"loss": math.log(5), "accuracy": 0.2}, abs=1e-9)
    assert ModularArithmeticTask(501).baseline() == pytest.approx({"loss": math.log(5), "accuracy": 0.2}, abs=1e-9)
    assert EvenPairsTask(500).baseline() == pytest.approx({"loss": math.log(2), "accuracy": 0.5})
    # not quite chance at short lengths: a zero product leaves the value unchanged
    assert ModularArithmeticTask(5).baseline()["accuracy"] > 0.2 + 1e-3
