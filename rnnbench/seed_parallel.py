"""Seed-parallel training: K independent models of one configuration trained in lockstep as one batched model.

Each member ``k`` of the batch is exactly the run that :func:`rnnbench.train.train` would make with seed
``seeds[k]``, up to float rounding:

- initial weights: ``torch.manual_seed(seed)`` then :func:`rnnbench.model.build_model` with the config's
  ``model.fused``, as the runner does (the fused path draws the readout head after ``nn.GRU``/``nn.LSTM``'s own
  init, so the flag matters for the weights even though both paths compute the same function);
- data: its own train stream ``stream_seed(seed, "train")`` and held-out streams ``stream_seed(seed, "eval:i")``;
- gradient clipping: per member, on the global norm of that member's gradients (``norm``) or per element
  (``value``);
- optimiser: one optimiser over the stacked ``(K, ...)`` parameters. Adam, AdamW, RMSprop and SGD (with
  momentum and weight decay) update every element from that element's gradient and state only, so one optimiser
  over stacked tensors applies K separate optimisers' updates; their only shared state, Adam's step count, is
  the same for all members because they step in lockstep;
- the loss is the sum of the members' losses: parameters are disjoint, so each member's gradient is the
  gradient of its own loss.

Members stop independently. A member whose held-out accuracy reaches ``trainer.solved_threshold`` (with
``trainer.early_stop``) or whose loss, gradient norm or evaluation becomes non-finite is frozen at that step:
it leaves the batch (no more forward passes, logging or updates; its weights are restored after every
optimiser step) and its :class:`~rnnbench.train.RunResult` is the one a separate run would have returned. The
loop ends when every member is frozen or ``trainer.steps`` is reached.

Two compute paths (``path``):

- ``kernel``: for cells that declare a fused mode (``GRU``, ``LSTM``, ``RNN_TANH``, ``RNN_RELU``: their math is
  torch's), a hand-batched encoder: the input projection of all steps in one batched matmul, then per step one
  ``baddbmm`` over the K stacked recurrent matrices, with a hand-written backward through time that keeps the
  per-step work to one ``bmm`` and a few elementwise ops and computes the recurrent weight gradient in one
  large ``bmm`` after the loop.
- ``vmap``: any cell, through ``torch.func.vmap`` over ``functional_call`` of the step-by-step loop model.
  torch's fused ``nn.GRU``/``nn.LSTM`` have no vmap batching rule, hence the loop model.

Cost on one CPU thread (``benchmarks/seed_parallel.py``, adding T=100, hidden 64, batch 64, shared 2-core
machine): 8 GRU seeds batched take about 4x one seed's step and half the time of 8 runs in a row; the step is
compute-bound there (8x the FLOPs), so the 2x of a launch-bound accelerator is not reached. For the LSTM,
torch's oneDNN kernel makes a single CPU run so fast that 8 batched seeds are slower than 8 runs in a row.

Not supported on this path: checkpoints and resume (a stop request raises
:class:`~rnnbench.train.Interrupted` without saving), ``on_step`` callbacks (diagnostics), and bit-identical
dropout masks (with ``model.dropout > 0`` every member draws its own masks, not those a separate run would draw).
Batches of variable length (adding ``hochreiter1997``/``pascanu2013``) are grouped by shape; each group is one
batched forward, so such tasks gain less.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnnbench.base import Batch, Task
from rnnbench.layers import FusedEncoder
from rnnbench.model import SequenceModel, build_model
from rnnbench.registry import CellSpec
from rnnbench.tracking import Tracker
from rnnbench.train import Interrupted, Progress, RunResult, make_optimizer, outcome_of, stream_seed

log = logging.getLogger("rnnbench")

KERNEL_MODES = ("GRU", "LSTM", "RNN_TANH", "RNN_RELU")
_CELL_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
Params = dict[str, Tensor]


# --------------------------------------------------------------------------------------------------------------
# Weights: K models built as the runner builds them, stacked under the loop model's parameter names.


def loop_state(model: SequenceModel) -> Params:
    """The model's parameters under the names of the equivalent loop model (``encoder.layers.{l}.{fwd,bwd}.*``,
    ``head.*``), whichever encoder it has."""
    encoder = model.encoder
    if isinstance(encoder, FusedEncoder):
        rnn = encoder.rnn
        state: Params = {}
        for layer in range(rnn.num_layers):
            for direction, name in enumerate(("fwd", "bwd")[: 2 if rnn.bidirectional else 1]):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                for p in _CELL_PARAMS:
                    state[f"encoder.layers.{layer}.{name}.{p}"] = getattr(rnn, p + suffix)
        state.update({f"head.{n}": p for n, p in model.head.named_parameters()})
        return state
    return dict(model.named_parameters())


def build_seed_models(
    spec: CellSpec, cell_kwargs: dict[str, Any], task: Task, seeds: Sequence[int], hidden_size: int,
    fused: bool = True, **model_kwargs: Any,
) -> list[SequenceModel]:
    """One model per seed, each with exactly the initial weights of a separate run with that seed."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(spec, cell_kwargs, task, hidden_size, fused=fused, **model_kwargs))
    return models


