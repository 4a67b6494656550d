"""Per-step cost of every registered cell (step loop, LoopEncoder as trained, and fused path where the spec declares
one) against torch's ``nn.LSTM`` and against the machine's matmul throughput, all measured in the same process,
interleaved. The markdown opens with the before/after table: step loop against the path rnnbench trains on.

One training step is ``model(x)`` on an adding-problem batch (B, T, 2), the MSE loss of the readout, ``backward()``,
gradients reset to ``None``; no optimiser. The model is rnnbench's own (``build_model``: cell encoder + linear
head): ``step`` is ``LoopEncoder`` with every cell's whole-sequence path switched off (autograd through the
Python step loop), ``loop`` is ``LoopEncoder`` as rnnbench trains it (the hand-written kernel of
:mod:`rnnbench.kernels` for every built-in cell, with the compiled time loops of
:mod:`rnnbench.native` where the cell has them), ``pyloop`` the same with the kernels' Python time loops (only cells with compiled ones) and ``fused`` is
``FusedEncoder``. The
reference is a plain ``nn.LSTM(batch_first=True)`` with the same head.

For each (hidden, length) configuration: one or two warm-up steps per implementation, then rounds. Every round
times one step of each implementation (in a rotated order) and the GEMMs of the step's shapes with ``torch.mm``.
An implementation leaves the rounds once it has ``--min-repeats`` repeats and ``--cap`` seconds of timed steps,
or ``--max-repeats`` repeats. Reported per implementation: the median time per sequence step, the ratio to the
reference's median in the same configuration (and the median of per-round ratios), the FLOPs per step counted
from the weight shapes (2*B*(I+H)*G*H forward, x3 for forward + backward), the achieved GFLOP/s and its fraction
of the GEMM rate measured in the same rounds for the same (B, H, G*H) shapes, and the other processes' share of
the CPU while it ran.

``--ftz`` instead measures the denormal effect: ``lstm`` on its fused path at two lengths, in alternating fresh
processes with and without ``torch.set_flush_denormal(True)`` (the setting must precede the OpenMP pool).

    python benchmarks/cells.py --hidden 32 128 512 --lengths 100 1000
    python benchmarks/cells.py --cells lstm gru --configs 512x1000 --tag big
    python benchmarks/cells.py --ftz --hidden 128 --lengths 100 1000
    python benchmarks/cells.py --hidden 512 --skip s6:step@512x1000   # leave out what would not fit in memory
"""

from __future__ import annotations

import os

import torch

_WANT_FTZ = os.environ.get("RNNBENCH_BENCH_FTZ", "1") != "0"
FTZ = bool(torch.set_flush_denormal(_WANT_FTZ)) and _WANT_FTZ

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from common import (LoadMeter, keep_freed_memory, log, machine_info, machine_md, md_table, median, spread,  # noqa: E402
                    write_json, write_text)

BATCH = 128
INPUT = 2
REFERENCE = "nn.LSTM"


class TorchLSTM(nn.Module):
    """The reference: torch's fused ``nn.LSTM`` read out at the last step by a linear head."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@dataclass
class Impl:
    label: str
    cell: str
    path: str
    model: nn.Module
    flops: float
    width: int
    """G*H: the columns of the step's recurrent GEMM."""
    error: str | None = None
    trained: bool = False
    """Whether rnnbench trains this cell on this path on the CPU (``rnnbench.model.uses_fused``)."""


@dataclass
class Timing:
    """The repeats of one implementation at one length."""

    impl: Impl
    length: int
    times: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    skipped: bool = False
    """Named by ``--skip``: not run at this length (e.g. its autograd graph would not fit in memory)."""

    def done(self, min_repeats: int, max_repeats: int, cap: float) -> bool:
        n = len(self.times)
        return (self.impl.error is not None or self.skipped or n >= max_repeats
                or (n >= min_repeats and sum(self.times) * self.length >= cap))


def step_flops(model: nn.Module, batch: int, input_size: int, hidden: int) -> tuple[float, int]:
    """Forward+backward FLOPs per time step from the encoder's 2-D weights (2*B*numel each, x3), and the
    equivalent width G*H of the step's GEMM: forward FLOPs / (2*B*(I+H))."""
    encoder = model.rnn if isinstance(model, TorchLSTM) else model.encoder
    fwd = sum(2.0 * batch * p.numel() for p in encoder.parameters() if p.dim() == 2)
    return 3.0 * fwd, max(1, round(fwd / (2.0 * batch * (input_size + hidden))))


