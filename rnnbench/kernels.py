r"""Hand-written backward through time for the classic recurrences and the elementwise modern ones, for K
stacked weight sets at once.

A cell's whole-sequence path (:meth:`rnnbench.RecurrentCell.stacked_sequence`) calls one of these; a single
model is K = 1, a seed-parallel population K members. Sequences are (K, T, B, F): the input projections ``xp``
(K, T, B, G*H) of every step in, computed by one GEMM before the loop (:func:`input_projection`), the hidden
states (K, T, B, H) out. ``reverse`` runs from step T-1 to 0 (the backward direction of a bidirectional layer).

Per step the forward pass is one ``baddbmm`` (the recurrent matmul) and a few elementwise operations writing
into preallocated buffers; the backward pass is the chain rule written out, again one ``bmm`` per step, and the
recurrent weight gradient is one large ``bmm`` over every step after the loop. autograd's own backward through
the step loop costs about three times as many operator calls.

- :func:`elman`: :math:`h_t = \phi(xp_t + W h_{t-1})`, :math:`\phi \in \{\tanh, \mathrm{ReLU}, \sigma\}` or
  expRNN's modReLU.
- :func:`lstm`: the LSTM family of :class:`rnnbench.plugins.lstm.LSTMCell` (every gate optional, peepholes,
  coupled input and forget gates, full gate recurrence, identity or sigmoid activations); torch's LSTM is the
  default flags.
- :func:`gru`: torch's GRU (r scales :math:`W_{hn} h + b_{hn}`); :func:`gru_cho`: Cho et al. 2014 (r scales h
  before the matmul).
- :func:`min_rnn` (minGRU, minLSTM) and :func:`indrnn`: recurrences without a recurrent matmul (each unit reads
  only its own previous value), so a step is elementwise work alone.
- :func:`slstm`: xLSTM's sLSTM (exponential input gate, normaliser and stabiliser states), one head.
- :func:`lru_scan`: the LRU's diagonal complex recurrence (constant in time), as real pairs.
- :func:`s6_scan`: Mamba's selective scan (input-dependent decay and input of an N-state per channel).

Each is tested equal, in float64 values and gradients, to autograd through the cell's step (``tests/test_kernels.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnbench import native

_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward
ACTIVATIONS = ("tanh", "sigmoid", "identity", "relu")


def compiled_loops(x: Tensor) -> bool:
    """Whether the kernels run compiled time loops for ``x``: a CPU (or meta, which stands for one) float32 or
    float64 tensor, with the library built (:mod:`rnnbench.native`). A cell may choose its path by it: without
    the compiled loops, autograd through its step can be faster than a kernel's Python loop."""
    return x.device.type in ("cpu", "meta") and x.dtype in (torch.float32, torch.float64) and native.ops() is not None


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
    """d pre from d out for ``out = act(pre)``, written into ``into`` when given (no extra copy)."""
    if into is None:
        if name == "tanh":
            return _tanh_backward(grad, out)
        if name == "sigmoid":
            return _sigmoid_backward(grad, out)
        return grad * (out > 0) if name == "relu" else grad
    if name == "tanh":
        _tanh_backward.grad_input(grad, out, grad_input=into)
    elif name == "sigmoid":
        _sigmoid_backward.grad_input(grad, out, grad_input=into)
    elif name == "relu":
        torch.mul(grad, out > 0, out=into)
    else:
        into.copy_(grad)
    return into


def _steps(seq: Tensor, cols: slice | None = None) -> tuple[Tensor, ...]:
    """The per-step views (K, B, F) of ``seq`` (K, T, B, F), optionally of columns ``cols`` only: made once
    before a time loop, which then creates no views of its own."""
    return (seq if cols is None else seq[..., cols]).unbind(1)


def _block_steps(seq: Tensor, width: int) -> list[tuple[Tensor, ...]]:
    """The per-step views of each ``width``-wide block of columns of ``seq`` (gate blocks): one list per block."""
    return [_steps(seq, slice(k, k + width)) for k in range(0, seq.shape[-1], width)]


def _modrelu(z: Tensor, bias: Tensor, out: Tensor) -> None:
    """``out`` = sign(z) * ReLU(|z| + bias) (expRNN's modReLU), ``bias`` (K, 1, H)."""
    torch.abs(z, out=out)
    out.add_(bias).clamp_(min=0.0).mul_(torch.sign(z))


class _ElmanScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xp: Tensor, whh: Tensor, bias: Tensor | None, activation: str, reverse: bool) -> Tensor:
        K, T, B, H = xp.shape
        hs = xp.new_empty(K, T, B, H)
        h = xp.new_zeros(K, B, H)
        whh_t = whh.transpose(1, 2).contiguous()
        b = None if bias is None else bias.unsqueeze(1)
        xs, h_steps = _steps(xp), _steps(hs)
        for t in _order(T, reverse)[0]:
            pre = torch.baddbmm(xs[t], h, whh_t)
            h = h_steps[t]
            if b is None:
                _activate(activation, pre, h)
            else:
                _modrelu(pre, b, h)
        ctx.save_for_backward(hs, whh)
        ctx.activation, ctx.reverse = activation, reverse
        return hs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, whh = ctx.saved_tensors
        K, T, B, H = hs.shape
        dpre = torch.empty_like(hs)
        dh = hs.new_zeros(K, B, H)
        modrelu = ctx.activation == "modrelu"
        live = (hs != 0).to(hs.dtype) if modrelu else None  # modReLU: dz = dh where h != 0, else 0
        dh_steps, h_steps, d_steps = _steps(dhs), _steps(hs), _steps(dpre)
        live_steps = None if live is None else _steps(live)
        for t in reversed(_order(T, ctx.reverse)[0]):
            dh = dh + dh_steps[t]
            if live_steps is None:
                _activation_backward(ctx.activation, dh, h_steps[t], into=d_steps[t])
            else:
                torch.mul(dh, live_steps[t], out=d_steps[t])
            dh = torch.bmm(d_steps[t], whh)
        # modReLU's bias: db = sum over steps and batch of dh * sign(h) = dz * sign(h)
        dbias = (dpre * torch.sign(hs)).sum((1, 2)) if modrelu else None
        return dpre, _weight_grad(dpre, hs, ctx.reverse), dbias, None, None


