"""Data generation cost of every built-in task next to one training step of ``gru`` on it.

    python benchmarks/tasks.py [--device cpu] [--length 1000] [--batch 128] [--steps 3]

Per task and variant: the median time to generate one batch (25 repeats after warm-up) and the median time of
one training step (fused GRU, hidden 128, Adam, clipping) on that batch. Writes results/tasks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rnnbench.allocator import retain_freed_memory
from rnnbench.manager import get_registry
from rnnbench.model import build_model
from rnnbench.train import make_optimizer

CASES = [("adding", v) for v in ("hochreiter1997", "pascanu2013", "arjovsky2016", "tcn2018")] + [
    ("copy", "arjovsky2016"), ("copy", "tcn2018"), ("variable_copy", None), ("selective_copy", None),
    ("temporal_order", "2bit"), ("temporal_order", "3bit"), ("associative_recall", None),
    ("parity", "final"), ("parity", "running"),
]


class Adam:
    name, lr, weight_decay, momentum = "adam", 1e-3, 0.0, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    retain_freed_memory()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    registry = get_registry(load_entrypoints=False)
    rows = [f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"batch {args.batch}, dependency length {args.length}", "",
            "| task | variant | x shape | generate (ms) | gru step (ms) | generate / step |", "|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for name, variant in CASES:
        task = registry.task(name).task(dependency_length=args.length, **({"variant": variant} if variant else {}))
        gen = torch.Generator(device=device).manual_seed(0)
        for _ in range(3):
            task.sample(args.batch, gen)
        times = []
        for _ in range(25):
            sync()
            start = time.perf_counter()
            batch = task.sample(args.batch, gen)
            sync()
            times.append(time.perf_counter() - start)
        gen_ms = statistics.median(times) * 1e3
        torch.manual_seed(0)
        model = build_model(registry.cell("gru"), {}, task, 128, fused=True).to(device)
        optimizer = make_optimizer(Adam, model.parameters())

        def step() -> None:
            loss = task.loss(model(batch.x), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

        step()
        step_times = []
        for _ in range(args.steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            step_times.append(time.perf_counter() - start)
        step_ms = statistics.median(step_times) * 1e3
        row = (f"| {name} | {variant or '-'} | {tuple(batch.x.shape)} | {gen_ms:.2f} | {step_ms:.0f} | "
               f"{gen_ms / step_ms:.2%} |")
        rows.append(row)
        print(row, flush=True)
    out = Path(__file__).with_name("results") / "tasks.md"
    out.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