@contextlib.contextmanager
def python_loops(on: bool) -> Iterator[None]:
    """With ``on``, the kernels run their Python time loops instead of the compiled ones (``rnnbench.native``)."""
    from rnnbench import native

    real = native.usable
    if on:
        native.usable = lambda *tensors: None
    try:
        yield
    finally:
        native.usable = real


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    with python_loops(getattr(model, "bench_python_loops", False)):
        loss = F.mse_loss(model(x), y)
        loss.backward()
    for p in model.parameters():
        p.grad = None


def uses_compiled_loops(model: nn.Module) -> bool:
    """Whether a forward pass of ``model`` reaches the compiled time loops."""
    from rnnbench import native

    calls = []
    real = native.usable
    native.usable = lambda *tensors: calls.append(1) or real(*tensors)
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, INPUT))
    finally:
        native.usable = real
    return bool(calls) and native.ops() is not None


def trained_on(spec, path: str) -> bool:
    """Whether rnnbench trains ``spec`` on ``path`` (step, pyloop, loop or fused) on the CPU."""
    from rnnbench.model import uses_fused

    return path in ("loop", "fused") and (path == "fused") == uses_fused(spec, True, "cpu")


def _no_sequence(x: torch.Tensor) -> None:
    return None


def build_impls(cells: list[str], paths: list[str], hidden: int) -> list[Impl]:
    """The reference and every (cell, path); models do not depend on the sequence length."""
    from rnnbench.manager import get_registry
    from rnnbench.model import build_model
    from rnnbench.tasks.adding import AddingTask

    registry = get_registry()
    task = AddingTask(dependency_length=100)
    torch.manual_seed(0)
    ref = TorchLSTM(INPUT, hidden)
    impls = [Impl(REFERENCE, "nn.LSTM", "torch", ref, *step_flops(ref, BATCH, INPUT, hidden))]
    for name in cells:
        spec = registry.cell(name)
        kwargs = {k: v for k, v in dataclasses.asdict(spec.config()).items() if k != "name"}
        for path in paths:
            if path == "fused" and not spec.fused:
                continue
            torch.manual_seed(0)
            model = build_model(spec, kwargs, task, hidden, fused=path == "fused")
            if path == "pyloop":  # the loop path with the kernels' Python time loops, where it has compiled ones
                if not uses_compiled_loops(model):
                    continue
                model.bench_python_loops = True
            if path == "step":  # no whole-sequence path: autograd through the Python step loop
                first = model.encoder.cells()[0]
                if first.forward_sequence(torch.zeros(1, 2, first.input_size)) is None:
                    continue  # the loop path is the step loop already: timed once, as `loop`
                for cell in model.encoder.cells():
                    cell.forward_sequence = _no_sequence
            impls.append(Impl(f"{name} ({path})", name, path, model, *step_flops(model, BATCH, INPUT, hidden),
                              trained=trained_on(spec, path)))
    return impls


def gemm_rate(batch: int, hidden: int, width: int, iters: int) -> float:
    """GFLOP/s of the step's three recurrent GEMMs with torch.mm: h@W (fwd), dA@W^T (dh), h^T@dA (dW)."""
    h = torch.randn(batch, hidden)
    w = torch.randn(hidden, width)
    da = torch.randn(batch, width)
    torch.mm(h, w)
    start = time.perf_counter()
    for _ in range(iters):
        torch.mm(h, w)
        torch.mm(da, w.t())
        torch.mm(h.t(), da)
    elapsed = time.perf_counter() - start
    return 3 * iters * 2.0 * batch * hidden * width / elapsed / 1e9