def elman(xp: Tensor, whh: Tensor, activation: str = "tanh", reverse: bool = False,
          bias: Tensor | None = None) -> Tensor:
    r""":math:`h_t = \phi(z_t)`, :math:`z_t = xp_t + W_{hh} h_{t-1}`, :math:`h_{-1} = 0`: ``xp`` (K, T, B, H) with
    the biases folded in, ``whh`` (K, H, H); returns (K, T, B, H). ``activation``: tanh, relu, sigmoid, identity,
    or modrelu, :math:`\phi(z) = \mathrm{sign}(z)\,\mathrm{ReLU}(|z| + b)` with ``bias`` b (K, H) (expRNN; its
    b cannot be folded into ``xp``)."""
    if activation not in (*ACTIVATIONS, "modrelu"):
        raise ValueError(f"activation {activation!r}; expected one of {(*ACTIVATIONS, 'modrelu')}")
    if (activation == "modrelu") != (bias is not None):
        raise ValueError("a bias is modrelu's, and modrelu needs one")
    return _ElmanScan.apply(xp, whh, bias, activation, reverse)


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


_ACTIVATION_CODES = {"tanh": 0, "sigmoid": 1, "identity": 2, "relu": 3}  # csrc/steps.cpp's Act


def _native_flags(flags: LSTMFlags) -> list[int]:
    """``flags`` as csrc/steps.cpp's lstm_* read them: block indices of i, f, g, o (-1: absent), peephole rows of
    i, f, o (-1: none), coupled, gate recurrence, activation codes of phi_in and phi_out, the number of blocks,
    and with the gate recurrence the block indices of its gates."""
    n = len(flags.blocks)
    offset = {k: flags.blocks.index(k) for k in flags.blocks}
    peep = {k: flags.peepholes.index(k) for k in flags.peepholes}
    return [*(offset.get(k, -1) for k in "ifgo"), *(peep.get(k, -1) for k in "ifo"), int(flags.coupled),
            int(flags.gate_recurrence), _ACTIVATION_CODES[flags.phi_in], _ACTIVATION_CODES[flags.phi_out], n,
            *((offset[k] for k in flags.gates) if flags.gate_recurrence else ())]


