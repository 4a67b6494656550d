"""The hand-written kernels (rnnbench.kernels) on a GPU: equal to the step loop in float64, and their speed.

1. Every classic cell on CUDA, float64: the whole-sequence path (the kernel) against autograd through the step
   loop, values and gradients (max relative difference printed; must be below 1e-9).
2. Time per step of a training step (forward + backward), float32, batch 128, adding-task input: the step loop,
   the kernel and torch's cuDNN module where the cell has one, as a ratio to ``nn.LSTM`` (cuDNN), interleaved.
3. Seed-parallel on the kernel: K = 8 stacked models against one, peephole LSTM and GRU.

    python benchmarks/gpu_kernels.py --hidden 128 --length 1000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

CELLS = ("rnn_sigmoid", "lstm1997", "peephole_lstm", "cifg_lstm", "lstm_fgr", "lstm_noaf", "gru", "gru_cho2014")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sync_time(fn, repeats: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    from rnnbench.layers import unroll
    from rnnbench.manager import get_registry
    from rnnbench.model import build_model

    dev = torch.device(args.device)
    registry = get_registry()
    print("torch", torch.__version__, torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu")

    def cell_of(name: str, i: int, h: int):
        spec = registry.cell(name)
        return spec.cell(i, h, **{k: v for k, v in vars(spec.config()).items() if k != "name"})

    print("\n## float64 on CUDA: kernel vs step loop (max relative difference, values and gradients)")
    for name in CELLS:
        torch.manual_seed(0)
        cell = cell_of(name, 3, 16).to(dev, torch.float64)
        x = torch.randn(4, 30, 3, device=dev, dtype=torch.float64)
        worst = 0.0
        results = []
        for path in ("step", "kernel"):
            xx = x.clone().requires_grad_(True)
            out = torch.stack(unroll(cell, xx)[0], 1) if path == "step" else cell.forward_sequence(xx)
            grads = torch.autograd.grad(out.square().sum(), [xx, *cell.parameters()])
            results.append([out, *grads])
        for a, b in zip(*results):
            worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
        print(f"{name:15s} {worst:.2e} {'ok' if worst < 1e-9 else 'DIFFERS'}")

    print(f"\n## float32 training step on CUDA, hidden {args.hidden}, T={args.length}, batch 128 (us per time step)")
    from rnnbench.tasks.adding import AddingTask

    task = AddingTask(dependency_length=args.length)
    batch = task.sample(128, torch.Generator().manual_seed(1))
    x, y = batch.x.to(dev), batch.y.to(dev)

    def step(model):
        def run():
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
        return run

    ref = build_model(registry.cell("lstm"), {}, task, args.hidden, fused=True).to(dev)
    base = sync_time(step(ref), args.repeats)
    print(f"nn.LSTM (cuDNN) {base / args.length * 1e6:.1f} us")
    for name in CELLS:
        spec = registry.cell(name)
        row = []
        for path in ("step", "kernel", "fused"):
            if path == "fused" and not spec.fused:
                continue
            model = build_model(spec, {k: v for k, v in vars(spec.config()).items() if k != "name"}, task,
                                args.hidden, fused=path == "fused").to(dev)
            if path == "step":
                for c in model.encoder.cells():
                    c.forward_sequence = lambda _x: None
            t = sync_time(step(model), args.repeats if path != "step" else 2)
            row.append(f"{path} {t / args.length * 1e6:.0f} us ({t / base:.2f}x)")
        print(f"{name:15s} " + ", ".join(row))

    print("\n## seed-parallel on the kernel: K = 8 stacked against K = 1 (time per training step)")
    from rnnbench.batched import KernelModel

    for name in ("peephole_lstm", "gru"):
        spec = registry.cell(name)
        kwargs = {k: v for k, v in vars(spec.config()).items() if k != "name"}
        times = {}
        for k in (1, 8):
            kernel = KernelModel.create(spec, kwargs, task, args.hidden, num_layers=1, bidirectional=False)
            models = [build_model(spec, kwargs, task, args.hidden, fused=False).to(dev) for _ in range(k)]
            names = [n for n, _ in models[0].named_parameters()]
            params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_(True)
                      for n in names}
            xs = x.unsqueeze(0).expand(k, *x.shape).contiguous()

            def run():
                out = kernel(params, xs)
                out.square().sum().backward()
            times[k] = sync_time(run, args.repeats)
        print(f"{name:15s} K=1 {times[1] * 1e3:.1f} ms, K=8 {times[8] * 1e3:.1f} ms: {times[8] / times[1]:.2f}x one")


if __name__ == "__main__":
    main()
