"""How K stacked models of one configuration compute their forward pass at once (internal).

Parameters are stacked ``(K, ...)`` tensors under the loop model's names (:func:`rnnbench.model.loop_named_parameters`).

- :class:`KernelModel`: for cells whose math is torch's (a fused mode: ``GRU``, ``LSTM``, ``RNN_TANH``,
  ``RNN_RELU``), a hand-batched encoder: the input projection of all steps in one batched matmul, then per step
  one ``baddbmm`` over the K stacked recurrent matrices, with a hand-written backward through time that keeps
  the per-step work to one ``bmm`` and a few elementwise ops and computes the recurrent weight gradient in one
  large ``bmm`` after the loop.
- :class:`VmapModel`: any cell, through ``torch.func.vmap`` over ``functional_call`` of the step-by-step model
  (torch's fused ``nn.GRU``/``nn.LSTM`` have no vmap batching rule, hence the loop model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rnnbench.base import Task
from rnnbench.layers import CELL_WEIGHTS, fused_names
from rnnbench.model import build_model
from rnnbench.registry import CellSpec

KERNEL_MODES = ("GRU", "LSTM", "RNN_TANH", "RNN_RELU")
Params = dict[str, Tensor]


def kernel_fits(spec: CellSpec, names: set[str], num_layers: int, bidirectional: bool) -> bool:
    """Whether the batched kernel computes this cell: a fused mode, and exactly torch's tensors per cell."""
    cells = [f"encoder.{cell}" for cell, _ in fused_names(num_layers, bidirectional)]
    expected = {f"{c}.{w}" for c in cells for w in CELL_WEIGHTS} | {"head.weight", "head.bias"}
    return spec.fused in KERNEL_MODES and names == expected


# Hand-batched recurrences over K stacked weight sets. Sequences are (K, T, B, F): the input projections xp
# (K, T, B, G*H) of every step in, the hidden states hs (K, T, B, H) out; ``reverse`` runs from step T-1 to 0.
# Per-step work is one (b)addbmm and a few elementwise ops writing into preallocated buffers; the recurrent
# weight gradient is one bmm over all steps after the backward loop.

_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def _order(steps: int, reverse: bool) -> tuple[range, int]:
    """Steps in processing order and the offset from a step to its predecessor."""
    return (range(steps - 1, -1, -1), 1) if reverse else (range(steps), -1)


def _weight_grad(dpre: Tensor, hs: Tensor, reverse: bool) -> Tensor:
    """sum over steps t and batch of dpre_t^T h_{t-1}: (K, T, B, G), (K, T, B, H) -> (K, G, H), one bmm.

    The first processed step has h_{t-1} = 0 and contributes nothing, so it is left out of both operands."""
    K, T, B, G = dpre.shape
    if T == 1:
        return dpre.new_zeros(K, G, hs.shape[-1])
    d, h = (dpre[:, :-1], hs[:, 1:]) if reverse else (dpre[:, 1:], hs[:, :-1])
    return torch.bmm(d.reshape(K, (T - 1) * B, G).transpose(1, 2), h.reshape(K, (T - 1) * B, hs.shape[-1]))


