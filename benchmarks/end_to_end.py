"""Training throughput of rnnbench itself against a minimal hand-written torch loop doing the same work.

Same model size (nn.LSTM through rnnbench's fused path; ``cell=lstm``), batch, length, optimiser (Adam, the
config's learning rate), gradient-norm clipping and data generation (``AddingTask.sample`` every step). Variants,
run interleaved (rotated order) in this process, each for ``--steps`` optimiser steps, timed wall-clock around
the whole call:

``hand``          the minimal loop: sample, forward, MSE, zero_grad, backward, clip_grad_norm_, Adam step
``hand_pregen``   the same with every batch generated before the clock starts (data generation cost)
``train_core``    ``rnnbench.train.train``: NullTracker, no diagnostics, one evaluation at the end, no checkpoint
``train_eval``    the same with the default held-out evaluation (``trainer.eval_every``/``eval_batches``)
``job_null``      ``rnnbench.runner.run_job`` with a NullTracker: setup, contract check, evaluation, checkpoints,
                  diagnostics (``diagnostics=default``: a measurement every ``diagnostics.every`` steps and the
                  final one with figures)
``job_mlflow``    ``run_job`` with MLflow tracking to a SQLite store in a temporary directory (what the CLI does,
                  less interpreter start-up and Hydra composition)

The CLI itself is run once at the end (``rnnbench ... tracking.uri=sqlite:///...``) for its start-up cost.
Every variant sets the same torch thread count (``--threads``; rnnbench's ``trainer.threads``).

    python benchmarks/end_to_end.py                      # lstm, adding T=100, hidden 128, batch 128
    python benchmarks/end_to_end.py --steps 40 --repeats 1 --hidden 64 --tag quick
"""

from __future__ import annotations

import os

import torch

