r"""Elman RNN: forward pass and backpropagation through time.

Forward, for t = 1..T (``h_0`` given, zeros by default):

.. math::
    a_t = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}, \qquad h_t = \phi(a_t)

Backward. ``upstream[t]`` is the direct dL/dh_t; the recurrence adds what flows back from step t+1:

.. math::
    \delta h_t &= \mathrm{upstream}_t + W_{hh}^\top \delta a_{t+1} \quad (\delta a_{T+1} = 0) \\
    \delta a_t &= \delta h_t \odot \phi'(a_t), \quad \phi' = 1 - h_t^2 \ (\tanh),\ [a_t > 0]\ (\mathrm{ReLU}),
        \ h_t (1 - h_t)\ (\sigma) \\
    \partial L / \partial W_{ih} &= \textstyle\sum_t \delta a_t^\top x_t, \quad
    \partial L / \partial W_{hh} = \sum_t \delta a_t^\top h_{t-1}, \quad
    \partial L / \partial b_{ih} = \partial L / \partial b_{hh} = \sum_t \sum_b \delta a_t \\
    \partial L / \partial x_t &= \delta a_t W_{ih}, \qquad \partial L / \partial h_0 = \delta a_1 W_{hh}

Rows are batch elements: ``x_t`` is (B, I), ``h_t`` (B, H), ``delta a_t`` (B, H).
"""

from __future__ import annotations

import numpy as np

from rnnbench.reference.common import Array, BPTTResult, as_float64, sigmoid

NONLINEARITIES = ("tanh", "relu", "sigmoid")


def _phi(a: Array, nonlinearity: str) -> Array:
    if nonlinearity == "tanh":
        return np.tanh(a)
    if nonlinearity == "relu":
        return np.maximum(a, 0.0)
    return sigmoid(a)


def _dphi(a: Array, h: Array, nonlinearity: str) -> Array:
    """phi'(a), written with h = phi(a) where that is the textbook form."""
    if nonlinearity == "tanh":
        return 1.0 - h * h
    if nonlinearity == "relu":
        return (a > 0).astype(a.dtype)
    return h * (1.0 - h)


def rnn_bptt(
    x: Array,
    weight_ih: Array,
    weight_hh: Array,
    bias_ih: Array,
    bias_hh: Array,
    upstream: Array,
    nonlinearity: str = "tanh",
    h0: Array | None = None,
) -> BPTTResult:
    """Elman RNN over ``x`` (B, T, I) and its hand-derived gradients; weights as in ``nn.RNN`` (H, I), (H, H)."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity={nonlinearity!r}; allowed: {', '.join(NONLINEARITIES)}")
    x, W_ih, W_hh, b_ih, b_hh, upstream = as_float64(x, weight_ih, weight_hh, bias_ih, bias_hh, upstream)
    B, T, _ = x.shape
    H = W_hh.shape[0]
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, dtype=np.float64)

    hs, pres = [h], []  # hs[t] = h_t, hs[0] = h_0
    for t in range(T):
        a = x[:, t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh  # (B, H)
        h = _phi(a, nonlinearity)
        pres.append(a)
        hs.append(h)

    grads = {name: np.zeros_like(w) for name, w in
             (("weight_ih", W_ih), ("weight_hh", W_hh), ("bias_ih", b_ih), ("bias_hh", b_hh))}
    dx = np.zeros_like(x)
    dh_next = np.zeros((B, H))  # W_hh^T delta a_{t+1}, as rows: delta a_{t+1} @ W_hh
    for t in reversed(range(T)):
        dh = upstream[:, t] + dh_next
        da = dh * _dphi(pres[t], hs[t + 1], nonlinearity)  # (B, H)
        grads["weight_ih"] += da.T @ x[:, t]
        grads["weight_hh"] += da.T @ hs[t]
        grads["bias_ih"] += da.sum(axis=0)
        grads["bias_hh"] += da.sum(axis=0)
        dx[:, t] = da @ W_ih
        dh_next = da @ W_hh
    return BPTTResult(np.stack(hs[1:], axis=1), (h,), grads, dx, (dh_next,))
