"""Golden samples: every random draw of a tiny batch is scripted, and the batch must equal a hand-written one.

The script also pins what each draw asks for (range and shape: the definition's position ranges) and that every
draw goes through the generator passed in.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.nn import functional as F

from rnnbench.tasks.adding import AddingTask
from rnnbench.tasks.associative_recall import AssociativeRecallTask
from rnnbench.tasks.copy import CopyTask
from rnnbench.tasks.cycle_navigation import CycleNavigationTask
from rnnbench.tasks.even_pairs import EvenPairsTask
from rnnbench.tasks.modular_arithmetic import ModularArithmeticTask
from rnnbench.tasks.parity import ParityTask
from rnnbench.tasks.selective_copy import SelectiveCopyTask
from rnnbench.tasks.temporal_order import TemporalOrderTask
from rnnbench.tasks.variable_copy import VariableCopyTask


class Script:
    """Stands in for torch's random functions: each call must match the next scripted draw."""

    def __init__(self, generator: torch.Generator, draws: list[tuple]) -> None:
        self.generator, self.draws = generator, list(draws)

    def _next(self, kind: str, generator: torch.Generator | None) -> tuple:
        assert generator is self.generator, f"{kind} drawn without the task's generator"
        assert self.draws, f"unexpected extra draw: {kind}"
        draw = self.draws.pop(0)
        assert draw[0] == kind, (draw[0], kind)
        return draw

    def randint(self, low, high, size, *, generator=None, device=None, **_):
        _, want_low, want_high, value = self._next("randint", generator)
        assert (low, high) == (want_low, want_high), f"randint range {(low, high)}, expected {(want_low, want_high)}"
        value = torch.as_tensor(value, dtype=torch.long)
        assert tuple(value.shape) == tuple(size)
        assert ((value >= low) & (value < high)).all()
        return value.clone()

    def rand(self, *size, generator=None, device=None, **_):
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        _, value = self._next("rand", generator)
        value = torch.as_tensor(value, dtype=torch.float32)
        assert tuple(value.shape) == tuple(size)
        return value.clone()

    def multinomial(self, weights, n, replacement=False, *, generator=None, **_):
        _, want_weights, value = self._next("multinomial", generator)
        assert not replacement
        torch.testing.assert_close(weights[0].double(), torch.as_tensor(want_weights, dtype=torch.float64))
        value = torch.as_tensor(value, dtype=torch.long)
        assert value.shape == (weights.shape[0], n)
        return value.clone()


@pytest.fixture
def scripted(monkeypatch) -> Iterator:
    scripts: list[Script] = []

    def _scripted(draws: list[tuple]) -> torch.Generator:
        generator = torch.Generator().manual_seed(0)
        script = Script(generator, draws)
        for name in ("randint", "rand", "multinomial"):
            monkeypatch.setattr(torch, name, getattr(script, name))
        scripts.append(script)
        return generator

    yield _scripted
    for script in scripts:
        assert not script.draws, f"draws left unused: {script.draws}"


def onehot(tokens: list[list[int]], size: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(tokens), size).float()


# ------------------------------------------------------------------------------------------------- adding

V4 = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]


def test_adding_arjovsky2016(scripted):
    g = scripted([("rand", V4), ("randint", 0, 2, [1, 0]), ("randint", 2, 4, [3, 2])])
    batch = AddingTask(4, "arjovsky2016").sample(2, g)
    markers = torch.tensor([[0.0, 1, 0, 1], [1, 0, 1, 0]])
    torch.testing.assert_close(batch.x, torch.stack([torch.tensor(V4), markers], -1))
    torch.testing.assert_close(batch.y, torch.tensor([[0.6], [1.2]]))


def test_adding_tcn2018(scripted):
    # second position: j uniform in [0, T - 1), shifted past the first: j = 2 -> 3 (first 2), j = 0 -> 1 (first 0)
    g = scripted([("rand", V4), ("randint", 0, 4, [2, 0]), ("randint", 0, 3, [2, 0])])
    batch = AddingTask(4, "tcn2018").sample(2, g)
    markers = torch.tensor([[0.0, 0, 1, 1], [1, 1, 0, 0]])
    torch.testing.assert_close(batch.x, torch.stack([torch.tensor(V4), markers], -1))
    torch.testing.assert_close(batch.y, torch.tensor([[0.7], [1.1]]))