class _LSTMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xp: Tensor, wrec: Tensor, peep: Tensor | None, flags: LSTMFlags, reverse: bool) -> Tensor:
        compiled = native.usable(xp, wrec)
        if compiled is not None:
            zs, cs, ys, acts = compiled.lstm_forward(xp.contiguous(), wrec, peep, _native_flags(flags), reverse)
        else:
            zs, cs, ys, acts = _LSTMScan.loop(xp, wrec, peep, flags, reverse)
        ctx.save_for_backward(zs, cs, ys, acts, wrec, peep)
        ctx.flags, ctx.reverse = flags, reverse
        return zs[..., : cs.shape[-1]] if flags.gate_recurrence else zs

    @staticmethod
    def loop(xp: Tensor, wrec: Tensor, peep: Tensor | None, flags: LSTMFlags, reverse: bool) -> tuple[Tensor, ...]:
        """The forward time loop in Python: zs, cs, ys, acts."""
        K, T, B, G = xp.shape
        blocks, H = flags.blocks, G // len(flags.blocks)
        at = {k: slice(n * H, (n + 1) * H) for n, k in enumerate(blocks)}
        w = {k: peep[:, n].unsqueeze(1) for n, k in enumerate(flags.peepholes)} if peep is not None else {}
        Z = wrec.shape[-1]  # H, or H + S*H with the gate recurrence
        zs = xp.new_empty(K, T, B, Z)  # the recurrent input of the next step: h_t (and the gates)
        cs = xp.new_empty(K, T, B, H)
        ys = cs if flags.phi_out == "identity" else xp.new_empty(K, T, B, H)
        acts = xp.new_empty(K, T, B, G)  # sigmoid gates, and g = phi_in(a_g)
        none = (None,) * T
        gate = dict.fromkeys("ifgo", none) | dict(zip(blocks, _block_steps(acts, H)))
        z_steps, h_steps, c_steps, y_steps = _steps(zs), _steps(zs, slice(0, H)), _steps(cs), _steps(ys)
        rec_steps = [_steps(zs, slice(H + n * H, H + (n + 1) * H)) for n in range(len(flags.gates))]
        rec_gates = [gate[k] for k in flags.gates] if flags.gate_recurrence else []
        peep_i, peep_f, peep_o = w.get("i"), w.get("f"), w.get("o")
        g_at, o_at = at["g"], at.get("o")
        i_on, f_on, o_on = "i" in at, "f" in at, "o" in at
        phi_in = None if flags.phi_in == "sigmoid" else flags.phi_in
        phi_out = None if flags.phi_out == "identity" else flags.phi_out
        z = xp.new_zeros(K, B, Z)
        c = xp.new_zeros(K, B, H)
        wrec_t = wrec.transpose(1, 2).contiguous()
        xs, a_steps = _steps(xp), _steps(acts)
        for t in _order(T, reverse)[0]:
            pre = torch.baddbmm(xs[t], z, wrec_t)
            if peep_i is not None:
                pre[..., at["i"]].addcmul_(peep_i, c)
            if peep_f is not None:
                pre[..., at["f"]].addcmul_(peep_f, c)
            torch.sigmoid(pre, out=a_steps[t])  # every block; g below, and o again with its peephole
            i, f, g = gate["i"][t], gate["f"][t], gate["g"][t]
            if phi_in is not None:
                _activate(phi_in, pre[..., g_at], g)
            c_new = c_steps[t]
            if flags.coupled:  # c = (1 - i) c + i g = c + i (g - c)
                torch.addcmul(c, i, g - c, out=c_new)
            elif i_on and f_on:
                torch.addcmul(f * c, i, g, out=c_new)
            elif i_on:
                torch.addcmul(c, i, g, out=c_new)
            elif f_on:
                torch.addcmul(g, f, c, out=c_new)
            else:
                torch.add(c, g, out=c_new)
            c = c_new
            if peep_o is not None:
                torch.sigmoid(torch.addcmul(pre[..., o_at], peep_o, c), out=gate["o"][t])
            y = y_steps[t]
            if phi_out is not None:
                _activate(phi_out, c, y)
            if o_on:
                torch.mul(gate["o"][t], y, out=h_steps[t])
            else:
                h_steps[t].copy_(y)
            for target, source in zip(rec_steps, rec_gates):
                target[t].copy_(source[t])
            z = z_steps[t]
        return zs, cs, ys, acts

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        zs, cs, ys, acts, wrec, peep = ctx.saved_tensors
        flags: LSTMFlags = ctx.flags
        compiled = native.usable(acts, dhs)
        if compiled is not None:
            dpre = compiled.lstm_backward(dhs, cs, ys, acts, wrec, peep, _native_flags(flags), ctx.reverse)
        else:
            dpre = _LSTMScan.backward_loop(dhs, zs, cs, ys, acts, wrec, peep, flags, ctx.reverse)
        dpeep = None  # sum over steps and batch of d pre-activation * the cell state the peephole reads
        if peep is not None:
            H = cs.shape[-1]
            at = {k: slice(n * H, (n + 1) * H) for n, k in enumerate(flags.blocks)}
            c_prev = _previous(cs, ctx.reverse)
            dpeep = torch.stack([(dpre[..., at[k]] * (cs if k == "o" else c_prev)).sum(dim=(1, 2))
                                 for k in flags.peepholes], dim=1)
        return dpre, _weight_grad(dpre, zs, ctx.reverse), dpeep, None, None

    @staticmethod
    def backward_loop(dhs: Tensor, zs: Tensor, cs: Tensor, ys: Tensor, acts: Tensor, wrec: Tensor,
                      peep: Tensor | None, flags: LSTMFlags, reverse: bool) -> Tensor:
        """The backward time loop in Python: d pre-activations (K, T, B, G)."""
        K, T, B, G = acts.shape
        blocks, H, Z = flags.blocks, G // len(flags.blocks), zs.shape[-1]
        at = {k: slice(n * H, (n + 1) * H) for n, k in enumerate(blocks)}
        w = {k: peep[:, n].unsqueeze(1) for n, k in enumerate(flags.peepholes)} if peep is not None else {}
        gate_at = {k: slice(H + n * H, H + (n + 1) * H) for n, k in enumerate(flags.gates)}
        dpre = acts.new_empty(K, T, B, G)
        none = (None,) * T
        gate = dict.fromkeys("ifgo", none) | dict(zip(blocks, _block_steps(acts, H)))
        dgate = dict.fromkeys("ifgo", none) | dict(zip(blocks, _block_steps(dpre, H)))
        d_steps, dh_steps, c_steps, y_steps = _steps(dpre), _steps(dhs), _steps(cs), _steps(ys)
        peep_i, peep_f, peep_o = w.get("i"), w.get("f"), w.get("o")
        i_on, f_on, o_on = "i" in at, "f" in at, "o" in at
        fgr = flags.gate_recurrence
        dz = acts.new_zeros(K, B, Z)
        dc = acts.new_zeros(K, B, H)
        zero = acts.new_zeros(K, B, H)
        order, back = _order(T, reverse)
        first = order[0]
        for t in reversed(order):
            c_prev = zero if t == first else c_steps[t + back]
            dh = dh_steps[t] + (dz[..., :H] if fgr else dz)
            if o_on:
                o = gate["o"][t]
                do = dh * y_steps[t]
                _activation_backward("sigmoid", do + dz[..., gate_at["o"]] if fgr else do, o, into=dgate["o"][t])
                dy = dh * o
            else:
                dy = dh
            dc = dc + _activation_backward(flags.phi_out, dy, y_steps[t])
            if peep_o is not None:
                dc = torch.addcmul(dc, dgate["o"][t], peep_o)
            g, i = gate["g"][t], gate["i"][t]
            if i_on:
                di = dc * (g - c_prev) if flags.coupled else dc * g
                _activation_backward("sigmoid", di + dz[..., gate_at["i"]] if fgr else di, i, into=dgate["i"][t])
            if f_on:
                df = dc * c_prev
                _activation_backward("sigmoid", df + dz[..., gate_at["f"]] if fgr else df, gate["f"][t],
                                     into=dgate["f"][t])
            _activation_backward(flags.phi_in, dc if i is None else dc * i, g, into=dgate["g"][t])
            if flags.coupled:
                dc = dc - dc * i
            elif f_on:
                dc = dc * gate["f"][t]
            if peep_i is not None:
                dc = torch.addcmul(dc, dgate["i"][t], peep_i)
            if peep_f is not None:
                dc = torch.addcmul(dc, dgate["f"][t], peep_f)
            dz = torch.bmm(d_steps[t], wrec)
        return dpre


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
        compiled = native.usable(xp, whh)
        loop = _GRUScan.loop if compiled is None else compiled.gru_forward
        hs, rzs, ns, ghs = loop(xp.contiguous(), whh, bhh, reverse)
        ctx.save_for_backward(hs, rzs, ns, ghs, whh)
        ctx.reverse = reverse
        return hs

    @staticmethod
    def loop(xp: Tensor, whh: Tensor, bhh: Tensor, reverse: bool) -> tuple[Tensor, ...]:
        """The forward time loop in Python: hs, rzs, ns, ghs."""
        K, T, B, G = xp.shape
        H = G // 3
        hs = xp.new_empty(K, T, B, H)
        rzs = xp.new_empty(K, T, B, 2 * H)
        ns = xp.new_empty(K, T, B, H)
        ghs = xp.new_empty(K, T, B, G)  # W_h h + b_h, every block
        h = xp.new_zeros(K, B, H)
        whh_t, bias = whh.transpose(1, 2).contiguous(), bhh.unsqueeze(1)
        x_rz, x_n = _steps(xp, slice(0, 2 * H)), _steps(xp, slice(2 * H, G))
        gh_steps, gh_rz, gh_n = _steps(ghs), _steps(ghs, slice(0, 2 * H)), _steps(ghs, slice(2 * H, G))
        rz_steps, (r_steps, z_steps) = _steps(rzs), _block_steps(rzs, H)
        n_steps, h_steps = _steps(ns), _steps(hs)
        for t in _order(T, reverse)[0]:
            torch.baddbmm(bias, h, whh_t, out=gh_steps[t])
            torch.sigmoid(x_rz[t] + gh_rz[t], out=rz_steps[t])
            n = n_steps[t]
            torch.tanh(torch.addcmul(x_n[t], r_steps[t], gh_n[t]), out=n)
            torch.addcmul(n, z_steps[t], h - n, out=h_steps[t])
            h = h_steps[t]
        return hs, rzs, ns, ghs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, rzs, ns, ghs, whh = ctx.saved_tensors
        compiled = native.usable(hs, dhs)
        loop = _GRUScan.backward_loop if compiled is None else compiled.gru_backward
        dxp, dhn = loop(dhs, hs, rzs, ns, ghs, whh, ctx.reverse)
        H = hs.shape[-1]
        drz = dxp[..., : 2 * H]
        dwhh = torch.cat([_weight_grad(drz, hs, ctx.reverse), _weight_grad(dhn, hs, ctx.reverse)], dim=1)
        dbhh = torch.cat([drz.sum(dim=(1, 2)), dhn.sum(dim=(1, 2))], dim=1)
        return dxp, dwhh, dbhh, None

    @staticmethod
    def backward_loop(dhs: Tensor, hs: Tensor, rzs: Tensor, ns: Tensor, ghs: Tensor, whh: Tensor,
                      reverse: bool) -> tuple[Tensor, Tensor]:
        """The backward time loop in Python: dxp (d pre-activations r, z and the x side of n), dhn."""
        K, T, B, H = hs.shape
        dxp = hs.new_empty(K, T, B, 3 * H)  # d pre-activations: r, z (shared with gh), n (x side)
        dhn = hs.new_empty(K, T, B, H)  # d (W_hn h + b_hn)
        dh = hs.new_zeros(K, B, H)
        zero = hs.new_zeros(K, B, H)
        w_rz, w_n = whh[:, : 2 * H], whh[:, 2 * H :]
        (r_steps, z_steps), n_steps, hn_steps = _block_steps(rzs, H), _steps(ns), _block_steps(ghs, H)[2]
        (d_r, d_z, d_n), d_rz = _block_steps(dxp, H), _steps(dxp, slice(0, 2 * H))
        h_steps, dh_steps, dhn_steps = _steps(hs), _steps(dhs), _steps(dhn)
        order, back = _order(T, reverse)
        first = order[0]
        for t in reversed(order):
            r, z, n = r_steps[t], z_steps[t], n_steps[t]
            h_prev = zero if t == first else h_steps[t + back]
            dh = dh + dh_steps[t]
            dn = d_n[t]
            _tanh_backward.grad_input(torch.addcmul(dh, dh, z, value=-1.0), n, grad_input=dn)
            _sigmoid_backward.grad_input(dn * hn_steps[t], r, grad_input=d_r[t])
            _sigmoid_backward.grad_input(dh * (h_prev - n), z, grad_input=d_z[t])
            torch.mul(dn, r, out=dhn_steps[t])
            dh = torch.baddbmm(torch.baddbmm(dh * z, d_rz[t], w_rz), dhn_steps[t], w_n)
        return dxp, dhn


