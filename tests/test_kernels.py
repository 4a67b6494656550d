"""The hand-written backward-through-time kernels (rnnbench.kernels) equal autograd through the step loop, in
float64, values and gradients: every LSTM flag combination, every Elman activation (modReLU included: expRNN's
orthogonal RNN), both GRUs, minGRU, minLSTM, IndRNN, sLSTM, the LRU and S6, both directions, one model and K stacked
models; every kernel but Elman's with its compiled time loops (rnnbench.native) and with the Python ones."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnnbench import native
from rnnbench.layers import unroll
from rnnbench.plugins.gru import GRUCell, GRUCho2014Cell
from rnnbench.plugins.indrnn import IndRNNCell, OrthogonalRNNCell
from rnnbench.plugins.lru import LRUCell
from rnnbench.plugins.lstm import ACTIVATIONS, LSTMCell
from rnnbench.plugins.mingru import MinGRUCell, MinLSTMCell
from rnnbench.plugins.rnn import RNNCell
from rnnbench.plugins.selective_ssm import S6Cell
from rnnbench.plugins.slstm import SLSTMCell

I, H, B, T = 3, 4, 5, 7
TOL = {"rtol": 1e-9, "atol": 1e-11}


@pytest.fixture(params=["compiled", "python"])
def loops(request, monkeypatch):
    """Which time loops the LSTM and GRU kernels run: None for Python's; for the compiled ones the list of their
    calls, which the test asserts is not empty (a silent fallback to Python fails it)."""
    calls: list[str] = []
    if request.param == "python":
        monkeypatch.setattr(native, "usable", lambda *tensors: None)
        return None
    else:
        if native.ops() is None:
            pytest.fail("the compiled time loops did not build (see the notice above)")
        real = native.usable
        monkeypatch.setattr(native, "usable", lambda *tensors: calls.append("compiled") or real(*tensors))
    return calls


def lstm_flags() -> list[dict]:
    combos = []
    for ig, fg, og, peep, coupled, fgr in itertools.product([True, False], repeat=6):
        if (coupled and not (ig and fg)) or (fgr and not (ig or fg or og)):
            continue  # refused by the cell (test_lstm_refuses_flags_without_meaning)
        for phi_in, phi_out in itertools.product(ACTIVATIONS, repeat=2):
            combos.append(dict(input_gate=ig, forget_gate=fg, output_gate=og, peepholes=peep, coupled_gates=coupled,
                               full_gate_recurrence=fgr, input_activation=phi_in, output_activation=phi_out))
    return combos


LSTM_FLAGS = lstm_flags()


def perturbed(cell: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random and away from its init (peepholes and gate recurrence non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.6)
    return cell


def values_and_grads(cell, run, x, up):
    xx = x.clone().requires_grad_(True)
    out = run(cell, xx)
    params = list(cell.parameters())
    grads = torch.autograd.grad((out * up).sum(), [xx, *params])
    return [out.detach(), *grads]


def step_path(reverse: bool):
    return lambda cell, x: torch.stack(unroll(cell, x, reverse=reverse)[0], dim=1)


def sequence_path(reverse: bool):
    def run(cell, x):
        if not reverse:
            return cell.forward_sequence(x)
        return cell.forward_sequence(x.flip(1)).flip(1)
    return run


def assert_paths_equal(cell, reverse=False, steps=T):
    cell = cell.double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, steps, I, generator=g, dtype=torch.float64)
    up = torch.randn(B, steps, H, generator=g, dtype=torch.float64)
    want = values_and_grads(cell, step_path(reverse), x, up)
    got = values_and_grads(cell, sequence_path(reverse), x, up)
    names = ["output", "dL/dx", *(f"dL/d{n}" for n, _ in cell.named_parameters())]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("flags", LSTM_FLAGS, ids=lambda f: "-".join(
    [k[:2] for k, v in f.items() if v is True] + [f"{f['input_activation'][:3]}{f['output_activation'][:3]}"]))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "backward"])
def test_lstm_kernel_equals_the_step_for_every_flag_combination(flags, reverse, loops):
    assert_paths_equal(perturbed(LSTMCell(I, H, **flags), seed=3), reverse=reverse)
    assert loops is None or loops


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("steps", [1, 2, T])
@pytest.mark.parametrize("make", [
    lambda: RNNCell(I, H, "tanh"), lambda: RNNCell(I, H, "relu"), lambda: RNNCell(I, H, "sigmoid"),
    lambda: GRUCell(I, H), lambda: GRUCho2014Cell(I, H), lambda: LSTMCell(I, H),
    lambda: LSTMCell(I, H, peepholes=True, full_gate_recurrence=True),
    lambda: LSTMCell(I, H, peepholes=True, coupled_gates=True, output_activation="identity"),
    lambda: MinGRUCell(I, H, scan="sequential"), lambda: MinLSTMCell(I, H, scan="sequential"),
    lambda: IndRNNCell(I, H, horizon=3), lambda: IndRNNCell(I, H, "tanh", horizon=3, clip_recurrent=False),
    lambda: SLSTMCell(I, H), lambda: SLSTMCell(I, H, forget_gate="exp"),
    lambda: LRUCell(I, H, scan="sequential"), lambda: LRUCell(I, H, state_size=3, output_activation="tanh"),
    lambda: S6Cell(I, H), lambda: S6Cell(I, H, d_state=3, dt_rank=2, scan="sequential"),
    lambda: OrthogonalRNNCell(I, H), lambda: OrthogonalRNNCell(I, H, "tanh"),
], ids=["rnn_tanh", "rnn_relu", "rnn_sigmoid", "gru", "gru_cho2014", "lstm", "lstm_fgr", "cifg_noaf", "mingru",
        "minlstm", "indrnn_relu", "indrnn_tanh", "slstm", "slstm_exp", "lru", "lru_n3_tanh", "s6", "s6_n3",
        "orthogonal_modrelu", "orthogonal_tanh"])
def test_kernels_in_both_directions_and_any_length(make, reverse, steps, loops):
    cell = perturbed(make(), seed=4)
    assert_paths_equal(cell, reverse=reverse, steps=steps)
    assert isinstance(cell, (RNNCell, OrthogonalRNNCell)) or loops is None or loops


def test_modrelu_kernel_where_units_are_exactly_zero():
    """modReLU is sign(z) ReLU(|z| + b): with a zero input and state (z = 0) and with b < 0 units are exactly 0,
    where its derivative is 0 (as autograd's through sign and abs); the kernel masks by h != 0."""
    cell = perturbed(OrthogonalRNNCell(I, H), seed=5).double()
    with torch.no_grad():
        cell.bias[:2] = -5.0  # these units stay 0 unless |z| > 5
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64)
    x[:, :3] = 0.0  # z = 0 at the first steps: h = sign(0) ReLU(b) = 0 for every unit
    up = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    want = values_and_grads(cell, step_path(False), x, up)
    got = values_and_grads(cell, sequence_path(False), x, up)
    assert (want[0][:, :3] == 0).all() and (want[0][..., :2] == 0).float().mean() > 0.5
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("make", [lambda: RNNCell(I, H, "sigmoid"), lambda: GRUCho2014Cell(I, H),
                                  lambda: LSTMCell(I, H, peepholes=True, full_gate_recurrence=True),
                                  lambda: MinLSTMCell(I, H), lambda: IndRNNCell(I, H, horizon=3),
                                  lambda: SLSTMCell(I, H), lambda: LRUCell(I, H), lambda: S6Cell(I, H, d_state=3),
                                  lambda: OrthogonalRNNCell(I, H)],
                         ids=["rnn_sigmoid", "gru_cho2014", "lstm_fgr", "minlstm", "indrnn", "slstm", "lru", "s6",
                              "orthogonal_rnn"])