def stack_params(models: Sequence[SequenceModel], device: torch.device) -> Params:
    """Leaf tensors of shape ``(K, ...)``, one per loop-model parameter, member k holding ``models[k]``'s values."""
    states = [loop_state(m) for m in models]
    return {
        name: torch.stack([s[name].detach() for s in states]).to(device).requires_grad_(True) for name in states[0]
    }


def load_member(params: Params, index: int, model: SequenceModel) -> SequenceModel:
    """Copy member ``index`` of stacked ``params`` into ``model`` (a separate run's model, fused or loop)."""
    state = loop_state(model)
    with torch.no_grad():
        for name, p in state.items():
            p.copy_(params[name][index])
    return model


def choose_path(spec: CellSpec, model: SequenceModel, path: str = "auto") -> str:
    """``kernel`` when the cell's math is torch's (a fused mode) and has exactly torch's four tensors per cell,
    else ``vmap``. ``path`` forces one (``kernel`` raises if the cell does not qualify)."""
    names = set(loop_state(model))
    cells = {n.rsplit(".", 1)[0] for n in names if n.startswith("encoder.")}
    standard = all(names >= {f"{c}.{p}" for p in _CELL_PARAMS} for c in cells) and len(names) == 4 * len(cells) + 2
    ok = spec.fused in KERNEL_MODES and standard
    if path == "auto":
        return "kernel" if ok else "vmap"
    if path == "kernel" and not ok:
        raise ValueError(f"cell {spec.name!r} has no batched kernel (fused mode {spec.fused!r}); use path='vmap'")
    if path not in ("kernel", "vmap"):
        raise ValueError(f"unknown seed-parallel path {path!r}: auto, kernel or vmap")
    return path


# --------------------------------------------------------------------------------------------------------------
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
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                seq = nn.functional.dropout(seq, self.dropout, self.training)
            flat = seq.reshape(K, T * B, seq.shape[-1])
            outs = []
            for name in ("fwd", "bwd")[: 2 if self.bidirectional else 1]:
                p = f"encoder.layers.{layer}.{name}."
                weight_ih = params[p + "weight_ih"]  # (K, G, F)
                xp = torch.bmm(flat, weight_ih.transpose(1, 2)).view(K, T, B, weight_ih.shape[1])
                outs.append(_scan(self.mode, xp, params[p + "weight_hh"], params[p + "bias_ih"],
                                  params[p + "bias_hh"], reverse=name == "bwd"))
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


# --------------------------------------------------------------------------------------------------------------
# The training loop.

@dataclass
class _Member:
    seed: int
    tracker: Tracker
    train_gen: torch.Generator
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    clipped_steps: int = 0
    done: bool = False
    result: RunResult | None = None
    snapshot: Params | None = None