class OneDnnGemms:
    """The same three GEMM shapes through oneDNN (mkldnn Linear): the kernels nn.LSTM uses on CPU. Where MKL's
    sgemm (torch.mm) takes a slow path (measured: AMD EPYC, half of oneDNN's rate) this is the higher rate; at tiny
    shapes oneDNN's per-call overhead makes it the lower. "of best" divides by the higher of the two."""

    def __init__(self, batch: int, hidden: int, width: int) -> None:
        from torch.utils import mkldnn

        shapes = [(batch, hidden, width), (batch, width, hidden), (hidden, batch, width)]  # (M, K, N)
        self.ops = [(mkldnn.to_mkldnn(nn.Linear(k, n, bias=False)), torch.randn(m, k).to_mkldnn())
                    for m, k, n in shapes]
        self.flops = sum(2.0 * m * k * n for m, k, n in shapes)

    def rate(self, iters: int) -> float:
        with torch.no_grad():
            for op, x in self.ops:
                op(x)
            start = time.perf_counter()
            for _ in range(iters):
                for op, x in self.ops:
                    op(x)
            return iters * self.flops / (time.perf_counter() - start) / 1e9


def square_gemm_rate(n: int = 2048, iters: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    for _ in range(iters):
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2.0 * n**3 / (time.perf_counter() - start) / 1e9)
    return median(rates)


def square_onednn_rate(n: int = 2048, iters: int = 5) -> float:
    try:
        gemm = OneDnnGemms(n, n, n)
    except (RuntimeError, AttributeError):
        return float("nan")
    gemm.rate(1)
    return median([gemm.rate(1) for _ in range(iters)])


def run_hidden(args: argparse.Namespace, hidden: int, lengths: list[int], meter: LoadMeter) -> list[dict]:
    """Every implementation at every length of this hidden size, interleaved in the same rounds, so that the
    per-step growth from the short to the long length is measured under the same machine load."""
    from rnnbench.tasks.adding import AddingTask

    impls = build_impls(args.cells, args.paths, hidden)
    data = {}
    for length in lengths:
        batch = AddingTask(dependency_length=length).sample(BATCH, torch.Generator().manual_seed(1))
        data[length] = (batch.x, batch.y)
    widths = sorted({impl.width for impl in impls})
    gemm_iters = max(3, int(2e8 / (6.0 * BATCH * hidden * max(widths))))
    gemm: dict[int, list[float]] = {w: [] for w in widths}
    onednn: dict[int, list[float]] = {w: [] for w in widths}
    try:
        onednn_ops = {w: OneDnnGemms(BATCH, hidden, w) for w in widths}
    except (RuntimeError, AttributeError):  # a torch build without oneDNN
        onednn_ops = {}
    timings = [Timing(impl, length, skipped=f"{impl.cell}:{impl.path}@{hidden}x{length}" in args.skip)
               for length in lengths for impl in impls]
    refs = {t.length: t for t in timings if t.impl.label == REFERENCE}

    for timing in timings:
        if timing.skipped:
            log(f"  {timing.impl.label} at length {timing.length}: skipped (--skip)")
            continue
        x, y = data[timing.length]
        try:
            for _ in range(2 if timing.length <= 300 else 1):
                train_step(timing.impl.model, x, y)
        except Exception as exc:  # a cell that fails at this size is reported, not fatal
            timing.impl.error = f"{type(exc).__name__}: {exc}"
            log(f"  {timing.impl.label}: {timing.impl.error}")
    started = time.perf_counter()
    rnd = 0
    while True:
        active = [t for t in timings if t.impl.label != REFERENCE
                  and not t.done(args.min_repeats, args.max_repeats, args.cap)]
        needed = {t.length for t in active}
        order = [refs[n] for n in lengths if n in needed or len(refs[n].times) < args.min_repeats] + active
        if not order:
            break
        shift = rnd % len(order)
        for timing in order[shift:] + order[:shift]:
            if timing.impl.error is not None or timing.skipped:
                continue
            x, y = data[timing.length]
            mark = meter.start()
            t0 = time.perf_counter()
            train_step(timing.impl.model, x, y)
            timing.times.append((time.perf_counter() - t0) / timing.length)
            timing.load.append(meter.stop(mark))
            timing.rounds.append(rnd)
        for w in widths:
            gemm[w].append(gemm_rate(BATCH, hidden, w, gemm_iters))
            if w in onednn_ops:
                onednn[w].append(onednn_ops[w].rate(gemm_iters))
        rnd += 1
        if args.verbose:
            log(f"  round {rnd}: {len(active)} still timing, {time.perf_counter() - started:.0f} s")

    seconds = time.perf_counter() - started
    configs = []
    for length in lengths:
        ref = refs[length]
        ref_by_round = dict(zip(ref.rounds, ref.times))
        rows = []
        for timing in (t for t in timings if t.length == length):
            impl = timing.impl
            med = median(timing.times)
            paired = [t / ref_by_round[r] for r, t in zip(timing.rounds, timing.times) if r in ref_by_round]
            gemm_gflops = median(gemm[impl.width])
            onednn_gflops = median(onednn[impl.width])
            achieved = impl.flops / med / 1e9 if timing.times else float("nan")
            rows.append({
                "impl": impl.label, "cell": impl.cell, "path": impl.path, "hidden": hidden, "length": length,
                "batch": BATCH, "input_size": INPUT, "us_per_step": med * 1e6, "repeats": len(timing.times),
                "spread": spread(timing.times), "ratio_vs_lstm": med / median(ref.times),
                "paired_ratio_vs_lstm": median(paired), "mflop_per_step": impl.flops / 1e6,
                "achieved_gflops": achieved, "gemm_gflops": gemm_gflops, "frac_gemm": achieved / gemm_gflops,
                "onednn_gflops": onednn_gflops,
                "frac_best_gemm": achieved / max(gemm_gflops, onednn_gflops if onednn_gflops == onednn_gflops else 0),
                "other_load": median(timing.load), "error": "skipped (--skip)" if timing.skipped else impl.error,
                "trained": impl.trained,
                "times_us": [t * 1e6 for t in timing.times], "rounds": timing.rounds,
            })
        configs.append({"hidden": hidden, "length": length, "rows": rows,
                        "gemm_gflops": {str(w): median(v) for w, v in gemm.items()},
                        "onednn_gflops": {str(w): median(v) for w, v in onednn.items()}, "seconds": seconds})
    return configs