def test_stacked_models_each_equal_their_own_run(make, loops):
    """K = 3 models with different weights through stacked_sequence: each member's outputs and gradients are
    those of its own model alone (no mixing across the K dimension)."""
    cells = [perturbed(make(), seed=10 + k).double() for k in range(3)]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, T, B, I, generator=g, dtype=torch.float64)
    up = torch.randn(3, T, B, H, generator=g, dtype=torch.float64)
    names = [n for n, _ in cells[0].named_parameters()]
    stacked = {n: torch.stack([dict(c.named_parameters())[n].detach() for c in cells]).requires_grad_(True)
               for n in names}
    out = cells[0].stacked_sequence(stacked, x)
    grads = torch.autograd.grad((out * up).sum(), list(stacked.values()))
    for k, cell in enumerate(cells):
        want = values_and_grads(cell, step_path(False), x[k].transpose(0, 1), up[k].transpose(0, 1))
        torch.testing.assert_close(out[k].detach().transpose(0, 1), want[0], **TOL)
        for name, grad, expected in zip(names, grads, want[2:]):
            torch.testing.assert_close(grad[k], expected, **TOL, msg=lambda m: f"member {k} {name}: {m}")
    assert isinstance(cells[0], (RNNCell, OrthogonalRNNCell)) or loops is None or loops


def test_lstm_refuses_flags_without_meaning():
    from rnnbench import ConfigError

    with pytest.raises(ConfigError, match="cell.full_gate_recurrence"):
        LSTMCell(I, H, input_gate=False, forget_gate=False, output_gate=False, full_gate_recurrence=True)
    with pytest.raises(ConfigError, match="cell.coupled_gates"):
        LSTMCell(I, H, input_gate=False, coupled_gates=True)


def test_no_kernel_under_vmap():
    """Under torch.func.vmap (the generic seed-parallel path) the cell gives no whole-sequence path, so the
    layer runs the step loop, which vmap can batch."""
    cell = LSTMCell(I, H, peepholes=True)
    seen = []
    torch.func.vmap(lambda x: seen.append(cell.forward_sequence(x)) or x.sum())(torch.zeros(2, B, T, I))
    assert seen == [None] and cell.forward_sequence(torch.zeros(B, T, I)) is not None


def test_only_the_lstm_keeps_torchs_module_on_the_cpu(registry):
    """torch's CPU GRU and RNN are slower than rnnbench's kernels (benchmarks/results/cells-kernels.md): on the
    CPU those models are the loop encoder on the kernel; the LSTM (oneDNN), and every mode on CUDA, keep
    torch's module."""
    from rnnbench.model import uses_fused

    for name in ("gru", "rnn_tanh", "rnn_relu", "irnn"):
        assert not uses_fused(registry.cell(name), True, "cpu") and uses_fused(registry.cell(name), True, "cuda")
    assert uses_fused(registry.cell("lstm"), True, "cpu") and uses_fused(registry.cell("lstm"), True, "cuda")
    assert not uses_fused(registry.cell("lstm"), False, "cuda") and not uses_fused(registry.cell("peephole_lstm"),
                                                                                   True, "cuda")