def _forward_groups(forward: Callable[[Params, Tensor], Tensor], params: Params, xs: list[Tensor],
                    members: list[int], K: int) -> list[Tensor]:
    """Outputs of ``members`` (indices into the K stacked models) on their inputs ``xs``: one batched forward
    per distinct input shape, the whole stack without gathering when every member runs on one shape."""
    outputs: list[Tensor | None] = [None] * len(xs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, x in enumerate(xs):
        groups.setdefault(tuple(x.shape), []).append(j)
    for rows in groups.values():
        idx = [members[j] for j in rows]
        if idx == list(range(K)):
            sub = params
        else:
            index = torch.tensor(idx, device=xs[0].device)
            sub = {n: p.index_select(0, index) for n, p in params.items()}
        out = forward(sub, torch.stack([xs[j] for j in rows]))
        for pos, j in enumerate(rows):
            outputs[j] = out[pos]
    return outputs  # type: ignore[return-value]


def _evaluate(forward: Any, params: Params, task: Task, cfg: Any, members: list[_Member], active: list[int],
              index: int, device: torch.device) -> dict[int, dict[str, float]]:
    """train.evaluate for every active member, on member k's held-out stream ``eval:<index>`` of its seed."""
    gens = {k: torch.Generator(device=device).manual_seed(stream_seed(members[k].seed, f"eval:{index}"))
            for k in active}
    totals: dict[int, dict[str, Tensor]] = {k: {} for k in active}
    forward.training = False
    try:
        with torch.no_grad():
            for _ in range(cfg.trainer.eval_batches):
                batches = [task.sample(cfg.trainer.batch_size, gens[k]) for k in active]
                outs = _forward_groups(forward, params, [b.x for b in batches], active, len(members))
                for k, out, batch in zip(active, outs, batches):
                    for key, value in task.metrics(out, batch).items():
                        totals[k][key] = totals[k].get(key, 0) + value.detach().float()
    finally:
        forward.training = True
    n = cfg.trainer.eval_batches
    return {k: {key: float(v) / n for key, v in t.items()} for k, t in totals.items()}


def train_seeds(
    cfg: Any,
    spec: CellSpec,
    cell_kwargs: dict[str, Any],
    task: Task,
    seeds: list[int],
    trackers: list[Tracker],
    device: torch.device,
    hidden_size: int,
    *,
    path: str = "auto",
    stop_requested: Callable[[], int | None] | None = None,
    models: list[SequenceModel] | None = None,
    **model_kwargs: Any,
) -> list[RunResult]:
    """Train one model per seed in lockstep; returns one :class:`RunResult` per seed, in the order of ``seeds``.

    ``trackers[k]`` receives member k's metrics under the names :func:`rnnbench.train.train` uses; the caller
    starts and ends those runs. ``model_kwargs`` are :func:`build_model`'s (``num_layers``, ``bidirectional``,
    ``dropout``; ``fused`` defaults to ``cfg.model.fused`` and only decides the initial weights). ``models``, if
    given, are the members' initial models (e.g. from :func:`build_seed_models`) and the trained weights are
    copied back into them. ``path``: ``auto``, ``kernel`` or ``vmap`` (see the module docstring).
    """
    if len(seeds) != len(trackers) or not seeds:
        raise ValueError(f"{len(seeds)} seeds and {len(trackers)} trackers: one tracker per seed, at least one")
    t = cfg.trainer
    fused = model_kwargs.pop("fused", cfg.model.fused)
    if models is None:
        models = build_seed_models(spec, cell_kwargs, task, seeds, hidden_size, fused=fused, **model_kwargs)
    K = len(seeds)
    params = stack_params(models, device)
    chosen = choose_path(spec, models[0], path)
    forward: Any
    if chosen == "kernel":
        forward = KernelModel(spec.fused, model_kwargs.get("num_layers", 1), model_kwargs.get("bidirectional", False),
                              hidden_size, task.readout, model_kwargs.get("dropout", 0.0))
    else:
        forward = VmapModel(spec, cell_kwargs, task, hidden_size, **model_kwargs)
    plist = list(params.values())
    optimizer = make_optimizer(cfg.optim, plist)
    baseline = task.baseline()
    members = [
        _Member(seed, tracker, torch.Generator(device=device).manual_seed(stream_seed(seed, "train")))
        for seed, tracker in zip(seeds, trackers)
    ]
    clip = t.grad_clip
    norm_clip = clip is not None and t.clip_mode == "norm"
    progress = Progress(t.progress, t.steps, 0, f"{cfg.cell.name}/{cfg.task.name} x{K} seeds")
    started = time.perf_counter()
    step, eval_index = 0, 0
    losses: list[Tensor] = []  # per step: (K,) losses, NaN for members that did not run
    norms: list[Tensor] = []
    first_pending = 1
    shapes = [(K, *p.shape[1:]) for p in plist]

    def active() -> list[int]:
        return [k for k, m in enumerate(members) if not m.done]

    def finish(k: int, outcome: str | None, diverged_step: int | None = None) -> None:
        """Freeze member k at the current step with ``outcome`` (None: judged from its last evaluation)."""
        m = members[k]
        m.done = True
        m.snapshot = {n: p.detach()[k].clone() for n, p in params.items()}
        metrics = dict(m.last_eval)
        result = RunResult(outcome or outcome_of(metrics, baseline, cfg), step, metrics, baseline, diverged_step,
                           m.history)
        elapsed = time.perf_counter() - started
        done_steps = max(step, 1)
        summary = {
            "time/steps_per_second": done_steps / elapsed if elapsed > 0 else 0.0,
            "train/clip_fraction": m.clipped_steps / done_steps if norm_clip else 0.0,
        }
        m.tracker.log_metrics(summary, step)
        m.tracker.flush()
        result.metrics.update(summary)
        m.result = result

    def flush() -> None:
        """Log buffered step metrics per member; a member with a non-finite value is finished as diverged."""
        nonlocal losses, norms, first_pending
        if not losses:
            return
        loss_rows = torch.stack(losses).tolist()
        norm_rows = torch.stack(norms).tolist()
        for k in active():
            m = members[k]
            for offset, (lr, nr) in enumerate(zip(loss_rows, norm_rows)):
                s, lv, nv = first_pending + offset, lr[k], nr[k]
                if not (math.isfinite(lv) and math.isfinite(nv)):
                    finish(k, "diverged", s)
                    break
                m.tracker.log_metrics({"train/loss": lv, "train/grad_norm": nv}, s)
                m.history.setdefault("train/loss", []).append((s, lv))
                if norm_clip and nv > clip:
                    m.clipped_steps += 1
            m.tracker.heartbeat()
        running = [row[k] for row in loss_rows[-1:] for k in active()]
        shown = {"loss": sum(running) / len(running)} if running else {}
        accs = [members[k].last_eval["accuracy"] for k in active() if "accuracy" in members[k].last_eval]
        if accs:
            shown["acc"] = sum(accs) / len(accs)
        progress.update(first_pending + len(loss_rows) - 1, len(loss_rows), shown)
        first_pending += len(loss_rows)
        losses, norms = [], []

    try:
        while step < t.steps and active():
            signum = stop_requested() if stop_requested is not None else None
            if signum is not None:
                raise Interrupted(signum)
            step += 1
            running = active()
            batches: list[Batch] = [task.sample(t.batch_size, members[k].train_gen) for k in running]
            outs = _forward_groups(forward, params, [b.x for b in batches], running, K)
            member_losses = [task.loss(out, batch) for out, batch in zip(outs, batches)]
            optimizer.zero_grad(set_to_none=True)
            torch.stack(member_losses).sum().backward()
            grads = [p.grad if p.grad is not None else torch.zeros(s, device=device) for p, s in zip(plist, shapes)]
            sq = torch.stack([g.reshape(K, -1).square().sum(dim=1) for g in grads]).sum(dim=0)
            norm = sq.sqrt()  # (K,) per-member global gradient norm
            if clip is not None:
                if t.clip_mode == "norm":
                    coef = (clip / (norm + 1e-6)).clamp(max=1.0)
                    for g in grads:
                        g.mul_(coef.view(K, *([1] * (g.dim() - 1))))
                else:
                    for g in grads:
                        g.clamp_(-clip, clip)
            optimizer.step()
            if len(running) < K:
                with torch.no_grad():
                    for k, m in enumerate(members):
                        if m.snapshot is not None:
                            for name, p in params.items():
                                p[k] = m.snapshot[name]
            row_loss = torch.full((K,), math.nan, device=device)
            row_loss[running] = torch.stack(member_losses).detach()
            row_norm = torch.full((K,), math.nan, device=device)
            row_norm[running] = norm.detach()[running]
            losses.append(row_loss)
            norms.append(row_norm)

            do_eval = step % t.eval_every == 0 or step == t.steps
            checkpoint_step = step % t.checkpoint_every == 0 or (do_eval and step == t.steps)
            if step % t.log_every == 0 or do_eval or step % t.checkpoint_every == 0:
                flush()
            if do_eval and active():
                eval_index += 1
                results = _evaluate(forward, params, task, cfg, members, active(), eval_index, device)
                for k, metrics in results.items():
                    m = members[k]
                    m.last_eval = metrics
                    if not all(math.isfinite(v) for v in metrics.values()):
                        finish(k, "diverged", step)
                        continue
                    m.tracker.log_metrics({f"eval/{key}": v for key, v in metrics.items()}, step)
                    for key, v in metrics.items():
                        m.history.setdefault(f"eval/{key}", []).append((step, v))
            if checkpoint_step:
                for k in active():
                    members[k].tracker.flush()
            if do_eval and t.early_stop:
                for k in active():
                    if members[k].last_eval.get("accuracy", 0.0) >= t.solved_threshold:
                        finish(k, None)
    finally:
        progress.close()

    left = active()
    if left and not all(members[k].last_eval for k in left):
        eval_index += 1
        for k, metrics in _evaluate(forward, params, task, cfg, members, left, eval_index, device).items():
            members[k].last_eval = metrics
    for k in left:
        finish(k, None)
    for k, model in enumerate(models):
        load_member(params, k, model)
    return [m.result for m in members]  # type: ignore[misc]
