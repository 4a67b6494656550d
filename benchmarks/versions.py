"""Time per training step of two versions of rnnbench, measured side by side in one run.

Each version is a git revision, checked out into a temporary worktree. Every trial is a fresh subprocess that
imports that version and runs one job through ``rnnbench.runner.run_job`` (``tracking=none``,
``diagnostics=off``, no early stop); the trials of the two versions alternate, round by round, so that drifts in
machine load hit both alike. The per-step time is the slope between a short and a long job of the same
configuration, ``(t(long) - t(short)) / (long - short)``, so start-up, model building and the final
evaluation cancel out.

    python benchmarks/versions.py 4bd9558 HEAD                         # gru, adding T=100, hidden 64, 1 seed
    python benchmarks/versions.py 4bd9558 . trainer.seeds=8            # seed-parallel; "." = the working tree
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TRIAL = r"""
import json, sys, time, tempfile
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[2]))
from hydra import compose, initialize_config_module
from rnnbench.config import register_configs
from rnnbench.manager import get_registry
register_configs(get_registry())
overrides = json.loads(sys.argv[1])
with initialize_config_module(config_module="rnnbench.conf", version_base="1.3"):
    cfg = compose(config_name="config", overrides=overrides)
from rnnbench.runner import run_job
with tempfile.TemporaryDirectory() as tmp:
    started = time.perf_counter()
    run_job(cfg, Path(tmp), Path(tmp))
    print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def worktree(rev: str, root: Path) -> Path | None:
    """A checkout of ``rev`` whose ``rnnbench`` package imports its plugins, tasks and conf from the tree;
    None for ``.``, the working tree as installed in this environment."""
    if rev == ".":
        return None
    path = root / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)
    for name in ("plugins", "tasks", "conf"):  # revisions from before these moved into the package
        if (path / name).is_dir() and not (path / "rnnbench" / name).exists():
            (path / "rnnbench" / name).symlink_to(path / name)
    return path


def trial(tree: Path | None, overrides: list[str], threads: int) -> float:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", **({"PYTHONPATH": str(tree)} if tree else {}))
    cwd = tree or tempfile.gettempdir()
    out = subprocess.run([sys.executable, "-c", TRIAL, json.dumps(overrides), str(threads)], cwd=cwd, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"trial failed in {tree}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--short", type=int, default=20, help="steps of the short job")
    parser.add_argument("--long", type=int, default=220, help="steps of the long job")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. trainer.seeds=8 cell=lstm")
    args = parser.parse_args()
    base = ["task=adding", "cell=gru", "task.dependency_length=100", "model.hidden_size=64", "tracking=none",
            "diagnostics=off", "trainer.early_stop=false", "trainer.progress=none", "trainer.device=cpu",
            "trainer.checkpoint_dir=checkpoints", "trainer.resume=false", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: worktree(rev, Path(tmp)) for rev in (args.before, args.after)}
        try:
            slopes: dict[str, list[float]] = {rev: [] for rev in trees}
            for _ in range(args.repeats):
                for rev, tree in trees.items():
                    times = {}
                    for steps in (args.short, args.long):
                        cfg = [*base, f"trainer.steps={steps}", f"trainer.eval_every={steps}"]
                        times[steps] = trial(tree, cfg, args.threads)
                    slopes[rev].append((times[args.long] - times[args.short]) / (args.long - args.short))
        finally:
            for tree in filter(None, trees.values()):
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               capture_output=True, check=False)
    med = {rev: statistics.median(v) for rev, v in slopes.items()}
    print(f"{' '.join(base[:4] + args.overrides)}; {args.threads} thread(s); median of {args.repeats} rounds")
    for rev in trees:
        spread = ", ".join(f"{1e3 * v:.2f}" for v in slopes[rev])
        print(f"  {rev:>10}: {1e3 * med[rev]:7.2f} ms per step  (rounds: {spread})")
    print(f"  {args.after} / {args.before} = {med[args.after] / med[args.before]:.3f}")


if __name__ == "__main__":
    main()