def test_adding_pascanu2013(scripted):
    values = [[i / 100 for i in range(21)], [i / 50 for i in range(21)]]
    g = scripted([
        ("randint", 20, 22, [21]),  # length in [T, T + int(0.1 T)) = [20, 22)
        ("rand", values),
        ("randint", 0, 2, [1, 0]),  # p0 in [0, int(0.1 L)) = [0, 2)
        ("randint", 0, 8, [0, 7]),  # p1 - int(0.1 L) in [0, int(0.4 L)) = [0, 8)
    ])
    batch = AddingTask(20, "pascanu2013").sample(2, g)
    markers = torch.zeros(2, 21)
    markers[0, [1, 2]] = 1
    markers[1, [0, 9]] = 1
    torch.testing.assert_close(batch.x, torch.stack([torch.tensor(values), markers], -1))
    torch.testing.assert_close(batch.y, torch.tensor([[(0.01 + 0.02) / 2], [(0.0 + 0.18) / 2]]))


def test_adding_hochreiter1997(scripted):
    u = [[(i + 1) / 24 for i in range(23)], [1 - (i + 1) / 24 for i in range(23)]]
    g = scripted([
        ("randint", 22, 25, [23]),  # length in [T, T + T/10] = [22, 24]
        ("rand", u),  # values 2u - 1 ~ U[-1, 1]
        ("randint", 0, 10, [0, 5]),  # X1 among the first 10 steps
        ("randint", 0, 10, [4, 5]),  # X2 among the first T/2 - 1 = 10 unmarked steps: 4 -> 5, 5 -> 6
    ])
    batch = AddingTask(22, "hochreiter1997").sample(2, g)
    values = torch.tensor(u) * 2 - 1
    values[0, 0] = 0.0  # the first step is marked: X1 = 0
    markers = torch.zeros(2, 23)
    markers[:, 22] = -1
    markers[1, 0] = -1
    markers[0, [0, 5]] = 1
    markers[1, [5, 6]] = 1
    torch.testing.assert_close(batch.x, torch.stack([values, markers], -1))
    expected = torch.tensor([[0.5 + (0 + values[0, 5]) / 4], [0.5 + (values[1, 5] + values[1, 6]) / 4]])
    torch.testing.assert_close(batch.y, expected)


# --------------------------------------------------------------------------------------------- copy family


@pytest.mark.parametrize("variant", ["arjovsky2016", "tcn2018"])
def test_copy(scripted, variant):
    g = scripted([("randint", 1, 4, [[1, 3], [2, 2]])])
    batch = CopyTask(dependency_length=3, variant=variant, alphabet=3, symbols=2).sample(2, g)
    d = 4
    tail = [d, d, d] if variant == "tcn2018" else [d, 0, 0]
    assert torch.equal(batch.x, onehot([[1, 3, 0, 0, *tail], [2, 2, 0, 0, *tail]], 5))
    assert batch.y.tolist() == [[0, 0, 0, 0, 0, 1, 3], [0, 0, 0, 0, 0, 2, 2]]
    assert batch.mask.tolist() == [[False] * 5 + [True] * 2] * 2


def test_variable_copy(scripted):
    g = scripted([("randint", 1, 4, [[1, 3], [2, 2]]), ("randint", 1, 4, [[1], [3]])])
    batch = VariableCopyTask(dependency_length=3, min_delay=1, alphabet=3, symbols=2).sample(2, g)
    assert torch.equal(batch.x, onehot([[1, 3, 4, 0, 0, 0, 0], [2, 2, 0, 0, 4, 0, 0]], 5))
    assert batch.y.tolist() == [[0, 0, 0, 1, 3, 0, 0], [0, 0, 0, 0, 0, 2, 2]]
    assert batch.mask.int().tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1]]
    assert batch.extras["delay"].tolist() == [1, 3]


def test_variable_copy_at_the_longest_delay_is_copy():
    variable = VariableCopyTask(dependency_length=7, min_delay=7, alphabet=5, symbols=3)
    a = variable.sample(16, torch.Generator().manual_seed(4))
    b = CopyTask(dependency_length=7, alphabet=5, symbols=3).sample(16, torch.Generator().manual_seed(4))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)


