"""Wall time of a sweep of small jobs: Hydra's joblib launcher (``n_jobs=2``) against the basic launcher.

The same multirun (by default 8 jobs: ``cell=lstm,gru task.dependency_length=50,100 seed=0,1``) is started
with the CLI, ``launcher=basic`` (jobs one after another in the launching process) and ``launcher=joblib``
(two worker processes), alternately, each time in a fresh working directory with its own SQLite MLflow store.
The wall time covers everything a user waits for: interpreter start-up, the sweep's parent run, the jobs, the
sweep report. A one-job multirun with the basic launcher is timed too: the fixed cost that no launcher
parallelises.

Threads: rnnbench's default (``trainer.threads=null``: cores / n_jobs, so 2 per job under basic and 1 under
joblib on a 2-core machine) unless ``--threads`` fixes them for both.

    python benchmarks/sweep.py                              # 8 jobs of 300 steps, 2 rounds
    python benchmarks/sweep.py --steps 50 --rounds 1 --tag quick
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import LoadMeter, log, machine_md, md_table, median, write_json, write_text


def run_sweep(exe: Path, overrides: list[str], launcher: str, workdir: Path,
              env: dict[str, str] | None = None) -> tuple[float, int, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [str(exe), "-m", *overrides, f"launcher={launcher}", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    finished = proc.stdout.count("rnnbench: ")
    if proc.returncode != 0:
        log(f"  {launcher} sweep failed (exit {proc.returncode}): {proc.stderr[-800:]}")
    return elapsed, finished, proc.stderr[-2000:] if proc.returncode else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", nargs="+",
                        default=["cell=lstm,gru", "task.dependency_length=50,100", "seed=0,1"],
                        help="the multirun's sweep overrides (default: 8 jobs)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating basic/joblib pairs")
    parser.add_argument("--threads", type=int, default=None, help="trainer.threads for every job (default: null)")
    parser.add_argument("--diagnostics", default="default", choices=["default", "off"])
    parser.add_argument("--keep-memory", action="store_true",
                        help="start the CLI with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 (glibc)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    import torch

    from common import machine_info

    info = machine_info(torch.set_flush_denormal(True))
    exe = Path(sys.executable).with_name("rnnbench")
    fixed = [f"trainer.steps={args.steps}", f"model.hidden_size={args.hidden}", f"trainer.batch_size={args.batch}",
             "trainer.early_stop=false", "trainer.progress=none", "trainer.device=cpu",
             f"diagnostics={args.diagnostics}", "tracking.experiment=sweep-bench",
             "trainer.checkpoint_dir=checkpoints"]
    if args.threads:
        fixed.append(f"trainer.threads={args.threads}")
    overrides = [*args.sweep, *fixed]
    n_jobs = 1
    for item in args.sweep:
        n_jobs *= len(item.split("=", 1)[1].split(","))
    log(f"sweep: {n_jobs} jobs ({' '.join(args.sweep)}), {args.steps} steps each, hidden {args.hidden}, "
        f"batch {args.batch}, threads {args.threads or 'rnnbench default'}, {args.rounds} round(s)")

    env = None
    if args.keep_memory:
        env = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**31 - 1))
    root = Path(tempfile.mkdtemp(prefix="rnnbench-sweep-"))
    meter = LoadMeter()
    times: dict[str, list[float]] = {"basic": [], "joblib": []}
    loads: dict[str, list[float]] = {"basic": [], "joblib": []}
    failures: list[str] = []
    one_job = [item.split("=", 1)[0] + "=" + item.split("=", 1)[1].split(",")[0] for item in args.sweep]
    mark = meter.start()
    single, _, err = run_sweep(exe, [*one_job, *fixed], "basic", root / "single", env)
    log(f"  one-job multirun (fixed cost + one job): {single:.1f} s, other load {meter.stop(mark):.0%}")
    for rnd in range(args.rounds):
        for launcher in (("basic", "joblib") if rnd % 2 == 0 else ("joblib", "basic")):
            mark = meter.start()
            elapsed, finished, err = run_sweep(exe, overrides, launcher, root / f"{launcher}-{rnd}", env)
            loads[launcher].append(meter.stop(mark))
            if err:
                failures.append(f"{launcher} round {rnd}: {err}")
            times[launcher].append(elapsed)
            log(f"  round {rnd + 1} {launcher:6s}: {elapsed:6.1f} s ({finished} jobs reported), other load "
                f"{loads[launcher][-1]:.0%}")

    basic, joblib = median(times["basic"]), median(times["joblib"])
    speedup = basic / joblib
    per_job = (basic - single) / max(n_jobs - 1, 1)
    payload = {"machine": info, "settings": vars(args), "n_jobs": n_jobs, "seconds": times, "other_load": loads,
               "one_job_seconds": single, "median_basic_s": basic, "median_joblib_s": joblib, "speedup": speedup,
               "estimated_seconds_per_job_basic": per_job, "target": 1.8, "failures": failures}
    suffix = f"-{args.tag}" if args.tag else ""
    write_json(f"sweep{suffix}.json", payload)
    md = (f"# Sweep wall time: {n_jobs} jobs, basic vs joblib (n_jobs=2)\n\n" + machine_md(info)
          + f"- jobs: {' '.join(args.sweep)}; {' '.join(fixed)}\n\n"
          + md_table(["launcher", "median wall s", "runs", "other load"],
                     [[k, median(v), " / ".join(f"{t:.1f}" for t in v), f"{median(loads[k]):.0%}"]
                      for k, v in times.items()])
          + f"\nSpeed-up joblib vs basic: **{speedup:.2f}x** (target 1.8x). One-job multirun: {single:.1f} s; "
          f"estimated time per extra job under basic: {per_job:.1f} s.\n")
    write_text(f"sweep{suffix}.md", md)
    print(md)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