def grid(args: argparse.Namespace) -> dict[int, list[int]]:
    """hidden -> lengths, from ``--configs`` pairs or the product of ``--hidden`` and ``--lengths``."""
    pairs = ([tuple(int(v) for v in c.lower().split("x")) for c in args.configs] if args.configs
             else [(h, t) for h in args.hidden for t in args.lengths])
    out: dict[int, list[int]] = {}
    for hidden, length in pairs:
        out.setdefault(hidden, []).append(length)
    return out


def run_cells(args: argparse.Namespace) -> dict:
    from rnnbench.manager import get_registry

    if not args.cells:
        args.cells = list(get_registry().cells)
    meter = LoadMeter()
    info = machine_info(FTZ)
    plan = grid(args)
    known = {f"{c}:{p}@{h}x{t}" for c in args.cells for p in args.paths for h, ts in plan.items() for t in ts}
    if set(args.skip) - known:
        sys.exit(f"--skip {' '.join(sorted(set(args.skip) - known))}: not a CELL:PATH@HxT of this run's cells, "
                 f"paths and configurations")
    log(f"cells: {len(args.cells)} cells, paths {args.paths}, hidden -> lengths {plan}; threads {info['threads']}, "
        f"FTZ {FTZ}, allocator {info['allocator']}")
    square = square_gemm_rate()
    square_dnn = square_onednn_rate()
    log(f"square 2048^3 GEMM: torch.mm {square:.0f} GFLOP/s, oneDNN {square_dnn:.0f} GFLOP/s")
    configs: list[dict] = []
    payload = {"machine": info, "square_gemm_gflops": square, "square_onednn_gflops": square_dnn,
               "settings": settings(args), "configs": configs}
    for k, (hidden, lengths) in enumerate(plan.items()):
        log(f"[{k + 1}/{len(plan)}] hidden {hidden}, lengths {lengths} (interleaved) ...")
        results = run_hidden(args, hidden, lengths, meter)
        configs.extend(results)
        log(f"  done in {results[0]['seconds']:.0f} s")
        for result in results:
            ref = result["rows"][0]
            log(f"  length {result['length']}: nn.LSTM {ref['us_per_step']:.0f} us/step ({ref['frac_gemm']:.0%} of "
                f"mm GEMM), other load {ref['other_load']:.0%}")
            for row in result["rows"][1:]:
                log(f"    {row['impl']:24s} {row['us_per_step']:9.0f} us/step  x{row['ratio_vs_lstm']:.2f} nn.LSTM"
                    f"  {row['frac_gemm']:5.0%} mm {row['frac_best_gemm']:5.0%} best  n={row['repeats']}")
        write_json(f"cells{suffix(args)}.json", payload)
    write_json(f"cells{suffix(args)}.json", payload)
    write_text(f"cells{suffix(args)}.md", cells_markdown(payload))
    return payload


