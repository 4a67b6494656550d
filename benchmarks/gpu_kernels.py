"""The whole-sequence paths on a GPU: equal to the step loop in float64, their speed, and what CUDA graphs gain.

1. Every registered cell on the device, float64: ``forward_sequence`` as training runs it there (the hand-written
   kernel's Python loop, or a parallel scan) against autograd through the step loop, values and gradients; then
   ``stacked_sequence`` of K = 2 models against each model's step loop (max relative difference; must be below
   1e-9).
2. Time per time step of a training step (forward + backward), float32, batch 128, adding-task input, as a ratio
   to ``nn.LSTM`` (cuDNN): the whole-sequence path run eagerly and the same step captured once in a CUDA graph
   and replayed (the graph removes the per-kernel launch cost of the Python time loop).
3. Seed-parallel on the stacked path: K = 8 models against one, eager and graphed.

    python benchmarks/gpu_kernels.py --hidden 128 --length 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

STACKED = ("peephole_lstm", "gru", "slstm", "s6")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sync_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` captured in a CUDA graph after three warm-up calls on a side stream; returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", nargs="*", help="default: every registered cell")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    from rnnbench.batched import KernelModel
    from rnnbench.layers import unroll
    from rnnbench.manager import get_registry
    from rnnbench.model import build_model
    from rnnbench.tasks.adding import AddingTask

    dev = torch.device(args.device)
    registry = get_registry()
    names = args.cells or sorted(registry.cells)
    print("torch", torch.__version__, torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", flush=True)

    def kwargs_of(name: str) -> dict:
        return {k: v for k, v in vars(registry.cell(name).config()).items() if k != "name"}

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

    print("\n## float64 on the device: whole-sequence path and K = 2 stacked vs the step loop "
          "(max relative difference, values and gradients)", flush=True)
    for name in names:
        torch.manual_seed(0)
        cells = [registry.cell(name).cell(3, 16, **kwargs_of(name)).to(dev, torch.float64) for _ in range(2)]
        x = torch.randn(2, 4, 30, 3, device=dev, dtype=torch.float64)
        line = f"{name:15s}"
        try:
            ref = []
            for k, cell in enumerate(cells):
                xx = x[k].clone().requires_grad_(True)
                out = torch.stack(unroll(cell, xx)[0], 1)
                ref.append([out, *torch.autograd.grad(out.square().sum(), [xx, *cell.parameters()])])
            xx = x[0].clone().requires_grad_(True)
            out = cells[0].forward_sequence(xx)
            if out is None:
                line += " sequence: none"
            else:
                got = [out, *torch.autograd.grad(out.square().sum(), [xx, *cells[0].parameters()])]
                worst = max(rel(a, b) for a, b in zip(got, ref[0]))
                line += f" sequence {worst:.2e} {'ok' if worst < 1e-9 else 'DIFFERS'}"
            params = {n: torch.stack([dict(c.named_parameters())[n].detach() for c in cells]).requires_grad_(True)
                      for n, _ in cells[0].named_parameters()}
            xs = x.transpose(1, 2).contiguous().requires_grad_(True)  # (K, T, B, I)
            out = cells[0].stacked_sequence(params, xs)
            if out is None:
                line += ", stacked: none"
            else:
                grads = torch.autograd.grad(out.square().sum(), [xs, *params.values()])
                worst = 0.0
                for k in range(2):
                    got = [out[k].transpose(0, 1), grads[0][k].transpose(0, 1), *(g[k] for g in grads[1:])]
                    worst = max(worst, *(rel(a, b) for a, b in zip(got, ref[k])))
                line += f", stacked {worst:.2e} {'ok' if worst < 1e-9 else 'DIFFERS'}"
        except Exception as error:  # noqa: BLE001 - report and go on to the next cell
            line += f" FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        print(line, flush=True)

    task = AddingTask(dependency_length=args.length)
    batch = task.sample(128, torch.Generator().manual_seed(1))
    x, y = batch.x.to(dev), batch.y.to(dev)

    def step(model: torch.nn.Module) -> Callable[[], None]:
        params = list(model.parameters())

        def run() -> None:
            for p in params:
                p.grad = None
            torch.nn.functional.mse_loss(model(x), y).backward()
        return run

    def both(fn: Callable[[], object], label: str, base: float, per: int) -> str:
        eager = sync_time(fn, args.repeats)
        text = f"eager {eager / per * 1e6:.0f} us ({eager / base:.2f}x)"
        if dev.type != "cuda":
            return f"{label:15s} {text}"
        try:
            replay = graphed(fn)
            t = sync_time(replay, max(args.repeats, 5))
            text += f", graph {t / per * 1e6:.0f} us ({t / base:.2f}x, {eager / t:.1f}x faster)"
        except Exception as error:  # noqa: BLE001 - a path that cannot be captured is reported, not fatal
            text += f", graph FAILED: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
            sync()
        return f"{label:15s} {text}"

    print(f"\n## float32 training step, hidden {args.hidden}, T={args.length}, batch 128 (us per time step)",
          flush=True)
    ref = build_model(registry.cell("lstm"), {}, task, args.hidden, fused=True).to(dev)
    base = sync_time(step(ref), args.repeats)
    print(both(step(ref), "nn.LSTM", base, args.length), flush=True)
    for name in names:
        spec = registry.cell(name)
        model = build_model(spec, kwargs_of(name), task, args.hidden, fused=False).to(dev)
        try:
            print(both(step(model), name, base, args.length), flush=True)
        except Exception as error:  # noqa: BLE001
            print(f"{name:15s} FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)

    print("\n## seed-parallel on the stacked path: K models against one (time per training step)", flush=True)
    for name in [n for n in STACKED if n in names]:
        spec = registry.cell(name)
        kernel = KernelModel.create(spec, kwargs_of(name), task, args.hidden, num_layers=1, bidirectional=False)
        for k in (1, 8):
            models = [build_model(spec, kwargs_of(name), task, args.hidden, fused=False).to(dev) for _ in range(k)]
            params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_(True)
                      for n, _ in models[0].named_parameters()}
            xs = x.unsqueeze(0).expand(k, *x.shape).contiguous()

            def run() -> None:
                for p in params.values():
                    p.grad = None
                kernel(params, xs).square().sum().backward()
            print(both(run, f"{name} K={k}", base * k, args.length) + " (ratios: to K x nn.LSTM)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