class _ElmanScan(torch.autograd.Function):
    """h_t = act(xp_t + W_hh h_{t-1}) with both biases folded into xp; act tanh or relu."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, whh: Tensor, relu: bool, reverse: bool) -> Tensor:
        K, T, B, H = xp.shape
        hs = xp.new_empty(K, T, B, H)
        h = xp.new_zeros(K, B, H)
        whh_t = whh.transpose(1, 2).contiguous()
        for t in _order(T, reverse)[0]:
            pre = torch.baddbmm(xp[:, t], h, whh_t)
            h = hs[:, t]
            if relu:
                torch.clamp(pre, min=0.0, out=h)
            else:
                torch.tanh(pre, out=h)
        ctx.save_for_backward(hs, whh)
        ctx.relu, ctx.reverse = relu, reverse
        return hs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, whh = ctx.saved_tensors
        K, T, B, H = hs.shape
        dpre = torch.empty_like(hs)
        dh = hs.new_zeros(K, B, H)
        for t in reversed(_order(T, ctx.reverse)[0]):
            dh = dh + dhs[:, t]
            d = dpre[:, t]
            if ctx.relu:
                torch.mul(dh, hs[:, t] > 0, out=d)
            else:
                _tanh_backward(dh, hs[:, t], grad_input=d)
            dh = torch.bmm(d, whh)
        return dpre, _weight_grad(dpre, hs, ctx.reverse), None, None


class _LSTMScan(torch.autograd.Function):
    """torch's LSTM (gates i, f, g, o) with both biases folded into xp."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, whh: Tensor, reverse: bool) -> Tensor:
        K, T, B, G = xp.shape
        H = G // 4
        hs = xp.new_empty(K, T, B, H)
        cs = xp.new_empty(T, K, B, H)
        tcs = xp.new_empty(T, K, B, H)
        acts = xp.new_empty(T, K, B, G)
        h = xp.new_zeros(K, B, H)
        c = xp.new_zeros(K, B, H)
        whh_t = whh.transpose(1, 2).contiguous()
        for t in _order(T, reverse)[0]:
            pre = torch.baddbmm(xp[:, t], h, whh_t)
            a = acts[t]
            torch.sigmoid(pre, out=a)
            g = a[..., 2 * H : 3 * H]
            torch.tanh(pre[..., 2 * H : 3 * H], out=g)
            c_new = cs[t]
            torch.addcmul(a[..., H : 2 * H] * c, a[..., :H], g, out=c_new)
            c = c_new
            torch.tanh(c, out=tcs[t])
            h = hs[:, t]
            torch.mul(a[..., 3 * H :], tcs[t], out=h)
        ctx.save_for_backward(hs, cs, tcs, acts, whh)
        ctx.reverse = reverse
        return hs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, cs, tcs, acts, whh = ctx.saved_tensors
        K, T, B, H = hs.shape
        dpre = hs.new_empty(K, T, B, 4 * H)
        dh = hs.new_zeros(K, B, H)
        dc = hs.new_zeros(K, B, H)
        zero = hs.new_zeros(K, B, H)
        order, back = _order(T, ctx.reverse)
        first = order[0]
        for t in reversed(order):
            a, d, tc = acts[t], dpre[:, t], tcs[t]
            i, f, g, o = a[..., :H], a[..., H : 2 * H], a[..., 2 * H : 3 * H], a[..., 3 * H :]
            c_prev = zero if t == first else cs[t + back]
            dh = dh + dhs[:, t]
            dc = dc + torch.ops.aten.tanh_backward(dh * o, tc)
            _sigmoid_backward(dc * g, i, grad_input=d[..., :H])
            _sigmoid_backward(dc * c_prev, f, grad_input=d[..., H : 2 * H])
            _tanh_backward(dc * i, g, grad_input=d[..., 2 * H : 3 * H])
            _sigmoid_backward(dh * tc, o, grad_input=d[..., 3 * H :])
            dc = dc * f
            dh = torch.bmm(d, whh)
        return dpre, _weight_grad(dpre, hs, ctx.reverse), None