def rewrite(args: argparse.Namespace) -> None:
    """Re-mark which measured path rnnbench trains on (after a change of ``uses_fused``) and rewrite the files."""
    from common import RESULTS

    from rnnbench.manager import get_registry

    registry = get_registry()
    payload = json.loads((RESULTS / f"cells{suffix(args)}.json").read_text())
    for config in payload["configs"]:
        for row in config["rows"]:
            if row["cell"] in registry.cells:
                row["trained"] = trained_on(registry.cell(row["cell"]), row["path"])
    write_json(f"cells{suffix(args)}.json", payload)
    write_text(f"cells{suffix(args)}.md", cells_markdown(payload))


def suffix(args: argparse.Namespace) -> str:
    return f"-{args.tag}" if args.tag else ""


def settings(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("func",)}


def length_growth(configs: list[dict]) -> list[list]:
    """Per implementation and hidden size: per-step time at the longest length / at the shortest (ratio of
    medians, and the median over rounds of the ratio within a round: both lengths ran in the same rounds)."""
    by_key: dict[tuple[str, int], dict[int, dict]] = {}
    for c in configs:
        for r in c["rows"]:
            by_key.setdefault((r["impl"], r["hidden"]), {})[r["length"]] = r
    rows = []
    for (impl, hidden), per in by_key.items():
        per = {length: r for length, r in per.items() if not r.get("error")}
        if len(per) >= 2:
            lo, hi = per[min(per)], per[max(per)]
            growth = hi["us_per_step"] / lo["us_per_step"]
            short = dict(zip(lo.get("rounds", []), lo["times_us"]))
            paired = median([t / short[r] for r, t in zip(hi.get("rounds", []), hi["times_us"]) if r in short])
            verdict = "yes" if growth <= 1.2 else "NO"
            rows.append([impl, hidden, f"{min(per)}->{max(per)}", lo["us_per_step"], hi["us_per_step"], growth,
                         paired, verdict])
    return rows


GOAL = 1.5
"""The target: every cell's training step at most this many times nn.LSTM's."""


def before_after(configs: list[dict]) -> tuple[list[str], list[list]]:
    """Per cell, per (hidden, length): the paired ratio to nn.LSTM of the step loop (before), of the path rnnbench
    trains on on the CPU (after: the fused module or LoopEncoder, ``rnnbench.model.uses_fused``), and whether the
    goal holds."""
    keys = [(c["hidden"], c["length"]) for c in configs]
    ratio: dict[tuple[str, str, int, int], float] = {}
    failed: set[tuple[str, str, int, int]] = set()
    trained_path: dict[tuple[str, int, int], str] = {}
    cells: list[str] = []
    for c in configs:
        for r in c["rows"]:
            if r.get("error"):
                failed.add((r["cell"], r["path"], c["hidden"], c["length"]))
            if r["cell"] == "nn.LSTM" or r.get("error"):
                continue
            if r["cell"] not in cells:
                cells.append(r["cell"])
            ratio[(r["cell"], r["path"], c["hidden"], c["length"])] = r["paired_ratio_vs_lstm"]
            if r.get("trained"):
                ratio[(r["cell"], "trained", c["hidden"], c["length"])] = r["paired_ratio_vs_lstm"]
                trained_path[(r["cell"], c["hidden"], c["length"])] = r["path"]
    rows = []
    for cell in cells:
        row: list = [cell]
        for h, t in keys:
            before = ratio.get((cell, "step", h, t))
            python = ratio.get((cell, "pyloop", h, t))
            after = ratio.get((cell, "trained", h, t))
            flag = "" if after is None or after <= GOAL else " !"
            middle = "" if python is None else f"{python:.2f} -> "
            if after is None:
                row.append("-")
            elif trained_path.get((cell, h, t)) == "step":  # no whole-sequence path here: the step loop trains
                row.append(f"{after:.2f} (step loop){flag}")
            elif before is None:  # skipped, failed or not among --paths: no before
                row.append(f"- -> {middle}{after:.2f}{flag}")
            else:
                row.append(f"{before:.2f} -> {middle}{after:.2f}{flag}")
        rows.append(row)
    return ["cell", *(f"h{h} T{t}" for h, t in keys)], rows


