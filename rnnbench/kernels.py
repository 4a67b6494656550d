r"""Hand-written backward through time for the classic recurrences, for K stacked weight sets at once.

A cell's whole-sequence path (:meth:`rnnbench.RecurrentCell.stacked_sequence`) calls one of these; a single
model is K = 1, a seed-parallel population K members. Sequences are (K, T, B, F): the input projections ``xp``
(K, T, B, G*H) of every step in, computed by one GEMM before the loop (:func:`input_projection`), the hidden
states (K, T, B, H) out. ``reverse`` runs from step T-1 to 0 (the backward direction of a bidirectional layer).

Per step the forward pass is one ``baddbmm`` (the recurrent matmul) and a few elementwise operations writing
into preallocated buffers; the backward pass is the chain rule written out, again one ``bmm`` per step, and the
recurrent weight gradient is one large ``bmm`` over every step after the loop. autograd's own backward through
the step loop costs about three times as many operator calls.

- :func:`elman`: :math:`h_t = \phi(xp_t + W h_{t-1})`, :math:`\phi \in \{\tanh, \mathrm{ReLU}, \sigma\}`.
- :func:`lstm`: the LSTM family of :class:`rnnbench.plugins.lstm.LSTMCell` (every gate optional, peepholes,
  coupled input and forget gates, full gate recurrence, identity or sigmoid activations); torch's LSTM is the
  default flags.
- :func:`gru`: torch's GRU (r scales :math:`W_{hn} h + b_{hn}`); :func:`gru_cho`: Cho et al. 2014 (r scales h
  before the matmul).

Each is tested equal, in float64 values and gradients, to autograd through the cell's step (``tests/test_kernels.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward
ACTIVATIONS = ("tanh", "sigmoid", "identity", "relu")


def input_projection(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x`` (K, T, B, I) @ ``weight`` (K, G, I)^T + ``bias`` (K, G): (K, T, B, G), one batched GEMM."""
    K, T, B, I = x.shape
    flat = x.reshape(K, T * B, I)
    out = torch.bmm(flat, weight.transpose(1, 2)) if bias is None else torch.baddbmm(
        bias.unsqueeze(1), flat, weight.transpose(1, 2))
    return out.view(K, T, B, weight.shape[1])


def _order(steps: int, reverse: bool) -> tuple[range, int]:
    """Steps in processing order and the offset from a step to its predecessor."""
    return (range(steps - 1, -1, -1), 1) if reverse else (range(steps), -1)


def _previous(seq: Tensor, reverse: bool) -> Tensor:
    """``seq`` (K, T, B, F) shifted by one step in processing order: each step's predecessor (zero first)."""
    zero = torch.zeros_like(seq[:, :1])
    return torch.cat([seq[:, 1:], zero], dim=1) if reverse else torch.cat([zero, seq[:, :-1]], dim=1)


def _weight_grad(dpre: Tensor, hs: Tensor, reverse: bool) -> Tensor:
    """sum over steps t and batch of dpre_t^T h_{t-1}: (K, T, B, G), (K, T, B, Z) -> (K, G, Z), one bmm.

    The first processed step has h_{t-1} = 0 and contributes nothing, so it is left out of both operands."""
    K, T, B, G = dpre.shape
    if T == 1:
        return dpre.new_zeros(K, G, hs.shape[-1])
    d, h = (dpre[:, :-1], hs[:, 1:]) if reverse else (dpre[:, 1:], hs[:, :-1])
    return torch.bmm(d.reshape(K, (T - 1) * B, G).transpose(1, 2), h.reshape(K, (T - 1) * B, hs.shape[-1]))


def _activate(name: str, pre: Tensor, out: Tensor) -> None:
    if name == "tanh":
        torch.tanh(pre, out=out)
    elif name == "sigmoid":
        torch.sigmoid(pre, out=out)
    elif name == "relu":
        torch.clamp(pre, min=0.0, out=out)
    else:
        out.copy_(pre)


def _activation_backward(name: str, grad: Tensor, out: Tensor, into: Tensor | None = None) -> Tensor:
    """d pre from d out for ``out = act(pre)``, written into ``into`` when given."""
    if name == "tanh":
        result = _tanh_backward(grad, out)
    elif name == "sigmoid":
        result = _sigmoid_backward(grad, out)
    elif name == "relu":
        result = grad * (out > 0)
    else:
        result = grad
    if into is None:
        return result
    into.copy_(result)
    return into


