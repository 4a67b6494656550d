"""Per-step cost of the modern cells (minGRU, minLSTM, LRU, S6, sLSTM, IndRNN, orthogonal RNN) against torch's
``nn.LSTM``: one training step (forward + backward) through each whole-sequence algorithm a cell has (every
``scan`` choice of the linear cells, ``sequential`` being the time loop of ``rnnbench.kernels``; the kernels of
sLSTM and IndRNN; the orthogonal RNN's sequence path) and through its step loop, all in one process,
interleaved.

A training step is ``model(x)`` on an adding-problem batch (B, T, 2), the MSE of the last-step readout,
``backward()``, gradients reset to ``None``; no optimiser. Models come from ``rnnbench.model.build_model`` (cell
encoder + linear head): a whole-sequence row runs ``LoopEncoder.forward`` with that algorithm forced, the step row
``LoopEncoder.probe`` (the ``unroll`` loop, what diagnostics run). The reference is ``nn.LSTM(batch_first=True)`` with the same head (oneDNN on CPU, cuDNN on CUDA). Like every
rnnbench job, the process keeps freed memory for reuse (``rnnbench.allocator.retain_freed_memory``) unless
``--glibc-default``.

One warm-up step per implementation, then ``--repeats`` rounds; every round times one step of every
implementation, in an order rotated by one each round. Reported per implementation: median seconds per training
step and per time step, the ratio of medians to ``nn.LSTM`` and the median of the per-round ratios (paired, more
robust to drift of the machine's load), and the other processes' CPU share while it ran.

    python benchmarks/modern_cells.py                        # hidden 128, T 1000, batch 128, 3 rounds
    python benchmarks/modern_cells.py --length 200 --repeats 2 --tag short
    python benchmarks/modern_cells.py --device cuda --tag cuda
"""

from __future__ import annotations

import os

import torch

_WANT_FTZ = os.environ.get("RNNBENCH_BENCH_FTZ", "1") != "0"
FTZ = bool(torch.set_flush_denormal(_WANT_FTZ)) and _WANT_FTZ

import argparse  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from common import (LoadMeter, keep_freed_memory, log, machine_info, machine_md, md_table, median,  # noqa: E402
                    spread, write_json, write_text)

REFERENCE = "nn.LSTM"
CELLS = ("mingru", "minlstm", "lru", "s6", "slstm", "indrnn", "orthogonal_rnn")
SEQUENCE = {"mingru": ("log", "chunked", "sequential"), "minlstm": ("log", "chunked", "sequential"),
            "lru": ("chunked", "sequential"), "s6": ("chunked", "sequential"), "slstm": ("sequence",),
            "indrnn": ("sequence",), "orthogonal_rnn": ("sequence",)}
"""The whole-sequence algorithms of each cell: ``scan`` values, or the cell's one path."""


class _Adding:
    input_size, output_size, readout = 2, 1, "last"


class TorchLSTM(nn.Module):
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
    """``step``, ``torch``, or the whole-sequence algorithm."""
    model: nn.Module
    times: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    error: str | None = None

    def output(self, x: torch.Tensor) -> torch.Tensor:
        if self.path == "step":
            m = self.model
            return m.head(m.read(m.encoder.probe(x)[0]))
        return self.model(x)


def build(cells: list[str], hidden: int, device: torch.device) -> list[Impl]:
    from rnnbench.manager import get_registry
    from rnnbench.model import build_model
    from rnnbench.testing import config_defaults

    registry = get_registry()
    torch.manual_seed(0)
    impls = [Impl(REFERENCE, "nn.LSTM", "torch", TorchLSTM(2, hidden).to(device))]
    plan = [(c, path) for c in cells for path in SEQUENCE.get(c, ("sequence",))] + [(c, "step") for c in cells]
    for name, path in plan:
        spec = registry.cell(name)
        kwargs = config_defaults(spec.config)
        if "scan" in kwargs and path != "step":
            kwargs["scan"] = path
        torch.manual_seed(0)
        model = build_model(spec, kwargs, _Adding(), hidden, fused=False).to(device)
        label = f"{name} ({'scan=' + path if 'scan' in kwargs and path != 'step' else path})"
        impls.append(Impl(label, name, path, model))
    return impls


