"""The NumPy reference forward passes equal the torch cells, and hand-derived BPTT equals torch autograd."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from rnnbench.manager import get_registry
from rnnbench.reference import BPTTResult, gru_bptt, lstm_bptt, rnn_bptt

B, T, I, H = 3, 7, 4, 5
RTOL, ATOL = 1e-8, 1e-11



def make_cell(name: str) -> torch.nn.Module:
    """The registered cell in float64, every parameter re-drawn (so biases and peepholes are generic)."""
    torch.manual_seed(zlib.crc32(name.encode()))
    cell = get_registry().cell(name).cell(I, H).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.8, 0.8)
    return cell


def autograd_run(cell, x: torch.Tensor, state, upstream: torch.Tensor):
    """Unroll from ``state`` and back-propagate ``sum(outputs * upstream)`` with autograd."""
    outputs = []
    for x_t in x.unbind(1):
        h, state = cell(x_t, state)
        outputs.append(h)
    out = torch.stack(outputs, dim=1)
    (out * upstream).sum().backward()
    return out, state


def compare(name: str, ref: BPTTResult, cell, out, state, x, state0) -> None:
    np.testing.assert_allclose(ref.outputs, out.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{name}: outputs")
    final = state if isinstance(state, tuple) else (state,)
    for k, (a, b) in enumerate(zip(ref.state, final)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{name}: state[{k}]")
    params = dict(cell.named_parameters())
    assert set(ref.grads) == set(params), f"{name}: reference grads {sorted(ref.grads)} vs {sorted(params)}"
    for pname, p in params.items():
        np.testing.assert_allclose(ref.grads[pname], p.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{name}: d{pname}")
    np.testing.assert_allclose(ref.dx, x.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{name}: dx")
    for k, (a, s0) in enumerate(zip(ref.dstate, state0)):
        np.testing.assert_allclose(a, s0.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{name}: dstate0[{k}]")


def inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    h0 = (0.5 * torch.randn(B, H, generator=g, dtype=torch.float64)).requires_grad_()
    c0 = (0.5 * torch.randn(B, H, generator=g, dtype=torch.float64)).requires_grad_()
    return x, upstream, h0, c0


def weights(cell) -> dict[str, np.ndarray]:
    return {n: p.detach().numpy() for n, p in cell.named_parameters()}


@pytest.mark.parametrize("name,nonlinearity", [("rnn_tanh", "tanh"), ("rnn_relu", "relu"), ("rnn_sigmoid", "sigmoid")])
def test_rnn_reference(name: str, nonlinearity: str) -> None:
    cell = make_cell(name)
    x, upstream, h0, _ = inputs(1)
    out, state = autograd_run(cell, x, h0, upstream)
    ref = rnn_bptt(x.detach().numpy(), **weights(cell), upstream=upstream.numpy(), nonlinearity=nonlinearity,
                   h0=h0.detach().numpy())
    compare(name, ref, cell, out, state, x, (h0,))


@pytest.mark.parametrize("name", ["lstm", "lstm1997", "peephole_lstm"])
def test_lstm_reference(name: str) -> None:
    cell = make_cell(name)
    x, upstream, h0, c0 = inputs(2)
    out, state = autograd_run(cell, x, (h0, c0), upstream)
    ref = lstm_bptt(x.detach().numpy(), **weights(cell), upstream=upstream.numpy(), forget_gate=cell.forget_gate,
                    state0=(h0.detach().numpy(), c0.detach().numpy()))
    compare(name, ref, cell, out, state, x, (h0, c0))


def test_gru_reference() -> None:
    cell = make_cell("gru")
    x, upstream, h0, _ = inputs(3)
    out, state = autograd_run(cell, x, h0, upstream)
    ref = gru_bptt(x.detach().numpy(), **weights(cell), upstream=upstream.numpy(), h0=h0.detach().numpy())
    compare("gru", ref, cell, out, state, x, (h0,))


def test_reference_from_zero_state_matches_torch_modules() -> None:
    """Against torch's own modules too (not only our cells): nn.LSTM and nn.GRU from a zero state."""
    torch.manual_seed(0)
    x, upstream, _, _ = inputs(4)
    pairs = ((torch.nn.LSTM(I, H, batch_first=True), lstm_bptt), (torch.nn.GRU(I, H, batch_first=True), gru_bptt))
    for module, fn in pairs:
        module = module.double()
        out, _ = module(x)
        (out * upstream).sum().backward()
        w = {n: getattr(module, n + "_l0").detach().numpy() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        ref = fn(x.detach().numpy(), **w, upstream=upstream.numpy())
        np.testing.assert_allclose(ref.outputs, out.detach().numpy(), rtol=RTOL, atol=ATOL)
        for n in w:
            np.testing.assert_allclose(ref.grads[n], getattr(module, n + "_l0").grad.numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(ref.dx, x.grad.numpy(), rtol=RTOL, atol=ATOL)
        x.grad = None


def test_lstm1997_constant_error_carousel_in_reference() -> None:
    """No forget gate, input gate shut, no recurrent matrix: c_T = c_0, and dL/dc_0 is exactly the error that
    reaches c_T from h_T = o * tanh(c_T), carried back T steps undiminished (the constant error carousel)."""
    cell = make_cell("lstm1997")
    w = weights(cell)
    w["weight_hh"] = np.zeros_like(w["weight_hh"])
    w["bias_ih"] = w["bias_ih"].copy()
    w["bias_ih"][:H] = -60.0  # input gate shut: i ~ 1e-26
    x = np.zeros((1, T, I))
    upstream = np.zeros((1, T, H))
    upstream[0, -1] = np.linspace(-1, 1, H)
    c0 = np.linspace(-1, 1, H)[None] * 0.7
    ref = lstm_bptt(x, **w, upstream=upstream, forget_gate=False, state0=(np.zeros((1, H)), c0))
    np.testing.assert_allclose(ref.state[1], c0, rtol=1e-15)
    o = 1 / (1 + np.exp(-(w["bias_ih"][2 * H :] + w["bias_hh"][2 * H :])))
    dc_T = upstream[0, -1] * o * (1 - np.tanh(c0[0]) ** 2)
    np.testing.assert_allclose(ref.dstate[1][0], dc_T, rtol=1e-12)
