import torch

from rnnbench.testing import check_cell
from rnnbench_mgu import MGUCell


def test_mgu_passes_the_cell_contract():
    check_cell(MGUCell)


def test_mgu_equations():
    torch.manual_seed(0)
    cell = MGUCell(3, 4)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    f = torch.sigmoid(cell.forget(torch.cat([x, h], -1)))
    expected = (1 - f) * h + f * torch.tanh(cell.candidate(torch.cat([x, f * h], -1)))
    torch.testing.assert_close(cell(x, h)[0], expected)


def test_mgu_recurrent_weights_are_the_state_columns():
    cell = MGUCell(3, 4)
    found = cell.recurrent_weights()
    assert sorted(found) == ["candidate.weight_h", "forget.weight_h"]
    assert torch.equal(found["forget.weight_h"], cell.forget.weight[:, 3:])