class _ElmanScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xp: Tensor, whh: Tensor, activation: str, reverse: bool) -> Tensor:
        K, T, B, H = xp.shape
        hs = xp.new_empty(K, T, B, H)
        h = xp.new_zeros(K, B, H)
        whh_t = whh.transpose(1, 2).contiguous()
        for t in _order(T, reverse)[0]:
            pre = torch.baddbmm(xp[:, t], h, whh_t)
            h = hs[:, t]
            _activate(activation, pre, h)
        ctx.save_for_backward(hs, whh)
        ctx.activation, ctx.reverse = activation, reverse
        return hs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, whh = ctx.saved_tensors
        K, T, B, H = hs.shape
        dpre = torch.empty_like(hs)
        dh = hs.new_zeros(K, B, H)
        for t in reversed(_order(T, ctx.reverse)[0]):
            dh = dh + dhs[:, t]
            d = _activation_backward(ctx.activation, dh, hs[:, t], into=dpre[:, t])
            dh = torch.bmm(d, whh)
        return dpre, _weight_grad(dpre, hs, ctx.reverse), None, None


def elman(xp: Tensor, whh: Tensor, activation: str = "tanh", reverse: bool = False) -> Tensor:
    r""":math:`h_t = \phi(xp_t + W_{hh} h_{t-1})`, :math:`h_{-1} = 0`: ``xp`` (K, T, B, H) with both biases
    folded in, ``whh`` (K, H, H); returns (K, T, B, H). ``activation``: tanh, relu, sigmoid or identity."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}; expected one of {ACTIVATIONS}")
    return _ElmanScan.apply(xp, whh, activation, reverse)


@dataclass(frozen=True)
class LSTMFlags:
    """The structure of an LSTM-family step (see :class:`rnnbench.plugins.lstm.LSTMCell`).

    ``blocks``: the weight blocks present, in torch's order i, f, g, o (``"ifgo"`` for torch's LSTM);
    ``peepholes``: the sigmoid gates with a peephole, a subset of ``blocks`` (and of ``"ifo"``); ``coupled``:
    f = 1 - i (CIFG; then ``"f"`` is not a block); ``gate_recurrence``: the previous step's sigmoid gates, in
    block order, are extra columns of the recurrent matrix (FGR); ``phi_in``, ``phi_out``: the activations of g
    and of the cell output."""

    blocks: str = "ifgo"
    peepholes: str = ""
    coupled: bool = False
    gate_recurrence: bool = False
    phi_in: str = "tanh"
    phi_out: str = "tanh"

    @property
    def gates(self) -> str:
        """The sigmoid gates with weights, in block order."""
        return self.blocks.replace("g", "")


class _LSTMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xp: Tensor, wrec: Tensor, peep: Tensor | None, flags: LSTMFlags, reverse: bool) -> Tensor:
        K, T, B, G = xp.shape
        blocks, H = flags.blocks, G // len(flags.blocks)
        at = {k: slice(n * H, (n + 1) * H) for n, k in enumerate(blocks)}
        w = {k: peep[:, n].unsqueeze(1) for n, k in enumerate(flags.peepholes)} if peep is not None else {}
        gate_cols = [at[k] for k in flags.gates]
        Z = wrec.shape[-1]  # H, or H + S*H with the gate recurrence
        zs = xp.new_empty(K, T, B, Z)  # the recurrent input of the next step: h_t (and the gates)
        cs = xp.new_empty(K, T, B, H)
        ys = cs if flags.phi_out == "identity" else xp.new_empty(K, T, B, H)
        acts = xp.new_empty(K, T, B, G)  # sigmoid gates, and g = phi_in(a_g)
        z = xp.new_zeros(K, B, Z)
        c = xp.new_zeros(K, B, H)
        wrec_t = wrec.transpose(1, 2).contiguous()
        for t in _order(T, reverse)[0]:
            pre = torch.baddbmm(xp[:, t], z, wrec_t)
            a = acts[:, t]
            for k in "if":
                if k in w:
                    pre[..., at[k]].addcmul_(w[k], c)
            torch.sigmoid(pre, out=a)  # every block; g below, and o again with its peephole
            if flags.phi_in != "sigmoid":
                _activate(flags.phi_in, pre[..., at["g"]], a[..., at["g"]])
            i = a[..., at["i"]] if "i" in at else None
            f = a[..., at["f"]] if "f" in at else None
            g = a[..., at["g"]]
            c_new = cs[:, t]
            if flags.coupled:  # c = (1 - i) c + i g = c + i (g - c)
                torch.addcmul(c, i, g - c, out=c_new)
            elif i is not None and f is not None:
                torch.addcmul(f * c, i, g, out=c_new)
            elif i is not None:
                torch.addcmul(c, i, g, out=c_new)
            elif f is not None:
                torch.addcmul(g, f, c, out=c_new)
            else:
                torch.add(c, g, out=c_new)
            c = c_new
            if "o" in w:
                torch.sigmoid(torch.addcmul(pre[..., at["o"]], w["o"], c), out=a[..., at["o"]])
            y = ys[:, t]
            if flags.phi_out != "identity":
                _activate(flags.phi_out, c, y)
            z = zs[:, t]
            h = z[..., :H]
            if "o" in at:
                torch.mul(a[..., at["o"]], y, out=h)
            else:
                h.copy_(y)
            for n, cols in enumerate(gate_cols if flags.gate_recurrence else ()):
                z[..., H + n * H : H + (n + 1) * H].copy_(a[..., cols])
        ctx.save_for_backward(zs, cs, ys, acts, wrec, peep)
        ctx.flags, ctx.reverse = flags, reverse
        return zs[..., :H] if flags.gate_recurrence else zs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        zs, cs, ys, acts, wrec, peep = ctx.saved_tensors
        flags: LSTMFlags = ctx.flags
        K, T, B, G = acts.shape
        blocks, H, Z = flags.blocks, G // len(flags.blocks), zs.shape[-1]
        at = {k: slice(n * H, (n + 1) * H) for n, k in enumerate(blocks)}
        w = {k: peep[:, n].unsqueeze(1) for n, k in enumerate(flags.peepholes)} if peep is not None else {}
        gate_at = {k: slice(H + n * H, H + (n + 1) * H) for n, k in enumerate(flags.gates)}
        dpre = acts.new_empty(K, T, B, G)
        dz = acts.new_zeros(K, B, Z)
        dc = acts.new_zeros(K, B, H)
        zero = acts.new_zeros(K, B, H)
        order, back = _order(T, ctx.reverse)
        first = order[0]
        for t in reversed(order):
            a, d = acts[:, t], dpre[:, t]
            c_prev = zero if t == first else cs[:, t + back]
            dh = dhs[:, t] + dz[..., :H]

            def from_next(k: str, grad: Tensor) -> Tensor:  # the gate's own input to the next step (FGR)
                return grad + dz[..., gate_at[k]] if flags.gate_recurrence else grad

            if "o" in at:
                o = a[..., at["o"]]
                _activation_backward("sigmoid", from_next("o", dh * ys[:, t]), o, into=d[..., at["o"]])
                dy = dh * o
            else:
                dy = dh
            dc = dc + _activation_backward(flags.phi_out, dy, ys[:, t])
            if "o" in w:
                dc = torch.addcmul(dc, d[..., at["o"]], w["o"])
            g = a[..., at["g"]]
            i = a[..., at["i"]] if "i" in at else None
            if i is not None:
                di = dc * (g - c_prev) if flags.coupled else dc * g
                _activation_backward("sigmoid", from_next("i", di), i, into=d[..., at["i"]])
            if "f" in at:
                f = a[..., at["f"]]
                _activation_backward("sigmoid", from_next("f", dc * c_prev), f, into=d[..., at["f"]])
            _activation_backward(flags.phi_in, dc if i is None else dc * i, g, into=d[..., at["g"]])
            if flags.coupled:
                dc = dc - dc * i
            elif "f" in at:
                dc = dc * a[..., at["f"]]
            for k in "if":
                if k in w:
                    dc = torch.addcmul(dc, d[..., at[k]], w[k])
            dz = torch.bmm(d, wrec)
        dpeep = None
        if peep is not None:
            c_prev = _previous(cs, ctx.reverse)
            dpeep = torch.stack([(dpre[..., at[k]] * (cs if k == "o" else c_prev)).sum(dim=(1, 2))
                                 for k in flags.peepholes], dim=1)
        return dpre, _weight_grad(dpre, zs, ctx.reverse), dpeep, None, None


def lstm(xp: Tensor, wrec: Tensor, peep: Tensor | None = None, flags: LSTMFlags = LSTMFlags(),
         reverse: bool = False) -> Tensor:
    """Hidden states (K, T, B, H) of an LSTM-family layer direction from zero states.

    ``xp`` (K, T, B, G*H): input projections with both biases, blocks in ``flags.blocks`` order; ``wrec``
    (K, G*H, Z): the recurrent matrix, Z = H, or with ``flags.gate_recurrence`` H + S*H (columns: h, then the
    S sigmoid gates of the previous step in block order); ``peep`` (K, P, H): the peephole vectors of
    ``flags.peepholes``, in that order."""
    for name in (flags.phi_in, flags.phi_out):
        if name not in ACTIVATIONS:
            raise ValueError(f"activation {name!r}; expected one of {ACTIVATIONS}")
    if (peep is None) != (not flags.peepholes):
        raise ValueError(f"peep is {'None' if peep is None else 'given'} for peepholes {flags.peepholes!r}")
    return _LSTMScan.apply(xp, wrec, peep, flags, reverse)


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


def gru(xp: Tensor, whh: Tensor, bhh: Tensor, reverse: bool = False) -> Tensor:
    """torch's GRU layer direction: ``xp`` (K, T, B, 3H) = W_ih x + b_ih (gates r, z, n), ``whh`` (K, 3H, H),
    ``bhh`` (K, 3H) kept apart because r scales W_hn h + b_hn; returns (K, T, B, H)."""
    return _GRUScan.apply(xp, whh, bhh, reverse)


class _GRUChoScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xp: Tensor, w_rz: Tensor, w_n: Tensor, reverse: bool) -> Tensor:
        K, T, B, G = xp.shape
        H = G // 3
        hs = xp.new_empty(K, T, B, H)
        rzs = xp.new_empty(K, T, B, 2 * H)
        rhs = xp.new_empty(K, T, B, H)  # r * h_{t-1}, the input of W_hn
        ns = xp.new_empty(K, T, B, H)
        h = xp.new_zeros(K, B, H)
        w_rz_t, w_n_t = w_rz.transpose(1, 2).contiguous(), w_n.transpose(1, 2).contiguous()
        for t in _order(T, reverse)[0]:
            x_t, rz, rh, n = xp[:, t], rzs[:, t], rhs[:, t], ns[:, t]
            torch.sigmoid(torch.baddbmm(x_t[..., : 2 * H], h, w_rz_t), out=rz)
            torch.mul(rz[..., :H], h, out=rh)
            torch.tanh(torch.baddbmm(x_t[..., 2 * H :], rh, w_n_t), out=n)
            h_new = hs[:, t]
            torch.addcmul(n, rz[..., H:], h - n, out=h_new)
            h = h_new
        ctx.save_for_backward(hs, rzs, rhs, ns, w_rz, w_n)
        ctx.reverse = reverse
        return hs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, rzs, rhs, ns, w_rz, w_n = ctx.saved_tensors
        K, T, B, H = hs.shape
        dxp = hs.new_empty(K, T, B, 3 * H)
        dh = hs.new_zeros(K, B, H)
        zero = hs.new_zeros(K, B, H)
        order, back = _order(T, ctx.reverse)
        first = order[0]
        for t in reversed(order):
            rz, n, d = rzs[:, t], ns[:, t], dxp[:, t]
            r, z = rz[..., :H], rz[..., H:]
            h_prev = zero if t == first else hs[:, t + back]
            dh = dh + dhs[:, t]
            dn = d[..., 2 * H :]
            _tanh_backward(torch.addcmul(dh, dh, z, value=-1.0), n, grad_input=dn)
            drh = torch.bmm(dn, w_n)
            _sigmoid_backward(drh * h_prev, r, grad_input=d[..., :H])
            _sigmoid_backward(dh * (h_prev - n), z, grad_input=d[..., H : 2 * H])
            dh = torch.baddbmm(torch.addcmul(dh * z, drh, r), d[..., : 2 * H], w_rz)
        dn_all = dxp[..., 2 * H :]
        dw_n = torch.bmm(dn_all.reshape(K, T * B, H).transpose(1, 2), rhs.reshape(K, T * B, H))
        return dxp, _weight_grad(dxp[..., : 2 * H], hs, ctx.reverse), dw_n, None


def gru_cho(xp: Tensor, w_rz: Tensor, w_n: Tensor, reverse: bool = False) -> Tensor:
    """The GRU of Cho et al. 2014 (r applied to h before W_hn): ``xp`` (K, T, B, 3H) = W_ih x + b_ih + b_hh
    (gates r, z, n), ``w_rz`` (K, 2H, H) and ``w_n`` (K, H, H) the blocks of W_hh; returns (K, T, B, H)."""
    return _GRUChoScan.apply(xp, w_rz, w_n, reverse)
