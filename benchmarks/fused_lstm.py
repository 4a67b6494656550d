"""Experiment: an LSTM layer with hand-written BPTT and fused gate arithmetic, against rnnbench's eager loop
and torch's ``nn.LSTM``.

``HandLSTM`` is one ``torch.autograd.Function`` over the whole sequence. Its forward runs the time loop without
building an autograd graph: per step one ``addmm`` for the recurrent GEMM and the gate arithmetic (sigmoid over
all four blocks at once, tanh over g, the cell update, tanh(c), h), written into preallocated (T, B, .) buffers.
Its backward is the reverse loop: per step the gate gradients from the saved activations and one GEMM for dh;
the weight gradients are two GEMMs over all T*B rows at the end. Per step that is about 8 ops forward and 15
backward, against roughly 100 autograd ops for the eager cell.

Variants of the gate arithmetic: ``eager`` (torch ops with ``out=``), and with ``--compile`` the same step
functions through ``torch.compile`` (Inductor C++ kernels, one per direction; cold compile takes tens of seconds).

Timing as in ``cells.py``: one training step (forward, MSE on the last step's head output, backward, gradients
to None), rounds interleaved, median per sequence step. A correctness check against ``nn.LSTM`` with the same
weights runs first (outputs and weight gradients).

    python benchmarks/fused_lstm.py --hidden 32 128 --lengths 100
    python benchmarks/fused_lstm.py --hidden 32 --compile --threads 1
"""

from __future__ import annotations

import os

import torch

_WANT_FTZ = os.environ.get("RNNBENCH_BENCH_FTZ", "1") != "0"
FTZ = bool(torch.set_flush_denormal(_WANT_FTZ)) and _WANT_FTZ

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

from torch import Tensor, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from common import (LoadMeter, keep_freed_memory, log, machine_info, machine_md, md_table,  # noqa: E402
                    median, write_json, write_text)

BATCH = 128
INPUT = 2