def adding_batch(batch: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    values = torch.rand(batch, length, generator=g)
    markers = torch.zeros(batch, length)
    first = torch.randint(0, length // 2, (batch,), generator=g)
    second = torch.randint(length // 2, length, (batch,), generator=g)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)
    y = (values * markers).sum(dim=1, keepdim=True)
    return x.to(device), y.to(device)


def train_step(impl: Impl, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    F.mse_loss(impl.output(x), y).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    for p in impl.model.parameters():
        p.grad = None
    return elapsed


def report(impls: list[Impl], args: argparse.Namespace, info: dict, seconds: float) -> tuple[dict, str]:
    ref = impls[0]
    ref_med = median(ref.times)
    ref_by_round = dict(zip(ref.rounds, ref.times))
    rows, records = [], []
    for impl in impls:
        med = median(impl.times)
        paired = [t / ref_by_round[r] for r, t in zip(impl.rounds, impl.times) if r in ref_by_round]
        record = {"label": impl.label, "cell": impl.cell, "path": impl.path, "error": impl.error,
                  "times_s": impl.times, "rounds": impl.rounds, "other_load": impl.load,
                  "median_step_s": med, "ms_per_time_step": 1e3 * med / args.length,
                  "x_lstm": med / ref_med, "paired_x_lstm": median(paired), "spread": spread(impl.times)}
        records.append(record)
        if impl.error:
            rows.append([impl.label, "error: " + impl.error[:60], "", "", "", "", ""])
        else:
            rows.append([impl.label, med, record["ms_per_time_step"], record["x_lstm"], record["paired_x_lstm"],
                         record["spread"], median(impl.load)])
    payload = {"machine": info, "batch": args.batch, "hidden": args.hidden, "length": args.length,
               "repeats": args.repeats, "device": args.device, "threads": torch.get_num_threads(),
               "retain_freed_memory": not args.glibc_default, "seconds": seconds, "results": records}
    md = [f"# Modern cells: training-step time against nn.LSTM ({args.device})\n",
          f"Batch {args.batch}, hidden {args.hidden}, length {args.length}, input 2 (adding problem), last-step "
          f"readout, forward + backward, no optimiser. {args.repeats} interleaved rounds after one warm-up step; "
          f"medians, {torch.get_num_threads()} torch thread(s). `x nn.LSTM`: ratio of medians; `paired x`: median "
          f"of per-round ratios. `scan=...`, `sequence`: a whole-sequence algorithm, forced; `step`: "
          f"the per-step loop (what diagnostics run). `other load`: the other processes' share of the CPU during the step. "
          f"Run by `benchmarks/modern_cells.py` in {seconds:.0f} s.\n",
          md_table(["implementation", "s / step", "ms / time step", "x nn.LSTM", "paired x", "spread",
                    "other load"], rows),
          "\n## Machine\n", machine_md(info)]
    return payload, "\n".join(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", nargs="+", default=list(CELLS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--glibc-default", action="store_true", help="do not keep freed memory (glibc mmap/trim)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    args = parser.parse_args()
    if not args.glibc_default:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine_info(FTZ)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    name = "modern_cells" + (f"-{args.tag}" if args.tag else "")
    log(f"{name}: batch {args.batch}, hidden {args.hidden}, length {args.length}, {args.repeats} rounds, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()}")
    impls = build(args.cells, args.hidden, device)
    x, y = adding_batch(args.batch, args.length, device)
    meter = LoadMeter()
    for impl in impls:  # warm-up
        try:
            log(f"  warm-up {impl.label}: {train_step(impl, x, y, device):.2f} s")
        except Exception as exc:  # a cell that fails at this size is reported, not fatal
            impl.error = f"{type(exc).__name__}: {exc}"
            log(f"  {impl.label}: {impl.error}")
    started = time.perf_counter()
    for rnd in range(args.repeats):
        order = impls[rnd % len(impls):] + impls[: rnd % len(impls)]
        for impl in order:
            if impl.error is not None:
                continue
            mark = meter.start()
            impl.times.append(train_step(impl, x, y, device))
            impl.load.append(meter.stop(mark))
            impl.rounds.append(rnd)
        log(f"  round {rnd + 1}/{args.repeats} done, {time.perf_counter() - started:.0f} s")
        payload, md = report(impls, args, info, time.perf_counter() - started)
        write_json(name + ".json", payload)
        write_text(name + ".md", md)
    print(md)


if __name__ == "__main__":
    main()