def cells_markdown(payload: dict) -> str:
    info = payload["machine"]
    out = ["# Cells: time per step, ratio to nn.LSTM, fraction of the GEMM rate\n", machine_md(info),
           f"- square 2048^3 GEMM: torch.mm {payload['square_gemm_gflops']:.0f} GFLOP/s, oneDNN "
           f"{payload.get('square_onednn_gflops', float('nan')):.0f} GFLOP/s\n",
           f"- batch {BATCH}, input size {INPUT} (adding problem); forward + backward, no optimiser; "
           "median of repeats after warm-up; 'other load' is the CPU share other processes used meanwhile\n"]
    header, rows = before_after(payload["configs"])
    if rows:
        out.append("\n## Before and after: training step time as a multiple of nn.LSTM's\n\n"
                   "Paired ratio (median over rounds of the ratio within a round). Before: autograd through the "
                   "Python step loop (`step`); in the middle, where measured: the hand-written kernel with its "
                   "Python time loop (`pyloop`); after: the path rnnbench trains on on the CPU (`fused`: torch's "
                   "module where the cell declares one, except gru; else `loop`: the cell's whole-sequence path, "
                   "the hand-written kernel of every built-in cell, with the compiled time "
                   f"loops of `rnnbench.native` for all but the Elman cells and orthogonal_rnn). `!`: above {GOAL}x.\n\n")
        out.append(md_table(header, rows))
    for c in payload["configs"]:
        out.append(f"\n## hidden {c['hidden']}, length {c['length']}\n\n")
        out.append("GEMM GFLOP/s for the step's shapes (width G*H: torch.mm / oneDNN): "
                   + ", ".join(f"{w}: {v:.0f} / {c.get('onednn_gflops', {}).get(w, float('nan')):.0f}"
                               for w, v in c["gemm_gflops"].items()) + "\n\n")
        rows = [[r["impl"], r["us_per_step"], r["ratio_vs_lstm"], r["paired_ratio_vs_lstm"], r["mflop_per_step"],
                 r["achieved_gflops"], f"{r['frac_gemm']:.0%}", f"{r.get('frac_best_gemm', float('nan')):.0%}",
                 r["repeats"], f"{r['spread']:.0%}",
                 f"{r['other_load']:.0%}"] if not r.get("error") else [r["impl"], r["error"], *[""] * 9]
                for r in c["rows"]]
        out.append(md_table(["impl", "us/step", "x nn.LSTM", "paired x", "MFLOP/step", "GFLOP/s", "of mm",
                             "of best", "n", "spread", "other load"], rows))
    growth = length_growth(payload["configs"])
    if growth:
        out.append("\n## Per-step time growth with length (target: at most 1.2x)\n\n")
        out.append(md_table(["impl", "hidden", "lengths", "us/step short", "us/step long", "growth",
                             "paired growth", "<=1.2x"],
                            growth))
    return "".join(out)


def ftz_child(args: argparse.Namespace) -> None:
    """Inside one fresh process: per-step time of lstm (fused) at each length, current FTZ setting."""
    from rnnbench.manager import get_registry
    from rnnbench.model import build_model
    from rnnbench.tasks.adding import AddingTask

    spec = get_registry().cell("lstm")
    kwargs = {k: v for k, v in dataclasses.asdict(spec.config()).items() if k != "name"}
    out = {}
    for length in args.lengths:
        task = AddingTask(dependency_length=length)
        torch.manual_seed(0)
        model = build_model(spec, kwargs, task, args.hidden[0], fused=True)
        batch = task.sample(BATCH, torch.Generator().manual_seed(1))
        train_step(model, batch.x, batch.y)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            train_step(model, batch.x, batch.y)
            times.append((time.perf_counter() - t0) / length)
        out[str(length)] = times
    print(json.dumps({"ftz": FTZ, "threads": torch.get_num_threads(), "times": out}))