def gates_forward(pre: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(B, 4H) pre-activations in torch's order i, f, g, o -> activations (B, 4H), c, tanh(c), h."""
    H = c_prev.shape[1]
    act = torch.sigmoid(pre)
    act[:, 2 * H:3 * H] = torch.tanh(pre[:, 2 * H:3 * H])
    i, f, g, o = act.chunk(4, 1)
    c = torch.addcmul(f * c_prev, i, g)
    tc = torch.tanh(c)
    return act, c, tc, o * tc


def gates_backward(dh: Tensor, dc: Tensor, act: Tensor, c_prev: Tensor, tc: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of the step's pre-activations (B, 4H) and of c_prev, from dh_t and dc_t (from later steps)."""
    i, f, g, o = act.chunk(4, 1)
    dc = torch.addcmul(dc, dh * o, 1 - tc * tc)
    d_act = torch.cat([dc * g, dc * c_prev, dc * i, dh * tc], dim=1)
    slope = act * (1 - act)
    H = c_prev.shape[1]
    slope[:, 2 * H:3 * H] = 1 - g * g
    return d_act * slope, dc * f


class HandLSTMFunction(torch.autograd.Function):
    """Whole-sequence LSTM with explicit BPTT. x (T, B, I) time-major; returns h for every step (T, B, H)."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, fwd, bwd):  # noqa: ANN001
        T, B, _ = x.shape
        H = w_hh.shape[1]
        xp = torch.addmm(b_ih + b_hh, x.reshape(T * B, -1), w_ih.t()).view(T, B, 4 * H)
        w_hh_t = w_hh.t()
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        hs, cs, acts, tcs = [h], [c], [], []
        for x_t in xp.unbind(0):
            act, c, tc, h = fwd(torch.addmm(x_t, h, w_hh_t), c)
            hs.append(h)
            cs.append(c)
            acts.append(act)
            tcs.append(tc)
        ctx.bwd = bwd
        h_all = torch.stack(hs)
        ctx.save_for_backward(x, w_ih, w_hh, h_all, torch.stack(cs), torch.stack(acts), torch.stack(tcs))
        return h_all[1:]

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001
        x, w_ih, w_hh, hs, cs, acts, tcs = ctx.saved_tensors
        T, B, _ = x.shape
        H = w_hh.shape[1]
        dh = torch.zeros(B, H)
        dc = torch.zeros(B, H)
        dpres = [None] * T
        douts = dout.unbind(0)
        for t in range(T - 1, -1, -1):
            dpre, dc = ctx.bwd(dh + douts[t], dc, acts[t], cs[t], tcs[t])
            dpres[t] = dpre
            dh = torch.mm(dpre, w_hh)
        dpre_all = torch.stack(dpres).view(T * B, 4 * H)
        d_w_hh = torch.mm(dpre_all.t(), hs[:-1].reshape(T * B, H))
        d_w_ih = torch.mm(dpre_all.t(), x.reshape(T * B, -1))
        db = dpre_all.sum(0)
        dx = torch.mm(dpre_all, w_ih).view_as(x) if ctx.needs_input_grad[0] else None
        return dx, d_w_ih, d_w_hh, db, db, None, None


class HandLSTM(nn.Module):
    """Batch-first LSTM layer + linear head on the last step, weights in torch's layout."""

    def __init__(self, input_size: int, hidden: int, compiled: bool = False) -> None:
        super().__init__()
        ref = nn.LSTM(input_size, hidden)
        self.weight_ih, self.weight_hh = ref.weight_ih_l0, ref.weight_hh_l0
        self.bias_ih, self.bias_hh = ref.bias_ih_l0, ref.bias_hh_l0
        self.head = nn.Linear(hidden, 1)
        if compiled:
            self.fwd = torch.compile(gates_forward, dynamic=False, fullgraph=True)
            self.bwd = torch.compile(gates_backward, dynamic=False, fullgraph=True)
        else:
            self.fwd, self.bwd = gates_forward, gates_backward

    def forward(self, x: Tensor) -> Tensor:
        out = HandLSTMFunction.apply(x.transpose(0, 1).contiguous(), self.weight_ih, self.weight_hh, self.bias_ih,
                                     self.bias_hh, self.fwd, self.bwd)
        return self.head(out[-1])


class TorchLSTM(nn.Module):
    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def train_step(model: nn.Module, x: Tensor, y: Tensor) -> None:
    F.mse_loss(model(x), y).backward()
    for p in model.parameters():
        p.grad = None


def check(hidden: int, compiled: bool) -> float:
    """Largest abs difference of output and weight gradients against nn.LSTM with the same weights (float64)."""
    torch.manual_seed(0)
    hand = HandLSTM(INPUT, hidden, compiled).double()
    ref = TorchLSTM(INPUT, hidden).double()
    with torch.no_grad():
        ref.rnn.weight_ih_l0.copy_(hand.weight_ih)
        ref.rnn.weight_hh_l0.copy_(hand.weight_hh)
        ref.rnn.bias_ih_l0.copy_(hand.bias_ih)
        ref.rnn.bias_hh_l0.copy_(hand.bias_hh)
        ref.head.load_state_dict(hand.head.state_dict())
    x = torch.rand(4, 30, INPUT, dtype=torch.float64)
    worst = 0.0
    outs = []
    for model in (hand, ref):
        out = model(x)
        out.sum().backward()
        outs.append([out] + [p.grad for p in model.parameters()])
    for a, b in zip(outs[0], outs[1]):
        worst = max(worst, float((a - b).detach().abs().max()))
    return worst


def count_ops(model: nn.Module, x: Tensor, y: Tensor, length: int) -> dict[str, float]:
    """aten ops (and their self CPU time) per sequence step of one training step, from torch.profiler: a
    load-independent view of where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    train_step(model, x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, x, y)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    calls = sum(e.count for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::bmm"))
    total = sum(e.self_cpu_time_total for e in events)
    return {"aten_calls_per_step": calls / length, "gemm_share_of_aten_self_time": gemm / total if total else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--lengths", nargs="+", type=int, default=[100])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the gate step functions")
    parser.add_argument("--keep-memory", action="store_true",
                        help="glibc: no mmap, no trim (common.keep_freed_memory), set before any tensor")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--count-ops", action="store_true", help="also count aten calls per step (profiler)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    if args.keep_memory:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)

    from rnnbench.manager import get_registry
    from rnnbench.model import build_model
    from rnnbench.tasks.adding import AddingTask

    info = machine_info(FTZ)
    meter = LoadMeter()
    spec = get_registry().cell("lstm")
    kwargs = {k: v for k, v in dataclasses.asdict(spec.config()).items() if k != "name"}
    results = []
    for hidden in args.hidden:
        err = check(hidden, False)
        log(f"hidden {hidden}: hand BPTT (eager gates) vs nn.LSTM, float64: max |diff| {err:.2e}")
        for length in args.lengths:
            task = AddingTask(dependency_length=length)
            batch = task.sample(BATCH, torch.Generator().manual_seed(1))
            torch.manual_seed(0)
            models = {
                "nn.LSTM": TorchLSTM(INPUT, hidden),
                "rnnbench lstm (loop)": build_model(spec, kwargs, task, hidden, fused=False),
                "rnnbench lstm (fused)": build_model(spec, kwargs, task, hidden, fused=True),
                "hand BPTT, eager gates": HandLSTM(INPUT, hidden),
            }
            if args.compile:
                models["hand BPTT, compiled gates"] = HandLSTM(INPUT, hidden, compiled=True)
            for name, model in models.items():
                start = time.perf_counter()
                for _ in range(2):
                    train_step(model, batch.x, batch.y)
                if "compiled" in name:
                    log(f"  {name}: warm-up incl. compile {time.perf_counter() - start:.1f} s")
            times: dict[str, list[float]] = {k: [] for k in models}
            loads: list[float] = []
            names = list(models)
            for rnd in range(args.repeats):
                mark = meter.start()
                for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                    t0 = time.perf_counter()
                    train_step(models[name], batch.x, batch.y)
                    times[name].append((time.perf_counter() - t0) / length * 1e6)
                loads.append(meter.stop(mark))
            ref = median(times["nn.LSTM"])
            for name in names:
                ops = count_ops(models[name], batch.x, batch.y, length) if args.count_ops else {}
                row = {**ops, "impl": name, "hidden": hidden, "length": length, "us_per_step": median(times[name]),
                       "vs_nn_lstm": median(times[name]) / ref,
                       "speedup_over_nn_lstm": ref / median(times[name]), "times_us": times[name],
                       "other_load": median(loads)}
                results.append(row)
                log(f"  h{hidden} T{length} {name:28s} {row['us_per_step']:8.0f} us/step  x{row['vs_nn_lstm']:.2f} "
                    f"nn.LSTM" + (f"  {ops['aten_calls_per_step']:.0f} aten calls/step" if ops else ""))
    if args.compile:
        err = check(args.hidden[0], True)
        log(f"compiled gates vs nn.LSTM, float64: max |diff| {err:.2e}")
    suffix = f"-{args.tag}" if args.tag else ""
    write_json(f"fused_lstm{suffix}.json", {"machine": info, "settings": vars(args), "rows": results})
    md = ("# Experiment: hand-written BPTT LSTM with fused gate arithmetic\n\n" + machine_md(info) + "\n"
          + md_table(["impl", "hidden", "length", "us/step", "x nn.LSTM", "speed-up over nn.LSTM", "aten calls/step",
                      "GEMM share", "other load"],
                     [[r["impl"], r["hidden"], r["length"], r["us_per_step"], r["vs_nn_lstm"],
                       r["speedup_over_nn_lstm"], r.get("aten_calls_per_step", ""),
                       f"{r['gemm_share_of_aten_self_time']:.0%}" if "gemm_share_of_aten_self_time" in r else "",
                       f"{r['other_load']:.0%}"] for r in results]))
    write_text(f"fused_lstm{suffix}.md", md)
    print(md)


if __name__ == "__main__":
    main()