def gru(xp: Tensor, whh: Tensor, bhh: Tensor, reverse: bool = False) -> Tensor:
    """torch's GRU layer direction: ``xp`` (K, T, B, 3H) = W_ih x + b_ih (gates r, z, n), ``whh`` (K, 3H, H),
    ``bhh`` (K, 3H) kept apart because r scales W_hn h + b_hn; returns (K, T, B, H)."""
    return _GRUScan.apply(xp, whh, bhh, reverse)


class _GRUChoScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xp: Tensor, w_rz: Tensor, w_n: Tensor, reverse: bool) -> Tensor:
        compiled = native.usable(xp, w_rz)
        loop = _GRUChoScan.loop if compiled is None else compiled.gru_cho_forward
        hs, rzs, rhs, ns = loop(xp.contiguous(), w_rz, w_n, reverse)
        ctx.save_for_backward(hs, rzs, rhs, ns, w_rz, w_n)
        ctx.reverse = reverse
        return hs

    @staticmethod
    def loop(xp: Tensor, w_rz: Tensor, w_n: Tensor, reverse: bool) -> tuple[Tensor, ...]:
        """The forward time loop in Python: hs, rzs, rhs, ns."""
        K, T, B, G = xp.shape
        H = G // 3
        hs = xp.new_empty(K, T, B, H)
        rzs = xp.new_empty(K, T, B, 2 * H)
        rhs = xp.new_empty(K, T, B, H)  # r * h_{t-1}, the input of W_hn
        ns = xp.new_empty(K, T, B, H)
        h = xp.new_zeros(K, B, H)
        w_rz_t, w_n_t = w_rz.transpose(1, 2).contiguous(), w_n.transpose(1, 2).contiguous()
        x_rz, x_n = _steps(xp, slice(0, 2 * H)), _steps(xp, slice(2 * H, G))
        rz_steps, (r_steps, z_steps) = _steps(rzs), _block_steps(rzs, H)
        rh_steps, n_steps, h_steps = _steps(rhs), _steps(ns), _steps(hs)
        for t in _order(T, reverse)[0]:
            torch.sigmoid(torch.baddbmm(x_rz[t], h, w_rz_t), out=rz_steps[t])
            torch.mul(r_steps[t], h, out=rh_steps[t])
            n = n_steps[t]
            torch.tanh(torch.baddbmm(x_n[t], rh_steps[t], w_n_t), out=n)
            torch.addcmul(n, z_steps[t], h - n, out=h_steps[t])
            h = h_steps[t]
        return hs, rzs, rhs, ns

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, rzs, rhs, ns, w_rz, w_n = ctx.saved_tensors
        compiled = native.usable(hs, dhs)
        loop = _GRUChoScan.backward_loop if compiled is None else compiled.gru_cho_backward
        dxp = loop(dhs, hs, rzs, ns, w_rz, w_n, ctx.reverse)
        K, T, B, H = hs.shape
        dn_all = dxp[..., 2 * H :]
        dw_n = torch.bmm(dn_all.reshape(K, T * B, H).transpose(1, 2), rhs.reshape(K, T * B, H))
        return dxp, _weight_grad(dxp[..., : 2 * H], hs, ctx.reverse), dw_n, None

    @staticmethod
    def backward_loop(dhs: Tensor, hs: Tensor, rzs: Tensor, ns: Tensor, w_rz: Tensor, w_n: Tensor,
                      reverse: bool) -> Tensor:
        """The backward time loop in Python: d pre-activations (K, T, B, 3H)."""
        K, T, B, H = hs.shape
        dxp = hs.new_empty(K, T, B, 3 * H)
        dh = hs.new_zeros(K, B, H)
        zero = hs.new_zeros(K, B, H)
        (r_steps, z_steps), n_steps = _block_steps(rzs, H), _steps(ns)
        (d_r, d_z, d_n), d_rz = _block_steps(dxp, H), _steps(dxp, slice(0, 2 * H))
        h_steps, dh_steps = _steps(hs), _steps(dhs)
        order, back = _order(T, reverse)
        first = order[0]
        for t in reversed(order):
            r, z, n = r_steps[t], z_steps[t], n_steps[t]
            h_prev = zero if t == first else h_steps[t + back]
            dh = dh + dh_steps[t]
            dn = d_n[t]
            _tanh_backward.grad_input(torch.addcmul(dh, dh, z, value=-1.0), n, grad_input=dn)
            drh = torch.bmm(dn, w_n)
            _sigmoid_backward.grad_input(drh * h_prev, r, grad_input=d_r[t])
            _sigmoid_backward.grad_input(dh * (h_prev - n), z, grad_input=d_z[t])
            dh = torch.baddbmm(torch.addcmul(dh * z, drh, r), d_rz[t], w_rz)
        return dxp