def run_ftz(args: argparse.Namespace) -> dict:
    meter = LoadMeter()
    info = machine_info(FTZ)
    log(f"FTZ effect: lstm (fused), hidden {args.hidden[0]}, lengths {args.lengths}, {args.rounds} rounds of "
        f"fresh processes, {args.repeats} repeats each")
    results: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    loads: dict[str, list[float]] = {"on": [], "off": []}
    for rnd in range(args.rounds):
        for setting in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
            env = dict(os.environ, RNNBENCH_BENCH_FTZ="1" if setting == "on" else "0")
            cmd = [sys.executable, __file__, "--ftz-child", "--hidden", str(args.hidden[0]), "--repeats",
                   str(args.repeats), "--lengths", *map(str, args.lengths)]
            if args.keep_memory:
                cmd.append("--keep-memory")
            mark = meter.start()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            loads[setting].append(meter.stop(mark))
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            for length, times in child["times"].items():
                results[setting].setdefault(length, []).extend(times)
            log(f"  round {rnd + 1} FTZ {setting}: "
                + ", ".join(f"T={k}: {median(v) * 1e6:.0f} us/step" for k, v in child["times"].items()))
    lo, hi = str(min(args.lengths)), str(max(args.lengths))
    table = {}
    for setting in ("on", "off"):
        per = {k: median(v) * 1e6 for k, v in results[setting].items()}
        table[setting] = {"us_per_step": per, "growth": per[hi] / per[lo], "other_load": median(loads[setting])}
    payload = {"machine": info, "hidden": args.hidden[0], "lengths": args.lengths, "table": table,
               "raw_us": {s: {k: [t * 1e6 for t in v] for k, v in r.items()} for s, r in results.items()}}
    write_json(f"ftz{suffix(args)}.json", payload)
    rows = [[f"FTZ {s}", *[table[s]["us_per_step"][str(t)] for t in args.lengths], table[s]["growth"],
             f"{table[s]['other_load']:.0%}"] for s in ("on", "off")]
    rows.append(["off / on", *[table["off"]["us_per_step"][str(t)] / table["on"]["us_per_step"][str(t)]
                               for t in args.lengths], "", ""])
    md = (f"# Denormals: lstm (fused), hidden {args.hidden[0]}, batch {BATCH}\n\n" + machine_md(info) + "\n"
          + md_table(["setting", *[f"us/step T={t}" for t in args.lengths], f"growth {hi}/{lo}", "other load"],
                     rows))
    write_text(f"ftz{suffix(args)}.md", md)
    for r in rows:
        log("  " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r))
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="*", help="cell names (default: every registered cell)")
    parser.add_argument("--paths", nargs="+", default=["step", "pyloop", "loop", "fused"],
                        choices=["step", "pyloop", "loop", "fused"],
                        help="step: autograd through the Python step loop; loop: LoopEncoder as rnnbench trains "
                             "it (the cell's whole-sequence path, e.g. the hand-written kernel, where it has one); "
                             "fused: torch's nn.LSTM/nn.GRU/nn.RNN for cells that declare it")
    parser.add_argument("--hidden", nargs="+", type=int, default=[32, 128, 512])
    parser.add_argument("--lengths", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--configs", nargs="*", help="explicit HIDDENxLENGTH pairs instead of the product")
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--max-repeats", type=int, default=9)
    parser.add_argument("--cap", type=float, default=20.0,
                        help="seconds of timed steps per implementation and configuration after --min-repeats")
    parser.add_argument("--keep-memory", action="store_true",
                        help="glibc: no mmap, no trim (common.keep_freed_memory), set before any tensor")
    parser.add_argument("--skip", nargs="*", default=[], metavar="CELL:PATH@HxT",
                        help="implementations not to run at one configuration, e.g. s6:step@512x1000 (reported as "
                             "skipped; for paths whose autograd graph would not fit in memory)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    parser.add_argument("--tag", default="", help="output files are cells-TAG.json etc. (default: cells.json)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--ftz", action="store_true", help="measure the denormal effect instead")
    parser.add_argument("--rounds", type=int, default=3, help="--ftz: pairs of fresh processes")
    parser.add_argument("--repeats", type=int, default=3, help="--ftz: timed steps per length and process")
    parser.add_argument("--ftz-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rewrite", action="store_true",
                        help="no timing: mark the trained path of results/cells-TAG.json anew from "
                             "rnnbench.model.uses_fused and rewrite its markdown")
    args = parser.parse_args()
    if args.keep_memory:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rewrite:
        rewrite(args)
    elif args.ftz_child:
        ftz_child(args)
    elif args.ftz:
        run_ftz(args)
    else:
        run_cells(args)


if __name__ == "__main__":
    main()
