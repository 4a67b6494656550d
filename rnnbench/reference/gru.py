r"""GRU (torch's formulation, reset after the recurrent matmul): forward pass and backpropagation through time.

Forward, with gate order r, z, n in the weight rows (as ``nn.GRU``):

.. math::
    r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
    z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
    m_t &= W_{hn} h_{t-1} + b_{hn} \\
    n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot m_t) \\
    h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

Backward. With :math:`\delta h_t = \mathrm{upstream}_t + (\text{what flows back from } t+1)`:

.. math::
    \delta n &= \delta h_t \odot (1 - z_t), \qquad \delta z = \delta h_t \odot (h_{t-1} - n_t) \\
    \delta a_n &= \delta n \odot (1 - n_t^2) \quad \text{(pre-activation of } n) \\
    \delta m &= \delta a_n \odot r_t, \qquad \delta r = \delta a_n \odot m_t \\
    \delta a_r &= \delta r \odot r_t (1 - r_t), \qquad \delta a_z = \delta z \odot z_t (1 - z_t) \\
    \delta(\text{input proj.}) &= [\delta a_r, \delta a_z, \delta a_n], \qquad
    \delta(\text{recurrent proj.}) = [\delta a_r, \delta a_z, \delta m] \\
    \delta h_{t-1} &= \delta h_t \odot z_t + \delta(\text{recurrent proj.})\, W_{hh}

and the weight gradients are the outer products of those projections' deltas with ``x_t`` and ``h_{t-1}``
summed over time and batch (the bias gradients their sums). Note the asymmetry: the n block of the input
projection receives :math:`\delta a_n`, that of the recurrent projection :math:`\delta a_n \odot r_t`.
"""

from __future__ import annotations

import numpy as np

from rnnbench.reference.common import Array, BPTTResult, as_float64, sigmoid


def gru_bptt(
    x: Array,
    weight_ih: Array,
    weight_hh: Array,
    bias_ih: Array,
    bias_hh: Array,
    upstream: Array,
    h0: Array | None = None,
) -> BPTTResult:
    """GRU over ``x`` (B, T, I) and its hand-derived gradients; weights as in ``nn.GRU`` (3H, I), (3H, H)."""
    x, W_ih, W_hh, b_ih, b_hh, upstream = as_float64(x, weight_ih, weight_hh, bias_ih, bias_hh, upstream)
    B, T, _ = x.shape
    H = W_hh.shape[1]
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, dtype=np.float64)

    cache = []
    outputs = []
    for t in range(T):
        xr, xz, xn = np.split(x[:, t] @ W_ih.T + b_ih, 3, axis=1)  # 3 x (B, H)
        hr, hz, m = np.split(h @ W_hh.T + b_hh, 3, axis=1)
        r = sigmoid(xr + hr)
        z = sigmoid(xz + hz)
        n = np.tanh(xn + r * m)
        cache.append((h, r, z, n, m))
        h = (1.0 - z) * n + z * h
        outputs.append(h)

    grads = {name: np.zeros_like(w) for name, w in
             (("weight_ih", W_ih), ("weight_hh", W_hh), ("bias_ih", b_ih), ("bias_hh", b_hh))}
    dx = np.zeros_like(x)
    dh_next = np.zeros((B, H))
    for t in reversed(range(T)):
        h_prev, r, z, n, m = cache[t]
        dh = upstream[:, t] + dh_next
        dn = dh * (1.0 - z)
        dz = dh * (h_prev - n)
        da_n = dn * (1.0 - n * n)
        dm = da_n * r
        da_r = da_n * m * r * (1.0 - r)
        da_z = dz * z * (1.0 - z)
        d_in = np.concatenate([da_r, da_z, da_n], axis=1)  # (B, 3H)
        d_rec = np.concatenate([da_r, da_z, dm], axis=1)  # (B, 3H)
        grads["weight_ih"] += d_in.T @ x[:, t]
        grads["bias_ih"] += d_in.sum(axis=0)
        grads["weight_hh"] += d_rec.T @ h_prev
        grads["bias_hh"] += d_rec.sum(axis=0)
        dx[:, t] = d_in @ W_ih
        dh_next = dh * z + d_rec @ W_hh
    return BPTTResult(np.stack(outputs, axis=1), (h,), grads, dx, (dh_next,))