def gru_cho(xp: Tensor, w_rz: Tensor, w_n: Tensor, reverse: bool = False) -> Tensor:
    """The GRU of Cho et al. 2014 (r applied to h before W_hn): ``xp`` (K, T, B, 3H) = W_ih x + b_ih + b_hh
    (gates r, z, n), ``w_rz`` (K, 2H, H) and ``w_n`` (K, H, H) the blocks of W_hh; returns (K, T, B, H)."""
    return _GRUChoScan.apply(xp, w_rz, w_n, reverse)


MIN_RNNS = {"mingru": 0, "minlstm": 1}  # csrc/steps.cpp's MinKind


def _min_parts(pre: Tensor, kind: str) -> tuple[Tensor, ...]:
    """From the pre-activations (K, T, B, G) of every step: a, b of h_t = a_t h_{t-1} + b_t, then what the
    backward needs: minGRU (z, g, g'), minLSTM (f, i, f + i, g, g'), g' = dg/dv of the candidate."""
    blocks = pre.chunk(2 if kind == "mingru" else 3, dim=-1)
    v = blocks[-1]
    s = torch.sigmoid(v)
    positive = v >= 0
    g = torch.where(positive, v + 0.5, s)
    dg = torch.where(positive, torch.ones_like(s), s * (1 - s))
    if kind == "mingru":
        z = torch.sigmoid(blocks[0])
        return 1 - z, z * g, z, g, dg
    f, i = torch.sigmoid(blocks[0]), torch.sigmoid(blocks[1])
    total = f + i
    return f / total, (i / total) * g, f, i, total, g, dg


class _MinScan(torch.autograd.Function):
    """minGRU and minLSTM (:mod:`rnnbench.plugins.mingru`): every gate from the input alone, so the loop has no
    matmul; the backward recomputes the gates from the pre-activations."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, kind: str, reverse: bool) -> Tensor:
        compiled = native.usable(pre)
        pre = pre.contiguous()
        if compiled is None:
            hs = _MinScan.loop(pre, kind, reverse)
        else:
            hs = compiled.min_forward(pre, MIN_RNNS[kind], reverse)
        ctx.save_for_backward(pre, hs)
        ctx.kind, ctx.reverse = kind, reverse
        return hs

    @staticmethod
    def loop(pre: Tensor, kind: str, reverse: bool) -> Tensor:
        """The forward time loop in Python: every step's a_t and b_t at once, then one addcmul per step."""
        a, b = _min_parts(pre, kind)[:2]
        hs = torch.empty_like(b)
        h = b.new_zeros(b[:, 0].shape)
        a_steps, b_steps, h_steps = _steps(a), _steps(b), _steps(hs)
        for t in _order(hs.shape[1], reverse)[0]:
            h = torch.addcmul(b_steps[t], a_steps[t], h, out=h_steps[t])
        return hs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        pre, hs = ctx.saved_tensors
        compiled = native.usable(pre, dhs)
        if compiled is not None:
            return compiled.min_backward(dhs, pre, hs, MIN_RNNS[ctx.kind], ctx.reverse), None, None
        return _MinScan.backward_loop(dhs, pre, hs, ctx.kind, ctx.reverse), None, None

    @staticmethod
    def backward_loop(dhs: Tensor, pre: Tensor, hs: Tensor, kind: str, reverse: bool) -> Tensor:
        """The backward in Python: the gradient carried through h (one addcmul per step), then d pre at once."""
        a, _, *parts = _min_parts(pre, kind)
        dh = torch.empty_like(hs)  # d h_t: from the output and from step t+1
        carry = hs.new_zeros(hs[:, 0].shape)
        a_steps, dhs_steps, dh_steps = _steps(a), _steps(dhs), _steps(dh)
        for t in reversed(_order(hs.shape[1], reverse)[0]):
            torch.add(dhs_steps[t], carry, out=dh_steps[t])
            carry = a_steps[t] * dh_steps[t]
        h_prev = _previous(hs, reverse)
        if kind == "mingru":
            z, g, dg = parts
            return torch.cat([dh * (g - h_prev) * z * (1 - z), dh * z * dg], dim=-1)
        f, i, total, g, dg = parts
        q = dh * (h_prev - g) / (total * total)
        return torch.cat([q * i * f * (1 - f), -q * f * i * (1 - i), dh * (i / total) * dg], dim=-1)