def test_selective_copy(scripted):
    g = scripted([
        ("randint", 1, 4, [[3, 1], [2, 2]]),
        ("rand", [[0.9, 0.1, 0.5, 0.2], [0.3, 0.4, 0.1, 0.8]]),  # the 2 smallest keys: positions {1, 3}, {0, 2}
    ])
    batch = SelectiveCopyTask(dependency_length=4, alphabet=3, symbols=2).sample(2, g)
    assert torch.equal(batch.x, onehot([[0, 3, 0, 1, 4, 4], [2, 0, 2, 0, 4, 4]], 5))
    assert batch.y.tolist() == [[0, 0, 0, 0, 3, 1], [0, 0, 0, 0, 2, 2]]
    assert batch.mask.int().tolist() == [[0, 0, 0, 0, 1, 1]] * 2


# -------------------------------------------------------------------------------------------- the others

X, Y, A, B, C, D, E, END = range(8)


def test_temporal_order_2bit(scripted):
    distractors = [[A, B, C, D, A, B, C, D, A, B], [D, D, C, C, B, B, A, A, D, D]]
    g = scripted([
        ("randint", 2, 6, distractors),
        ("randint", 0, 1, [0, 0]), ("randint", 0, 2, [0, 1]),  # t1 in [int(0.1 T), + int(0.1 T)) = {1}
        ("randint", 0, 1, [0, 0]), ("randint", 0, 2, [1, 1]),  # t2 in {5}
    ])
    batch = TemporalOrderTask(10, "2bit").sample(2, g)
    assert torch.equal(batch.x, onehot([[E, X, C, D, A, Y, C, D, A, END], [E, Y, C, C, B, Y, A, A, D, END]], 8))
    assert batch.y.tolist() == [1, 3]  # XY, YY


def test_temporal_order_3bit(scripted):
    g = scripted([
        ("randint", 2, 6, [[A] * 20, [B] * 20]),
        ("randint", 0, 2, [1, 0]), ("randint", 0, 2, [1, 0]),  # t1 in [2, 4)
        ("randint", 0, 2, [0, 1]), ("randint", 0, 2, [0, 1]),  # t2 in [6, 8)
        ("randint", 0, 2, [1, 1]), ("randint", 0, 2, [1, 0]),  # t3 in [12, 14)
    ])
    batch = TemporalOrderTask(20, "3bit").sample(2, g)
    row0 = [E] + [A] * 18 + [END]
    row0[3], row0[6], row0[13] = Y, X, Y
    row1 = [E] + [B] * 18 + [END]
    row1[2], row1[7], row1[13] = X, Y, X
    assert torch.equal(batch.x, onehot([row0, row1], 8))
    assert batch.y.tolist() == [0b101, 0b010]


def test_associative_recall(scripted):
    a = 0.01
    g = scripted([
        ("rand", [[0.5, 0.1, 0.9], [0.2, 0.3, 0.1]]),  # keys: 1 + argsort -> [2, 1], [3, 1]
        ("rand", [[0.4, 0.3, 0.2, 0.1], [0.1, 0.9, 0.8, 0.2]]),  # values: 4 + argsort -> [7, 6], [4, 7]
        ("multinomial", [a * g_ ** (a - 1) for g_ in (1, 2, 3)], [[2, 0], [1, 2]]),  # gaps, zoology's power law
        ("randint", 0, 8, [[5, 5, 5, 5, 5, 5], [6, 6, 6, 6, 6, 6]]),  # non-query tokens
    ])
    task = AssociativeRecallTask(dependency_length=6, vocab_size=8, num_kv_pairs=2)
    batch = task.sample(2, g)
    tokens = [[2, 7, 1, 6, 1, 5, 5, 5, 2, 5], [3, 4, 1, 7, 6, 6, 3, 6, 1, 6]]
    assert torch.equal(batch.x, onehot(tokens, 8))
    assert batch.y.tolist() == [[0, 0, 0, 0, 6, 0, 0, 0, 7, 0], [0, 0, 0, 0, 0, 0, 4, 0, 7, 0]]
    assert batch.mask.int().tolist() == [[0, 0, 0, 0, 1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1, 0, 1, 0]]


def test_associative_recall_without_noise(scripted):
    g = scripted([
        ("rand", [[0.5, 0.1, 0.9]]),
        ("rand", [[0.4, 0.3, 0.2, 0.1]]),
        ("multinomial", [1.0, 1.0], [[1]]),
    ])
    task = AssociativeRecallTask(dependency_length=4, vocab_size=8, num_kv_pairs=1, power_a=1.0,
                                 random_non_queries=False)
    batch = task.sample(1, g)
    assert torch.equal(batch.x, onehot([[2, 7, 0, 0, 2, 0]], 8))
    assert batch.y.tolist() == [[0, 0, 0, 0, 7, 0]]


