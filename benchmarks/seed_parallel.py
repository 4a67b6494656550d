"""What seed-parallel training costs: time per training step of K seeds batched against one seed.

Three settings run in this process, interleaved round by round so that drifts in machine load hit all alike:

- ``one``: one seed through ``rnnbench.train.train`` as a population of one (the model the runner builds:
  torch's fused module where ``rnnbench.model.uses_fused`` picks it, else the cell's kernel);
- ``batched``: K seeds through the same loop as one stacked population (one process, one batched model);
- ``sequential``: the same K seeds one after another, each a population of one.

Each trial trains fresh models for ``--steps`` steps (no early stop, one held-out evaluation at the end, a
``NullTracker``); the figure is wall time / steps, median over ``--repeats`` rounds. ``torch.set_flush_denormal``
is on and glibc keeps freed memory (``rnnbench.allocator.retain_freed_memory``), as in every run.

    python benchmarks/seed_parallel.py                     # gru, adding T=100, hidden 64, batch 64, K=8, CPU
    python benchmarks/seed_parallel.py --cell lstm --seeds 4 --threads 2
    python benchmarks/seed_parallel.py --path vmap -- model.fused=false
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from rnnbench.config import register_configs
    from rnnbench.manager import get_registry

    register_configs(get_registry())
    with initialize_config_module(config_module="rnnbench.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def _setup(cfg: Any) -> tuple[Any, Any, Any]:
    from rnnbench.config import constructor_kwargs
    from rnnbench.manager import get_registry

    registry = get_registry()
    task = registry.task(cfg.task.name).task(**constructor_kwargs(cfg.task))
    return registry.cell(cfg.cell.name), constructor_kwargs(cfg.cell), task


def _model(cfg: Any, spec: Any, cell_kwargs: Any, task: Any, seed: int, device: torch.device) -> Any:
    from rnnbench.model import build_model, uses_fused

    torch.manual_seed(seed)
    fused = uses_fused(spec, cfg.model.fused, device.type)  # the runner's choice: nn.GRU gives way on the CPU
    return build_model(spec, cell_kwargs, task, cfg.model.hidden_size, fused=fused).to(device)


def run_one(cfg: Any, seed: int, device: torch.device) -> None:
    from rnnbench.graphs import graphs_wanted
    from rnnbench.population import SinglePopulation
    from rnnbench.tracking import NullTracker
    from rnnbench.train import Member, train

    spec, cell_kwargs, task = _setup(cfg)
    population = SinglePopulation(_model(cfg, spec, cell_kwargs, task, seed, device))
    if graphs_wanted(cfg, device):  # as the runner does
        population.capture_graphs()
    train(cfg, population, task, [Member(seed, NullTracker())], device)


def run_batched(cfg: Any, seeds: list[int], device: torch.device, path: str) -> None:
    from rnnbench.graphs import graphs_wanted
    from rnnbench.population import StackedPopulation
    from rnnbench.tracking import NullTracker
    from rnnbench.train import Member, train

    spec, cell_kwargs, task = _setup(cfg)
    models = [_model(cfg, spec, cell_kwargs, task, s, device) for s in seeds]
    population = StackedPopulation(spec, cell_kwargs, task, models, cfg.model.hidden_size, path=path)
    if graphs_wanted(cfg, device):
        population.capture_graphs()
    train(cfg, population, task, [Member(s, NullTracker()) for s in seeds], device)


def timed(fn: Any, steps: int) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="gru")
    parser.add_argument("--task", default="adding")
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=8, help="K, the number of seeds trained together")
    parser.add_argument("--steps", type=int, default=30, help="training steps per trial")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (each round runs every setting once)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--path", default="auto", help="seed-parallel path: auto, kernel or vmap")
    parser.add_argument("--no-sequential", action="store_true", help="skip the K-runs-in-a-row setting")
    parser.add_argument("overrides", nargs="*", help="more config overrides, e.g. model.fused=false")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from rnnbench.allocator import retain_freed_memory

    retain_freed_memory()  # as every training process does (rnnbench.runner)
    cfg = compose([f"cell={args.cell}", f"task={args.task}", f"task.dependency_length={args.length}",
                   f"model.hidden_size={args.hidden}", f"trainer.batch_size={args.batch}",
                   f"trainer.steps={args.steps}", f"trainer.eval_every={args.steps}", "trainer.eval_batches=1",
                   "trainer.early_stop=false", "trainer.progress=none", f"trainer.device={args.device}",
                   "trainer.final_eval_sequences=64",
                   "tracking=none", "diagnostics=off", *args.overrides])
    device = torch.device(args.device)
    seeds = list(range(args.seeds))
    settings = {
        "one": lambda: run_one(cfg, 0, device),
        "batched": lambda: run_batched(cfg, seeds, device, args.path),
    }
    if not args.no_sequential:
        settings["sequential"] = lambda: [run_one(cfg, s, device) for s in seeds]
    for fn in settings.values():  # warm-up: allocator, lazy imports, oneDNN primitives
        fn()
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, fn in settings.items():
            times[name].append(timed(fn, args.steps))
    med = {name: statistics.median(v) for name, v in times.items()}
    K = args.seeds
    print(f"{args.cell} on {args.task} T={args.length}, hidden {args.hidden}, batch {args.batch}, "
          f"{args.threads} thread(s), {device}, {args.steps} steps x {args.repeats} rounds (median ms per step)"
          + "".join(f", {o}" for o in args.overrides))
    print(f"  1 seed             {1e3 * med['one']:8.2f} ms")
    print(f"  {K} seeds batched    {1e3 * med['batched']:8.2f} ms  = {med['batched'] / med['one']:.2f} x one seed, "
          f"{1e3 * med['batched'] / K:.2f} ms per seed-step")
    if "sequential" in med:
        print(f"  {K} seeds in a row   {1e3 * med['sequential']:8.2f} ms  = {med['sequential'] / med['one']:.2f} x one "
              f"seed; batched is {med['sequential'] / med['batched']:.2f} x faster")
    target = med["batched"] <= 2.5 * med["one"]
    print(f"  target ({K} seeds <= 2.5 x one seed): {'met' if target else 'not met'}")


if __name__ == "__main__":
    main()