def min_rnn(pre: Tensor, kind: str, reverse: bool = False) -> Tensor:
    r"""minGRU (``kind="mingru"``: ``pre`` (K, T, B, 2H), blocks z, h) or minLSTM (``"minlstm"``: (K, T, B, 3H),
    blocks f, i, h) from the input pre-activations of every step; returns h (K, T, B, H), from h = 0:

    .. math:: h_t = (1 - z_t) h_{t-1} + z_t g(v_t) \quad\text{or}\quad
        h_t = \frac{f_t h_{t-1} + i_t g(v_t)}{f_t + i_t}, \qquad g(v) = v + \tfrac12 \;(v \ge 0),\; \sigma(v) \;(v < 0)

    with every gate the sigmoid of its block."""
    if kind not in MIN_RNNS:
        raise ValueError(f"kind {kind!r}; expected one of {tuple(MIN_RNNS)}")
    return _MinScan.apply(pre, kind, reverse)


class _IndScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xp: Tensor, u: Tensor, activation: str, reverse: bool) -> Tensor:
        compiled = native.usable(xp, u)
        xp = xp.contiguous()
        if compiled is None:
            hs = _IndScan.loop(xp, u, activation, reverse)
        else:
            hs = compiled.indrnn_forward(xp, u, _ACTIVATION_CODES[activation], reverse)
        ctx.save_for_backward(hs, u)
        ctx.activation, ctx.reverse = activation, reverse
        return hs

    @staticmethod
    def loop(xp: Tensor, u: Tensor, activation: str, reverse: bool) -> Tensor:
        """The forward time loop in Python."""
        hs = torch.empty_like(xp)
        h = xp.new_zeros(xp[:, 0].shape)
        w = u.unsqueeze(1)
        xs, h_steps = _steps(xp), _steps(hs)
        for t in _order(xp.shape[1], reverse)[0]:
            _activate(activation, torch.addcmul(xs[t], w, h), h_steps[t])
            h = h_steps[t]
        return hs

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, u = ctx.saved_tensors
        compiled = native.usable(hs, dhs)
        if compiled is not None:
            dxp, du = compiled.indrnn_backward(dhs, hs, u, _ACTIVATION_CODES[ctx.activation], ctx.reverse)
        else:
            dxp, du = _IndScan.backward_loop(dhs, hs, u, ctx.activation, ctx.reverse)
        return dxp, du, None, None

    @staticmethod
    def backward_loop(dhs: Tensor, hs: Tensor, u: Tensor, activation: str, reverse: bool) -> tuple[Tensor, Tensor]:
        """The backward time loop in Python: dxp, du."""
        dxp = torch.empty_like(hs)
        dh = hs.new_zeros(hs[:, 0].shape)
        w = u.unsqueeze(1)
        h_steps, dhs_steps, d_steps = _steps(hs), _steps(dhs), _steps(dxp)
        for t in reversed(_order(hs.shape[1], reverse)[0]):
            dh = _activation_backward(activation, dh + dhs_steps[t], h_steps[t], into=d_steps[t]) * w
        return dxp, (dxp * _previous(hs, reverse)).sum(dim=(1, 2))


def indrnn(xp: Tensor, u: Tensor, activation: str = "relu", reverse: bool = False) -> Tensor:
    r""":math:`h_t = \phi(xp_t + u \odot h_{t-1})`, :math:`h_{-1} = 0` (IndRNN: a diagonal recurrence): ``xp``
    (K, T, B, H) with the bias folded in, ``u`` (K, H); returns (K, T, B, H). ``activation``: relu or tanh."""
    if activation not in ("relu", "tanh"):
        raise ValueError(f"activation {activation!r}; expected relu or tanh")
    return _IndScan.apply(xp, u, activation, reverse)


