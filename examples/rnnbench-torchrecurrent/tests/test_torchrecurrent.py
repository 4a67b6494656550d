import numpy as np
import pytest
import torch

from rnnbench.layers import unroll
from rnnbench.manager import get_registry
from rnnbench.testing import check_cell
from rnnbench_torchrecurrent import CELLS

REGISTRY = get_registry()


@pytest.mark.parametrize("name", sorted(CELLS))
def test_each_cell_is_registered_and_passes_the_contract(name):
    spec = REGISTRY.cells[name]
    assert REGISTRY.provenance("cell", name).startswith("rnnbench-torchrecurrent==")
    check_cell(spec)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_the_adapter_steps_the_wrapped_cell_and_carries_its_whole_state(name):
    torch.manual_seed(0)
    cell = REGISTRY.cells[name].cell(3, 5).double()
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    outputs, _ = unroll(cell, x)
    state = cell.init_state(4, dtype=torch.float64)
    for t in range(7):  # the package's own loop: cell(x_t, state) with its own state layout
        state = cell.inner(x[:, t], state)
        h = state[0] if isinstance(state, tuple) else state
        torch.testing.assert_close(outputs[t], h, rtol=0, atol=0)


def test_janet_against_its_paper_equations_in_numpy():
    """van der Westhuizen & Lasenby 2018: s = W_f [x, h] + b_f, c' = sigmoid(s) c + (1 - sigmoid(s - beta))
    tanh(W_c [x, h] + b_c), h = c."""
    torch.manual_seed(1)
    cell = REGISTRY.cells["tr_janet"].cell(3, 4).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.5, 0.5)
    p = {k.removeprefix("inner."): v.detach().numpy() for k, v in cell.named_parameters()}
    xs = np.random.default_rng(0).normal(size=(6, 2, 3))
    h = c = np.zeros((2, 4))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    out, _ = unroll(cell, torch.from_numpy(xs.transpose(1, 0, 2)).contiguous())
    for t in range(6):
        z = xs[t] @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
        s, cand = z[:, :4], z[:, 4:]
        c = sig(s) * c + (1 - sig(s - p["beta"])) * np.tanh(cand)
        h = c
        np.testing.assert_allclose(out[t].detach().numpy(), h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_spectral_diagnostics_find_the_recurrent_matrices(name):
    cell = REGISTRY.cells[name].cell(3, 5)
    found = cell.recurrent_weights()
    assert "inner.weight_hh" in found and found["inner.weight_hh"] is cell.inner.weight_hh
