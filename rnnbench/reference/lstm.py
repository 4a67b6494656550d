r"""LSTM with optional forget gate and optional peepholes: forward pass and backpropagation through time.

Covers ``lstm`` (forget gate, no peepholes: ``nn.LSTM``), ``lstm1997`` (no forget gate: f = 1) and
``peephole_lstm`` (forget gate and peepholes). Weight rows in gate order i, f, g, o, without the f block when
there is no forget gate. Forward:

.. math::
    a_k &= W_{ik} x_t + b_{ik} + W_{hk} h_{t-1} + b_{hk} \quad (k = i, f, g, o) \\
    i_t &= \sigma(a_i + w_{ci} \odot c_{t-1}), \quad f_t = \sigma(a_f + w_{cf} \odot c_{t-1}), \quad
        g_t = \tanh(a_g) \\
    c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
    o_t &= \sigma(a_o + w_{co} \odot c_t), \qquad h_t = o_t \odot \tanh(c_t)

Backward. Two quantities flow back in time: :math:`\delta h_t` (upstream plus the recurrent matmul of step t+1)
and :math:`\delta c_t^{\,next}` (the cell-state path from step t+1). Within step t:

.. math::
    \delta o &= \delta h_t \odot \tanh(c_t), \qquad \delta a_o = \delta o \odot o_t (1 - o_t) \\
    \delta c_t &= \delta c_t^{\,next} + \delta h_t \odot o_t \odot (1 - \tanh^2 c_t)
        + \delta a_o \odot w_{co} \\
    \delta a_i &= \delta c_t \odot g_t \odot i_t (1 - i_t), \quad
    \delta a_f = \delta c_t \odot c_{t-1} \odot f_t (1 - f_t), \quad
    \delta a_g = \delta c_t \odot i_t \odot (1 - g_t^2) \\
    \delta c_{t-1}^{\,next} &= \delta c_t \odot f_t + \delta a_i \odot w_{ci} + \delta a_f \odot w_{cf} \\
    \delta h_{t-1} &\mathrel{+}= [\delta a_i, \delta a_f, \delta a_g, \delta a_o]\, W_{hh}, \qquad
    \partial L / \partial x_t = [\delta a_i, \delta a_f, \delta a_g, \delta a_o]\, W_{ih}

The o-gate peephole reads :math:`c_t` (not :math:`c_{t-1}`), hence the :math:`\delta a_o w_{co}` term inside
:math:`\delta c_t`. Without a forget gate f_t = 1: :math:`\delta c_{t-1}^{\,next} = \delta c_t + \ldots`, the constant
error carousel. Weight gradients: outer products of the stacked deltas with ``x_t`` and ``h_{t-1}``; peephole
gradients :math:`\sum \delta a_i c_{t-1}`, :math:`\sum \delta a_f c_{t-1}`, :math:`\sum \delta a_o c_t`.
"""

from __future__ import annotations

import numpy as np

from rnnbench.reference.common import Array, BPTTResult, as_float64, sigmoid


def lstm_bptt(
    x: Array,
    weight_ih: Array,
    weight_hh: Array,
    bias_ih: Array,
    bias_hh: Array,
    upstream: Array,
    forget_gate: bool = True,
    w_ci: Array | None = None,
    w_cf: Array | None = None,
    w_co: Array | None = None,
    state0: tuple[Array, Array] | None = None,
) -> BPTTResult:
    """LSTM over ``x`` (B, T, I) and its hand-derived gradients.

    Weights as in :class:`rnnbench.plugins.lstm.LSTMCell`: ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H) with
    G = 4 (i, f, g, o) or 3 without a forget gate (i, g, o). Peepholes are on when ``w_ci`` is given (then also
    ``w_co``, and ``w_cf`` with a forget gate).
    """
    x, W_ih, W_hh, b_ih, b_hh, upstream = as_float64(x, weight_ih, weight_hh, bias_ih, bias_hh, upstream)
    B, T, _ = x.shape
    H = W_hh.shape[1]
    G = 4 if forget_gate else 3
    peep = w_ci is not None
    zeros = np.zeros(H)
    p_i, p_o = (as_float64(w_ci, w_co) if peep else (zeros, zeros))
    p_f = np.asarray(w_cf, dtype=np.float64) if peep and forget_gate else zeros
    h, c = (np.zeros((B, H)), np.zeros((B, H))) if state0 is None else as_float64(*state0)

    def split(a: Array) -> list[Array]:
        """Blocks i, f, g, o of a (B, G*H) pre-activation (f unused, zeros, without a forget gate)."""
        blocks = np.split(a, G, axis=1)
        return blocks if forget_gate else [blocks[0], np.zeros_like(blocks[0]), blocks[1], blocks[2]]

    cache = []
    outputs = []
    for t in range(T):
        a_i, a_f, a_g, a_o = split(x[:, t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh)
        i = sigmoid(a_i + p_i * c)
        f = sigmoid(a_f + p_f * c) if forget_gate else np.ones_like(c)
        g = np.tanh(a_g)
        c_new = f * c + i * g
        o = sigmoid(a_o + p_o * c_new)
        tc = np.tanh(c_new)
        cache.append((h, c, i, f, g, o, c_new, tc))
        h, c = o * tc, c_new
        outputs.append(h)

    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    grads = {n: np.zeros_like(w) for n, w in zip(names, (W_ih, W_hh, b_ih, b_hh))}
    dp_i, dp_f, dp_o = np.zeros(H), np.zeros(H), np.zeros(H)
    dx = np.zeros_like(x)
    dh_next, dc_next = np.zeros((B, H)), np.zeros((B, H))
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, o, c_t, tc = cache[t]
        dh = upstream[:, t] + dh_next
        da_o = dh * tc * o * (1.0 - o)
        dc = dc_next + dh * o * (1.0 - tc * tc) + da_o * p_o
        da_i = dc * g * i * (1.0 - i)
        da_f = dc * c_prev * f * (1.0 - f)
        da_g = dc * i * (1.0 - g * g)
        blocks = [da_i, da_f, da_g, da_o] if forget_gate else [da_i, da_g, da_o]
        da = np.concatenate(blocks, axis=1)  # (B, G*H)
        grads["weight_ih"] += da.T @ x[:, t]
        grads["weight_hh"] += da.T @ h_prev
        grads["bias_ih"] += da.sum(axis=0)
        grads["bias_hh"] += da.sum(axis=0)
        dp_i += (da_i * c_prev).sum(axis=0)
        dp_f += (da_f * c_prev).sum(axis=0)
        dp_o += (da_o * c_t).sum(axis=0)
        dx[:, t] = da @ W_ih
        dh_next = da @ W_hh
        dc_next = dc * f + da_i * p_i + (da_f * p_f if forget_gate else 0.0)
    if peep:
        grads["w_ci"], grads["w_co"] = dp_i, dp_o
        if forget_gate:
            grads["w_cf"] = dp_f
    return BPTTResult(np.stack(outputs, axis=1), (h, c), grads, dx, (dh_next, dc_next))