FTZ = torch.set_flush_denormal(True)

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from common import (LoadMeter, keep_freed_memory, log, machine_info, machine_md, md_table, median, spread,  # noqa: E402
                    write_json, write_text)


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from rnnbench.config import register_configs
    from rnnbench.manager import get_registry

    register_configs(get_registry())
    with initialize_config_module(config_module="rnnbench.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


class HandModel(nn.Module):
    def __init__(self, input_size: int, hidden: int, output_size: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden, batch_first=True)
        self.head = nn.Linear(hidden, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def hand_loop(cfg: Any, steps: int, pregenerate: bool) -> float:
    """The minimal loop; returns its wall time in seconds (model and optimiser creation included)."""
    from rnnbench.tasks.adding import AddingTask

    task = AddingTask(dependency_length=cfg.task.dependency_length)
    gen = torch.Generator().manual_seed(0)
    batches = [task.sample(cfg.trainer.batch_size, gen) for _ in range(steps)] if pregenerate else None
    start = time.perf_counter()
    torch.manual_seed(0)
    model = HandModel(task.input_size, cfg.model.hidden_size, task.output_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    params = list(model.parameters())
    for i in range(steps):
        batch = batches[i] if batches is not None else task.sample(cfg.trainer.batch_size, gen)
        loss = F.mse_loss(model(batch.x), batch.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.grad_clip)
        optimizer.step()
    float(loss.detach())
    return time.perf_counter() - start


def rnnbench_train(cfg: Any) -> float:
    """The training loop on a model built like run_job builds it (a population of one), no tracking."""
    from rnnbench.config import constructor_kwargs
    from rnnbench.manager import get_registry
    from rnnbench.model import build_model
    from rnnbench.population import SinglePopulation
    from rnnbench.tracking import NullTracker
    from rnnbench.train import Member, train

    registry = get_registry()
    start = time.perf_counter()
    task = registry.task(cfg.task.name).task(**constructor_kwargs(cfg.task))
    torch.manual_seed(0)
    model = build_model(registry.cell(cfg.cell.name), constructor_kwargs(cfg.cell), task, cfg.model.hidden_size,
                        fused=cfg.model.fused)
    train(cfg, SinglePopulation(model), task, [Member(0, NullTracker())], torch.device("cpu"))
    return time.perf_counter() - start


def rnnbench_job(cfg: Any, out: Path, mlflow: bool) -> tuple[float, dict[str, float]]:
    """``run_job`` as the CLI calls it (``tracking=none`` unless ``mlflow``); returns wall seconds."""
    from omegaconf import open_dict

    from rnnbench.runner import run_job

    out.mkdir(parents=True, exist_ok=True)
    if not mlflow:
        with open_dict(cfg):
            cfg.tracking.backend = "none"
    start = time.perf_counter()
    results = run_job(cfg, out, out, n_parallel=1)
    elapsed = time.perf_counter() - start
    if not results:
        raise RuntimeError("run_job skipped the run (resume found a finished run)")
    return elapsed, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per trial")
    parser.add_argument("--repeats", type=int, default=3, help="trials per variant")
    parser.add_argument("--keep-memory", action="store_true",
                        help="glibc: no mmap, no trim (common.keep_freed_memory), set before any tensor")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the machine's cores)")
    parser.add_argument("--no-cli", action="store_true", help="skip the single CLI run")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    if args.keep_memory:
        keep_freed_memory()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

    tmp = Path(tempfile.mkdtemp(prefix="rnnbench-e2e-"))
    db = f"sqlite:///{tmp / 'mlflow.db'}"
    base = [f"cell={args.cell}", "task=adding", f"task.dependency_length={args.length}",
            f"model.hidden_size={args.hidden}", f"trainer.batch_size={args.batch}", f"trainer.steps={args.steps}",
            "trainer.early_stop=false", "trainer.progress=none", "trainer.device=cpu", f"trainer.threads={threads}",
            "trainer.resume=false", f"trainer.checkpoint_dir={tmp / 'ckpt'}",
            f"trainer.final_eval_sequences={args.batch}"]  # the hand-written loop has no final evaluation
    cfg_core = compose([*base, f"trainer.eval_every={args.steps}", f"trainer.checkpoint_every={10 * args.steps}",
                        "diagnostics=off", "tracking=none"])
    cfg_eval = compose([*base, f"trainer.checkpoint_every={10 * args.steps}", "diagnostics=off", "tracking=none"])
    cfg_job = compose([*base, "diagnostics=default", "tracking=none"])
    cfg_mlflow = compose([*base, "diagnostics=default", "tracking=mlflow", f"tracking.uri={db}",
                          "tracking.experiment=e2e"])
    extras: dict[str, list[float]] = {}

    def job(cfg: Any, mlflow: bool, name: str) -> Callable[[], float]:
        def run() -> float:
            run.count += 1  # type: ignore[attr-defined]
            elapsed, extra = rnnbench_job(cfg, tmp / f"{name}-{run.count}", mlflow)  # type: ignore[attr-defined]
            for k, v in extra.items():
                extras.setdefault(k, []).append(v)
            return elapsed

        run.count = 0  # type: ignore[attr-defined]
        return run

    variants: dict[str, Callable[[], float]] = {
        "hand": lambda: hand_loop(cfg_core, args.steps, pregenerate=False),
        "hand_pregen": lambda: hand_loop(cfg_core, args.steps, pregenerate=True),
        "train_core": lambda: rnnbench_train(cfg_core),
        "train_eval": lambda: rnnbench_train(cfg_eval),
        "job_null": job(cfg_job, False, "null"),
        "job_mlflow": job(cfg_mlflow, True, "mlflow"),
    }
    info = machine_info(FTZ)
    info["threads"] = threads
    log(f"end-to-end: {args.cell} (fused path) on adding T={args.length}, hidden {args.hidden}, batch {args.batch}, "
        f"{args.steps} steps per trial, {args.repeats} trials per variant, {threads} thread(s)")

    warm = compose([*base[:5], "trainer.steps=5", *base[6:], "trainer.eval_every=5", "diagnostics=default",
                    "tracking=mlflow", f"tracking.uri={db}", "tracking.experiment=e2e"])
    started = time.perf_counter()
    hand_loop(cfg_core, 5, pregenerate=False)
    rnnbench_job(warm, tmp / "warm", mlflow=True)  # creates the SQLite store: its migrations are not timed
    log(f"  warm-up and store creation: {time.perf_counter() - started:.1f} s")

    meter = LoadMeter()
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    loads: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            mark = meter.start()
            elapsed = variants[name]()
            loads[name].append(meter.stop(mark))
            seconds[name].append(elapsed)
            log(f"  trial {rep + 1} {name:12s} {args.steps / elapsed:7.2f} steps/s ({elapsed:.1f} s, other load "
                f"{loads[name][-1]:.0%})")

    cli = None
    if not args.no_cli:
        exe = Path(sys.executable).with_name("rnnbench")
        cmd = [str(exe), *base, "diagnostics=default", f"tracking.uri={db}", "tracking.experiment=e2e-cli"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        cli = time.perf_counter() - start
        if proc.returncode != 0:
            log(f"  CLI failed: {proc.stderr[-500:]}")
            cli = None
        else:
            log(f"  CLI run: {args.steps / cli:.2f} steps/s ({cli:.1f} s including interpreter start-up)")

    med = {k: median(v) for k, v in seconds.items()}
    hand = med["hand"]
    rows = []
    for name in names:
        rows.append({"variant": name, "seconds": med[name], "steps_per_second": args.steps / med[name],
                     "vs_hand": hand / med[name], "overhead_vs_hand": med[name] / hand - 1,
                     "spread": spread(seconds[name]), "other_load": median(loads[name]), "raw_seconds": seconds[name]})
    breakdown = {
        "data_generation": (med["hand"] - med["hand_pregen"]) / hand,
        "rnnbench_loop_vs_hand": (med["train_core"] - med["hand"]) / hand,
        "evaluation": (med["train_eval"] - med["train_core"]) / hand,
        "job_setup_checkpoints_diagnostics": (med["job_null"] - med["train_eval"]) / hand,
        "mlflow_tracking": (med["job_mlflow"] - med["job_null"]) / hand,
        "total_job_mlflow_vs_hand": (med["job_mlflow"] - med["hand"]) / hand,
    }
    if extras.get("diag_measure_s"):
        breakdown["one_diagnostics_measurement_s"] = median(extras["diag_measure_s"])
    payload = {"machine": info, "settings": vars(args), "rows": rows, "breakdown": breakdown, "cli_seconds": cli,
               "eval_every": cfg_eval.trainer.eval_every, "eval_batches": cfg_eval.trainer.eval_batches,
               "diagnostics_every": cfg_job.diagnostics.every, "checkpoint_every": cfg_job.trainer.checkpoint_every}
    suffix = f"-{args.tag}" if args.tag else ""
    write_json(f"end_to_end{suffix}.json", payload)

    md = [f"# End to end: {args.cell} on adding T={args.length}, hidden {args.hidden}, batch {args.batch}, "
          f"{args.steps} steps per trial\n\n", machine_md(info),
          f"- eval every {cfg_eval.trainer.eval_every} steps ({cfg_eval.trainer.eval_batches} batches), diagnostics "
          f"every {cfg_job.diagnostics.every} steps + final, checkpoint every {cfg_job.trainer.checkpoint_every} "
          "+ final\n\n",
          md_table(["variant", "steps/s", "x hand", "overhead vs hand", "spread", "other load"],
                   [[r["variant"], r["steps_per_second"], r["vs_hand"], f"{r['overhead_vs_hand']:+.1%}",
                     f"{r['spread']:.0%}", f"{r['other_load']:.0%}"] for r in rows]),
          "\nBreakdown (share of the hand loop's time):\n\n",
          md_table(["component", "value"], [[k, f"{v:+.1%}" if not k.endswith("_s") else f"{v:.2f} s"]
                                            for k, v in breakdown.items()])]
    if cli is not None:
        md.append(f"\nCLI, one run: {cli:.1f} s for {args.steps} steps ({args.steps / cli:.2f} steps/s, interpreter "
                  "start-up and Hydra composition included)\n")
    write_text(f"end_to_end{suffix}.md", "".join(md))
    print("".join(md))


if __name__ == "__main__":
    main()