class _GRUScan(torch.autograd.Function):
    """torch's GRU (gates r, z, n); xp holds W_ih x + b_ih, ``bhh`` stays apart (r scales W_hn h + b_hn)."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, whh: Tensor, bhh: Tensor, reverse: bool) -> Tensor:
        K, T, B, G = xp.shape
        H = G // 3
        hs = xp.new_empty(K, T, B, H)
        rzs = xp.new_empty(T, K, B, 2 * H)
        ns = xp.new_empty(T, K, B, H)
        ghs = xp.new_empty(T, K, B, G)
        h = xp.new_zeros(K, B, H)
        whh_t, bias = whh.transpose(1, 2).contiguous(), bhh.unsqueeze(1)
        for t in _order(T, reverse)[0]:
            x_t, gh, rz, n = xp[:, t], ghs[t], rzs[t], ns[t]
            torch.baddbmm(bias, h, whh_t, out=gh)
            torch.sigmoid(x_t[..., : 2 * H] + gh[..., : 2 * H], out=rz)
            torch.tanh(torch.addcmul(x_t[..., 2 * H :], rz[..., :H], gh[..., 2 * H :]), out=n)
            h_new = hs[:, t]
            torch.addcmul(n, rz[..., H:], h - n, out=h_new)
            h = h_new
        ctx.save_for_backward(hs, rzs, ns, ghs, whh)
        ctx.reverse = reverse
        return hs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, rzs, ns, ghs, whh = ctx.saved_tensors
        K, T, B, H = hs.shape
        dxp = hs.new_empty(K, T, B, 3 * H)  # d pre-activations: r, z (shared with gh), n (x side)
        dhn = hs.new_empty(K, T, B, H)  # d (W_hn h + b_hn)
        dh = hs.new_zeros(K, B, H)
        zero = hs.new_zeros(K, B, H)
        w_rz, w_n = whh[:, : 2 * H], whh[:, 2 * H :]
        order, back = _order(T, ctx.reverse)
        first = order[0]
        for t in reversed(order):
            rz, n, hn, d = rzs[t], ns[t], ghs[t][..., 2 * H :], dxp[:, t]
            r, z = rz[..., :H], rz[..., H:]
            h_prev = zero if t == first else hs[:, t + back]
            dh = dh + dhs[:, t]
            dn = d[..., 2 * H :]
            _tanh_backward(torch.addcmul(dh, dh, z, value=-1.0), n, grad_input=dn)
            _sigmoid_backward(dn * hn, r, grad_input=d[..., :H])
            _sigmoid_backward(dh * (h_prev - n), z, grad_input=d[..., H : 2 * H])
            torch.mul(dn, r, out=dhn[:, t])
            dh = torch.baddbmm(torch.baddbmm(dh * z, d[..., : 2 * H], w_rz), dhn[:, t], w_n)
        drz = dxp[..., : 2 * H]
        dwhh = torch.cat([_weight_grad(drz, hs, ctx.reverse), _weight_grad(dhn, hs, ctx.reverse)], dim=1)
        dbhh = torch.cat([drz.sum(dim=(1, 2)), dhn.sum(dim=(1, 2))], dim=1)
        return dxp, dwhh, dbhh, None


def _scan(mode: str, xp: Tensor, whh: Tensor, bih: Tensor, bhh: Tensor, reverse: bool) -> Tensor:
    """Hidden states (K, T, B, H) of one layer direction; ``xp`` = W_ih x (K, T, B, G), biases (K, G)."""
    shape = (xp.shape[0], 1, 1, xp.shape[-1])
    if mode == "GRU":
        return _GRUScan.apply(xp + bih.view(shape), whh, bhh, reverse)
    xp = xp + (bih + bhh).view(shape)
    if mode == "LSTM":
        return _LSTMScan.apply(xp, whh, reverse)
    return _ElmanScan.apply(xp, whh, mode == "RNN_RELU", reverse)


@dataclass
class KernelModel:
    """The forward of K stacked models on the batched kernel: ``x`` (K, B, T, I) -> (K, B, O) or (K, B, T, O)."""

    mode: str
    num_layers: int
    bidirectional: bool
    hidden_size: int
    readout: str
    dropout: float = 0.0
    training: bool = True

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        H = self.hidden_size
        K, B, T, _ = x.shape
        seq = x.transpose(1, 2).contiguous()  # (K, T, B, I)
        cells = list(fused_names(self.num_layers, self.bidirectional))
        per_layer = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                seq = nn.functional.dropout(seq, self.dropout, self.training)
            flat = seq.reshape(K, T * B, seq.shape[-1])
            outs = []
            for direction, (cell, _) in enumerate(cells[layer * per_layer : (layer + 1) * per_layer]):
                p = f"encoder.{cell}."
                weight_ih = params[p + "weight_ih"]  # (K, G, F)
                xp = torch.bmm(flat, weight_ih.transpose(1, 2)).view(K, T, B, weight_ih.shape[1])
                outs.append(_scan(self.mode, xp, params[p + "weight_hh"], params[p + "bias_ih"],
                                  params[p + "bias_hh"], reverse=direction == 1))
            seq = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (K, T, B, D*H)
        weight, bias = params["head.weight"], params["head.bias"]  # (K, O, D*H), (K, O)
        if self.readout == "sequence":
            feats = seq.transpose(1, 2)  # (K, B, T, D*H)
            return torch.matmul(feats, weight.transpose(1, 2).unsqueeze(1)) + bias[:, None, None, :]
        feats = torch.cat([seq[:, -1, :, :H], seq[:, 0, :, H:]], dim=-1) if self.bidirectional else seq[:, -1]
        return torch.baddbmm(bias.unsqueeze(1), feats, weight.transpose(1, 2))  # (K, B, O)


class VmapModel:
    """The forward of K stacked models through ``vmap`` over the loop model (any cell)."""

    def __init__(self, spec: CellSpec, cell_kwargs: dict[str, Any], task: Task, hidden_size: int,
                 **model_kwargs: Any) -> None:
        with torch.random.fork_rng(devices=[]):
            self.base = build_model(spec, cell_kwargs, task, hidden_size, fused=False, **model_kwargs).to("meta")
        self.training = True

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        self.base.train(self.training)

        def one(p: Params, xk: Tensor) -> Tensor:
            return torch.func.functional_call(self.base, p, (xk,))

        return torch.func.vmap(one, randomness="different")(params, x)


