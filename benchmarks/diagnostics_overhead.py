"""What the diagnostics cost: training steps/s with ``diagnostics=default`` against ``diagnostics=off``.

Both settings run in this process, interleaved (on, off, off, on, ...) so that drifts in machine load hit both
alike; each trial trains a fresh model from the same seed for ``--steps`` steps through ``rnnbench.train.train``
with a ``NullTracker``. Reported: the median steps/s of each setting (the loop's own ``time/steps_per_second``,
which includes the measurements made every ``diagnostics.every`` steps), the relative overhead, the median cost
of one measurement and of ``finish`` (the last measurement, the figures and the JSON), which runs once per run.

    python benchmarks/diagnostics_overhead.py                       # gru on adding T=100, CPU, 1 thread
    python benchmarks/diagnostics_overhead.py --cell lstm --length 200 --steps 1000 --repeats 5
    python benchmarks/diagnostics_overhead.py --device cuda --threads 4 -- model.hidden_size=128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
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


def trial(cfg: Any, diagnostics_on: bool, device: torch.device, out: Path) -> dict[str, float]:
    from rnnbench.config import constructor_kwargs
    from rnnbench.diagnostics import Diagnostics
    from rnnbench.manager import get_registry
    from rnnbench.model import build_model
    from rnnbench.population import SinglePopulation
    from rnnbench.tracking import NullTracker
    from rnnbench.train import Member, train

    registry = get_registry()
    task = registry.task(cfg.task.name).task(**constructor_kwargs(cfg.task))
    torch.manual_seed(cfg.seed)
    model = build_model(registry.cell(cfg.cell.name), constructor_kwargs(cfg.cell), task, cfg.model.hidden_size,
                        fused=cfg.model.fused).to(device)
    diag = Diagnostics.from_config(cfg.diagnostics, model, task, device, out) if diagnostics_on else None
    tracker = NullTracker()
    (result,) = train(cfg, SinglePopulation(model), task, [Member(cfg.seed, tracker, diagnostics=diag)], device)
    row = {"steps_per_second": result.metrics["time/steps_per_second"]}
    if diag is not None:
        started = time.perf_counter()
        diag.finish(tracker, model, result.step)
        row["finish_seconds"] = time.perf_counter() - started
        row["measure_seconds"] = statistics.median(v for _, v in tracker.metrics["diag/seconds"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="gru")
    parser.add_argument("--task", default="adding")
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per trial")
    parser.add_argument("--repeats", type=int, default=3, help="trials per setting")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="more config overrides, e.g. model.hidden_size=128")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    base = [f"cell={args.cell}", f"task={args.task}", f"task.dependency_length={args.length}",
            f"trainer.steps={args.steps}", "trainer.early_stop=false", "trainer.progress=none",
            f"trainer.device={args.device}", "tracking=none", *args.overrides]
    cfg_on = compose([*base, "diagnostics=default"])
    cfg_off = compose([*base, "diagnostics=off"])
    device = torch.device(args.device)
    print(f"{args.cell} on {args.task} T={args.length}, {args.steps} steps per trial, diagnostics.every="
          f"{cfg_on.diagnostics.every}, hidden {cfg_on.model.hidden_size}, batch {cfg_on.trainer.batch_size}, "
          f"{args.device}, {args.threads} thread(s), torch {torch.__version__}")

    rows: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        trial(compose([*base, "diagnostics=off", "trainer.steps=20"]), False, device, Path(tmp))  # warm-up
        for rep in range(args.repeats):
            for on in ((True, False) if rep % 2 == 0 else (False, True)):
                row = trial(cfg_on if on else cfg_off, on, device, Path(tmp) / f"{rep}-{on}")
                rows[on].append(row)
                print(f"  trial {rep} diagnostics {'on ' if on else 'off'}: {row['steps_per_second']:.2f} steps/s")

    on = statistics.median(r["steps_per_second"] for r in rows[True])
    off = statistics.median(r["steps_per_second"] for r in rows[False])
    measure = statistics.median(r["measure_seconds"] for r in rows[True])
    finish = statistics.median(r["finish_seconds"] for r in rows[True])
    print(f"median steps/s: diagnostics off {off:.2f}, default {on:.2f}; overhead {100 * (off / on - 1):+.2f}% "
          f"of training time")
    every = cfg_on.diagnostics.every
    print(f"one measurement: {measure * 1000:.1f} ms (= {measure * off:.1f} training steps), every {every} steps: "
          f"{100 * measure * off / every:.2f}% of training time; finish (last measurement, figures, JSON): "
          f"{finish:.2f} s once per run")


if __name__ == "__main__":
    main()
