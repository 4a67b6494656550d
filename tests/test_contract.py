"""The contract kit (rnnbench.testing) over every registered cell and task, and on deliberately broken ones."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from rnnbench import RecurrentCell
from rnnbench.manager import get_registry
from rnnbench.registry import CellSpec
from rnnbench.testing import check_cell, check_task

REGISTRY = get_registry()



@pytest.mark.parametrize("name", sorted(REGISTRY.cells))
def test_cell_contract(name: str) -> None:
    check_cell(REGISTRY.cells[name])


@pytest.mark.parametrize("name", sorted(REGISTRY.tasks))
def test_task_contract(name: str) -> None:
    check_task(REGISTRY.tasks[name])


class _Elman(RecurrentCell):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.randn(hidden_size, input_size) * 0.3)
        self.weight_hh = nn.Parameter(torch.randn(hidden_size, hidden_size) * 0.3)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.tanh(x @ self.weight_ih.t() + h @ self.weight_hh.t())
        return h, h


class DeadParameterCell(_Elman):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.unused = nn.Parameter(torch.zeros(hidden_size))


class WrongShapeCell(_Elman):
    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h, _ = super().forward(x, h)
        return h[:, :-1], h


class StateTypeCell(_Elman):
    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = h[0] if isinstance(h, tuple) else h
        h, _ = super().forward(x, h)
        return h, (h,)  # init_state gives a Tensor


class BatchMixingCell(_Elman):
    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h, _ = super().forward(x, h)
        h = h + h.mean(dim=0, keepdim=True)
        return h, h


class ExplodingCell(_Elman):
    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = 3.0 * h + h @ self.weight_hh.t() + x @ self.weight_ih.t() + 1.0
        return h, h


def test_a_good_cell_passes() -> None:
    check_cell(_Elman)


@pytest.mark.parametrize(
    "cell,message",
    [
        (DeadParameterCell, "no gradient reaches parameter(s) unused"),
        (WrongShapeCell, "expected (B, H) = (4, 5)"),
        (StateTypeCell, "init_state gives Tensor(4, 5) (they must match)"),
        (BatchMixingCell, "batch rows interact"),
        (ExplodingCell, "NaN or Inf on a 200-step sequence"),
    ],
)
def test_a_broken_cell_fails_with_its_name(cell: type, message: str) -> None:
    with pytest.raises(AssertionError) as info:
        check_cell(cell)
    assert f"cell {cell.__qualname__!r}" in str(info.value)
    assert message in str(info.value)


def test_a_broken_spec_is_named_by_its_registered_name() -> None:
    spec = CellSpec(name="broken_lstm", cell=WrongShapeCell)
    with pytest.raises(AssertionError, match="cell 'broken_lstm': forward returned h_t"):
        check_cell(spec)


def test_a_spec_that_wrongly_declares_fused_fails() -> None:
    spec = CellSpec(name="not_an_lstm", cell=REGISTRY.cells["peephole_lstm"].cell, fused="LSTM")
    with pytest.raises(AssertionError, match="cell 'not_an_lstm': declares fused='LSTM' but has parameters"):
        check_cell(spec)
    spec = CellSpec(name="not_tanh", cell=REGISTRY.cells["rnn_sigmoid"].cell, fused="RNN_TANH")
    with pytest.raises(AssertionError, match="cell 'not_tanh': declares fused='RNN_TANH' but the loop and"):
        check_cell(spec)


def test_check_cell_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check_cell(_Elman)
    assert torch.equal(torch.rand(3), expected)


def test_a_task_on_the_global_rng_fails() -> None:
    adding = REGISTRY.tasks["adding"].task(dependency_length=10)

    class GlobalRNGAdding(type(adding)):
        def sample(self, batch_size, generator):
            batch = super().sample(batch_size, generator)
            batch.x = batch.x + torch.rand(batch.x.shape)  # noise from the global RNG
            return batch

    task = GlobalRNGAdding(dependency_length=10)
    task.name = "noisy_adding"
    with pytest.raises(AssertionError, match="task 'noisy_adding': .*draw every random number from the generator"):
        check_task(task)


def test_a_task_with_bad_accuracy_fails() -> None:
    adding = REGISTRY.tasks["adding"].task(dependency_length=10)

    class PercentAdding(type(adding)):
        def metrics(self, output, batch):
            metrics = super().metrics(output, batch)
            return {**metrics, "accuracy": metrics["accuracy"] * 100 + 1.5}

    with pytest.raises(AssertionError, match=r"task 'PercentAdding': metrics\['accuracy'\] = .* expected a value"):
        check_task(PercentAdding(dependency_length=10))


class _ConcatCell(RecurrentCell):
    """Gates over ``[x, h]`` with a separately named diagonal recurrence: no parameter is named weight_hh."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.gate = nn.Linear(input_size + hidden_size, hidden_size)
        self.read_in = nn.Linear(input_size, hidden_size)
        self.decay = nn.Parameter(torch.rand(hidden_size))

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.sigmoid(self.gate(torch.cat([x, h], -1)))
        h = g * self.decay * h + (1 - g) * torch.tanh(self.read_in(x))
        return h, h


class _HiddenRecurrenceCell(_Elman):
    """The recurrence goes through exp(A), a parameter both a zero input and a zero state reach: unseen."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        del self.weight_hh
        self.A = nn.Parameter(torch.randn(hidden_size) * 0.1)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.exp(-self.A.exp()) * h + torch.tanh(x @ self.weight_ih.t() + self.A)
        return h, h


def test_default_recurrent_weights_find_the_matrices_applied_to_the_state() -> None:
    torch.manual_seed(0)
    cell = _ConcatCell(3, 4)
    state = torch.random.get_rng_state()
    found = cell.recurrent_weights()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert sorted(found) == ["decay", "gate.weight_h"]
    assert found["gate.weight_h"].shape == (4, 4) and torch.equal(found["gate.weight_h"], cell.gate.weight[:, 3:])
    assert found["decay"] is cell.decay


def test_default_recurrent_weights_prefer_weight_hh_names() -> None:
    assert list(_Elman(3, 4).recurrent_weights()) == ["weight_hh"]


def test_the_kit_warns_when_no_recurrent_weight_is_found() -> None:
    with pytest.warns(UserWarning, match="no diag/sigma_max or diag/spectral_radius"):
        check_cell(_HiddenRecurrenceCell)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_cell(_ConcatCell)