@pytest.mark.parametrize(("variant", "expected"), [("final", [1, 0]), ("running", [[1, 1, 0, 1], [0, 0, 1, 0]])])
def test_parity(scripted, variant, expected):
    g = scripted([("randint", 0, 2, [[1, 0, 1, 1], [0, 0, 1, 1]])])
    batch = ParityTask(4, variant).sample(2, g)
    assert torch.equal(batch.x, onehot([[1, 0, 1, 1], [0, 0, 1, 1]], 2))
    assert batch.y.tolist() == expected


def test_even_pairs(scripted):
    # 0101001: 01 three times, 10 twice, five pairs (the paper's example): odd, class 1; 1110001: one each: 0
    g = scripted([("randint", 0, 2, [[0, 1, 0, 1, 0, 0, 1], [1, 1, 1, 0, 0, 0, 1]])])
    batch = EvenPairsTask(7).sample(2, g)
    assert torch.equal(batch.x, onehot([[0, 1, 0, 1, 0, 0, 1], [1, 1, 1, 0, 0, 0, 1]], 2))
    assert batch.y.tolist() == [1, 0]


def test_cycle_navigation(scripted):
    # inputs 0, 1, 2 move -1, 0, +1: 1 -1 0 -1 -1 ends at -2 = class 3 (the paper's example); 1 1 1 -1 0 at 2
    g = scripted([("randint", 0, 3, [[2, 0, 1, 0, 0], [2, 2, 2, 0, 1]])])
    batch = CycleNavigationTask(5).sample(2, g)
    assert torch.equal(batch.x, onehot([[2, 0, 1, 0, 0], [2, 2, 2, 0, 1]], 3))
    assert batch.y.tolist() == [3, 2]


def test_modular_arithmetic(scripted):
    # 0 * 1 + 4 * 3 - 2 = 10 = 0 (mod 5, the paper's example); 1 - 1 - 1 - 0 * 4 = -1 = 4; tokens 5 6 7 = + - *
    g = scripted([("randint", 0, 5, [[0, 1, 4, 3, 2], [1, 1, 1, 0, 4]]), ("randint", 0, 3, [[2, 0, 2, 1], [1, 1, 1, 2]])])
    batch = ModularArithmeticTask(9).sample(2, g)
    assert torch.equal(batch.x, onehot([[0, 7, 1, 5, 4, 7, 3, 6, 2], [1, 6, 1, 6, 1, 6, 0, 7, 4]], 8))
    assert batch.y.tolist() == [0, 4]


def test_modular_arithmetic_even_length_drops_a_symbol(scripted):
    # as the reference generator: an even length T gives an expression of T - 1 symbols: 3 * 4 = 12 = 2
    g = scripted([("randint", 0, 5, [[3, 4]]), ("randint", 0, 3, [[2]])])
    batch = ModularArithmeticTask(4).sample(1, g)
    assert torch.equal(batch.x, onehot([[3, 7, 4]], 8))
    assert batch.y.tolist() == [2]


# ---------------------------------------------------------------------------------- scoring, by hand


def test_copy_scores_by_hand():
    task = CopyTask(dependency_length=2, alphabet=3, symbols=2)
    batch = task.sample(2, torch.Generator().manual_seed(0))
    guess = batch.y.clone()
    guess[0, -1] = 0 if batch.y[0, -1] != 0 else 1  # one recall error in sequence 0
    guess[1, 0] = 3  # an error outside the recall positions does not count for accuracy
    output = F.one_hot(guess, task.output_size).float() * 20
    metrics = task.metrics(output, batch)
    assert float(metrics["accuracy"]) == pytest.approx(3 / 4)
    assert float(metrics["exact"]) == pytest.approx(1 / 2)
    assert float(metrics["accuracy_all"]) == pytest.approx(10 / 12)


def test_adding_accuracy_by_hand():
    task = AddingTask(4, "arjovsky2016", tolerance=0.04)
    batch = task.sample(4, torch.Generator().manual_seed(0))
    output = batch.y + torch.tensor([[0.0], [0.079], [0.081], [-0.2]])  # |error| / 2 < 0.04 for the first two
    metrics = task.metrics(output, batch)
    assert float(metrics["accuracy"]) == pytest.approx(0.5)
    assert float(metrics["mse"]) == pytest.approx((0.079**2 + 0.081**2 + 0.04) / 4, rel=1e-4)