class _SLSTMScan(torch.autograd.Function):
    """sLSTM (:mod:`rnnbench.plugins.slstm`), one head. The stabiliser m is carried, not saved: h does not depend
    on it (it scales c and n alike), so the backward treats it as a constant (autograd's gradients through m sum to
    zero, to rounding)."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, whh: Tensor, exp_forget: bool, reverse: bool) -> Tensor:
        compiled = native.usable(xp, whh)
        loop = _SLSTMScan.loop if compiled is None else compiled.slstm_forward
        hs, cs, ns, acts = loop(xp.contiguous(), whh, exp_forget, reverse)
        ctx.save_for_backward(hs, cs, ns, acts, whh)
        ctx.reverse = reverse
        return hs

    @staticmethod
    def loop(xp: Tensor, whh: Tensor, exp_forget: bool, reverse: bool) -> tuple[Tensor, ...]:
        """The forward time loop in Python: hs, cs, ns and acts (K, T, B, 5H): i', f', tanh(z~), sigma(o~) and
        d log f / d f~."""
        K, T, B, G = xp.shape
        H = G // 4
        hs, cs, ns = (xp.new_empty(K, T, B, H) for _ in range(3))
        acts = xp.new_empty(K, T, B, 5 * H)
        h, c, n = (xp.new_zeros(K, B, H) for _ in range(3))
        m = xp.new_full((K, B, H), -torch.inf)
        whh_t = whh.transpose(1, 2).contiguous()
        xs, h_steps, c_steps, n_steps = _steps(xp), _steps(hs), _steps(cs), _steps(ns)
        ip_steps, fp_steps, g_steps, o_steps, fg_steps = _block_steps(acts, H)
        for t in _order(T, reverse)[0]:
            i_raw, f_raw, z_raw, o_raw = torch.baddbmm(xs[t], h, whh_t).chunk(4, dim=-1)
            log_f_m = (f_raw if exp_forget else torch.nn.functional.logsigmoid(f_raw)) + m
            m = torch.maximum(log_f_m, i_raw)
            ip, fp, g, o = torch.exp(i_raw - m), torch.exp(log_f_m - m), torch.tanh(z_raw), torch.sigmoid(o_raw)
            for target, value in ((ip_steps, ip), (fp_steps, fp), (g_steps, g), (o_steps, o)):
                target[t].copy_(value)
            if exp_forget:
                fg_steps[t].fill_(1.0)
            else:
                torch.sigmoid(-f_raw, out=fg_steps[t])
            c = torch.addcmul(fp * c, ip, g, out=c_steps[t])
            n = torch.addcmul(ip, fp, n, out=n_steps[t])
            h = torch.div(o * c, n, out=h_steps[t])
        return hs, cs, ns, acts

    @staticmethod
    def backward(ctx: Any, dhs: Tensor) -> tuple[Tensor | None, ...]:
        hs, cs, ns, acts, whh = ctx.saved_tensors
        compiled = native.usable(acts, dhs)
        loop = _SLSTMScan.backward_loop if compiled is None else compiled.slstm_backward
        dpre = loop(dhs, cs, ns, acts, whh, ctx.reverse)
        return dpre, _weight_grad(dpre, hs, ctx.reverse), None, None

    @staticmethod
    def backward_loop(dhs: Tensor, cs: Tensor, ns: Tensor, acts: Tensor, whh: Tensor, reverse: bool) -> Tensor:
        """The backward time loop in Python: d pre-activations (K, T, B, 4H), blocks i, f, z, o."""
        K, T, B, H = cs.shape
        dpre = cs.new_empty(K, T, B, 4 * H)
        dz, dc, dn, zero = (cs.new_zeros(K, B, H) for _ in range(4))
        ip_steps, fp_steps, g_steps, o_steps, fg_steps = _block_steps(acts, H)
        d_i, d_f, d_z, d_o = _block_steps(dpre, H)
        d_steps, dh_steps, c_steps, n_steps = _steps(dpre), _steps(dhs), _steps(cs), _steps(ns)
        order, back = _order(T, reverse)
        first = order[0]
        for t in reversed(order):
            ip, fp, g, o = ip_steps[t], fp_steps[t], g_steps[t], o_steps[t]
            c0, n0 = (zero, zero) if t == first else (c_steps[t + back], n_steps[t + back])
            dh = dh_steps[t] + dz
            cn = c_steps[t] / n_steps[t]
            dho_n = dh * o / n_steps[t]
            dc = dc + dho_n
            dn = dn - dho_n * cn
            torch.mul(torch.addcmul(dn, dc, g), ip, out=d_i[t])
            torch.mul(torch.addcmul(dc * c0, dn, n0), fp * fg_steps[t], out=d_f[t])
            _tanh_backward.grad_input(dc * ip, g, grad_input=d_z[t])
            _sigmoid_backward.grad_input(dh * cn, o, grad_input=d_o[t])
            dc, dn = dc * fp, dn * fp
            dz = torch.bmm(d_steps[t], whh)
        return dpre


def slstm(xp: Tensor, whh: Tensor, exp_forget: bool = False, reverse: bool = False) -> Tensor:
    r"""sLSTM with one head (:class:`rnnbench.plugins.slstm.SLSTMCell`): ``xp`` (K, T, B, 4H) = W x + b_ih + b_hh
    (blocks i, f, z, o), ``whh`` (K, 4H, H) = R; the forget gate's logarithm is log sigma(f~), or f~ itself with
    ``exp_forget``. Returns h (K, T, B, H) from h = c = n = 0, m = -inf."""
    return _SLSTMScan.apply(xp, whh, exp_forget, reverse)


class _LRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, lr: Tensor, li: Tensor, b_re: Tensor, b_im: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
        compiled = native.usable(b_re, lr)
        loop = _LRUScan.loop if compiled is None else compiled.lru_forward
        s_re, s_im = loop(lr, li, b_re.contiguous(), b_im.contiguous(), reverse)
        ctx.save_for_backward(s_re, s_im, lr, li)
        ctx.reverse = reverse
        return s_re, s_im

    @staticmethod
    def loop(lr: Tensor, li: Tensor, b_re: Tensor, b_im: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
        """The forward time loop in Python."""
        s_re, s_im = torch.empty_like(b_re), torch.empty_like(b_im)
        p_re, p_im = b_re.new_zeros(b_re[:, 0].shape), b_im.new_zeros(b_im[:, 0].shape)
        wr, wi = lr.unsqueeze(1), li.unsqueeze(1)
        xr, xi, sr, si = _steps(b_re), _steps(b_im), _steps(s_re), _steps(s_im)
        for t in _order(b_re.shape[1], reverse)[0]:
            re = torch.addcmul(torch.addcmul(xr[t], wr, p_re), wi, p_im, value=-1.0, out=sr[t])
            p_im = torch.addcmul(torch.addcmul(xi[t], wr, p_im), wi, p_re, out=si[t])
            p_re = re
        return s_re, s_im

    @staticmethod
    def backward(ctx: Any, ds_re: Tensor, ds_im: Tensor) -> tuple[Tensor | None, ...]:
        s_re, s_im, lr, li = ctx.saved_tensors
        compiled = native.usable(s_re, ds_re)
        loop = _LRUScan.backward_loop if compiled is None else compiled.lru_backward
        db_re, db_im, dlr, dli = loop(ds_re, ds_im, s_re, s_im, lr, li, ctx.reverse)
        return dlr, dli, db_re, db_im, None

    @staticmethod
    def backward_loop(ds_re: Tensor, ds_im: Tensor, s_re: Tensor, s_im: Tensor, lr: Tensor, li: Tensor,
                      reverse: bool) -> tuple[Tensor, ...]:
        """The backward time loop in Python: d b (the carried gradient of s_t), then d lambda at once."""
        db_re, db_im = torch.empty_like(s_re), torch.empty_like(s_im)
        c_re, c_im = s_re.new_zeros(s_re[:, 0].shape), s_im.new_zeros(s_im[:, 0].shape)
        wr, wi = lr.unsqueeze(1), li.unsqueeze(1)
        gr, gi, dr, di = _steps(ds_re), _steps(ds_im), _steps(db_re), _steps(db_im)
        for t in reversed(_order(s_re.shape[1], reverse)[0]):
            g_re, g_im = torch.add(gr[t], c_re, out=dr[t]), torch.add(gi[t], c_im, out=di[t])
            c_re = torch.addcmul(wr * g_re, wi, g_im)
            c_im = torch.addcmul(wr * g_im, wi, g_re, value=-1.0)
        p_re, p_im = _previous(s_re, reverse), _previous(s_im, reverse)
        dlr = (db_re * p_re + db_im * p_im).sum(dim=(1, 2))
        dli = (db_im * p_re - db_re * p_im).sum(dim=(1, 2))
        return db_re, db_im, dlr, dli


def lru_scan(lr: Tensor, li: Tensor, b_re: Tensor, b_im: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
    r"""The LRU's recurrence :math:`s_t = \lambda \odot s_{t-1} + b_t`, :math:`s_{-1} = 0`, in complex numbers held
    as real pairs: :math:`\lambda` = ``lr`` + i ``li`` (K, N), constant in time; ``b_re``, ``b_im`` (K, T, B, N);
    returns the real and imaginary parts of s (K, T, B, N)."""
    return _LRUScan.apply(lr, li, b_re, b_im, reverse)


class _S6Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, C: Tensor, reverse: bool) -> Tensor:
        inputs = [t.contiguous() for t in (u, dt, A, Bm, C)]
        compiled = native.usable(*inputs)
        ys, ss = (_S6Scan.loop if compiled is None else compiled.s6_forward)(*inputs, reverse)
        ctx.save_for_backward(*inputs, ss)
        ctx.reverse = reverse
        return ys

    @staticmethod
    def loop(u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, C: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
        """The forward time loop in Python: ys (K, T, B, H), the states (K, T, B, N, H)."""
        K, T, B, H = u.shape
        ss = u.new_empty(K, T, B, A.shape[-1], H)
        s = u.new_zeros(K, B, A.shape[-1], H)
        decay = torch.exp(dt.unsqueeze(-2) * _s6_a(A))  # (K, T, B, N, H)
        drive = Bm.unsqueeze(-1) * (dt * u).unsqueeze(-2)
        a_steps, b_steps, s_steps = _steps(decay), _steps(drive), _steps(ss)
        for t in _order(T, reverse)[0]:
            s = torch.addcmul(b_steps[t], a_steps[t], s, out=s_steps[t])
        return (ss * C.unsqueeze(-1)).sum(-2), ss

    @staticmethod
    def backward(ctx: Any, dys: Tensor) -> tuple[Tensor | None, ...]:
        *inputs, ss = ctx.saved_tensors
        compiled = native.usable(ss, dys)
        loop = _S6Scan.backward_loop if compiled is None else compiled.s6_backward
        du, ddt, dB, dC, dA = loop(dys, *inputs, ss, ctx.reverse)
        return du, ddt, dA, dB, dC, None

    @staticmethod
    def backward_loop(dys: Tensor, u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, C: Tensor, ss: Tensor,
                      reverse: bool) -> tuple[Tensor, ...]:
        """The backward in Python: the gradient carried through the states (one addcmul per step), then every
        input's gradient at once."""
        a = _s6_a(A)
        decay = torch.exp(dt.unsqueeze(-2) * a)
        g = C.unsqueeze(-1) * dys.unsqueeze(-2)  # d s_t from y_t, (K, T, B, N, H); the carried part is added below
        carry = torch.zeros_like(g[:, 0])
        g_steps, a_steps = _steps(g), _steps(decay)
        for t in reversed(_order(u.shape[1], reverse)[0]):
            carry = a_steps[t] * g_steps[t].add_(carry)
        dlog = g * _previous(ss, reverse) * decay  # d (dt A)
        dtu = (g * Bm.unsqueeze(-1)).sum(-2)
        dA = (dlog * dt.unsqueeze(-2)).sum(dim=(1, 2)).transpose(1, 2)
        ddt = (dlog * a).sum(-2) + dtu * u
        dB = (g * (dt * u).unsqueeze(-2)).sum(-1)
        dC = (ss * dys.unsqueeze(-2)).sum(-1)
        return dtu * dt, ddt, dB, dC, dA


def _s6_a(A: Tensor) -> Tensor:
    """A (K, H, N) as it multiplies the states (K, T, B, N, H): (K, 1, 1, N, H)."""
    return A.transpose(1, 2).unsqueeze(1).unsqueeze(1)


def s6_scan(u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, C: Tensor, reverse: bool = False) -> Tensor:
    r"""Mamba's selective scan (S6) without the skip term: for every channel h a state :math:`s_{t,h} \in
    \mathbb{R}^N`, :math:`s_t = \exp(\Delta_t A) \odot s_{t-1} + (\Delta_t u_t) B_t`, :math:`s_{-1} = 0`, and
    :math:`y_{t,h} = s_{t,h} \cdot C_t`. ``u``, ``dt`` (K, T, B, H); ``A`` (K, H, N); ``Bm``, ``C`` (K, T, B, N);
    returns y (K, T, B, H). The states of every step are kept for the backward pass (K x T x B x N x H)."""
    return _S6Scan.apply(u, dt, A, Bm, C, reverse)
