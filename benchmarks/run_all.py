"""The speed suite in one command: cells, denormals, end-to-end training and sweep wall time.

    /work/venv/bin/python benchmarks/run_all.py --quick      # smoke test, a few minutes on a quiet machine
    /work/venv/bin/python benchmarks/run_all.py --reduced    # every cell, hidden 512 at length 1000 for 3 cells
    /work/venv/bin/python benchmarks/run_all.py              # the full grid (an hour or more on 2 cores)
    /work/venv/bin/python benchmarks/run_all.py --only cells ftz --threads 1

Each section runs in a fresh process (allocator state and thread pools do not leak between sections) and writes
``results/<section>-<mode>.json`` and ``.md``; this script then writes ``results/summary-<mode>.md`` with the
machine, every section's tables and the targets met or missed. Run it on a quiet machine: the sections record
the CPU share other processes used while they ran ("other load"); above a few percent, timings are not
comparable with other runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, log, md_table, median

HERE = Path(__file__).resolve().parent

ALL_CELLS: list[str] = []  # empty: every registered cell
QUICK_CELLS = ["lstm", "gru", "rnn_tanh", "peephole_lstm", "mgu"]
BIG_CELLS = ["lstm", "gru", "rnn_tanh"]

MODES: dict[str, dict[str, list[list[str]]]] = {
    "quick": {
        "cells": [["--cells", *QUICK_CELLS, "--hidden", "32", "128", "--lengths", "100", "300",
                   "--min-repeats", "3", "--max-repeats", "5", "--cap", "2"]],
        "ftz": [["--ftz", "--hidden", "128", "--lengths", "100", "300", "--rounds", "2", "--repeats", "2"]],
        "end_to_end": [["--steps", "30", "--repeats", "1", "--no-cli"]],
        "sweep": [["--sweep", "cell=lstm,gru", "seed=0,1", "--steps", "30", "--rounds", "1"]],
    },
    "reduced": {
        "cells": [["--configs", "32x100", "32x1000", "128x100", "128x1000", "512x100", "--min-repeats", "3",
                   "--max-repeats", "5", "--cap", "4"],
                  ["--cells", *BIG_CELLS, "--configs", "512x100", "512x1000", "--min-repeats", "3",
                   "--max-repeats", "3", "--cap", "0", "--tag-extra", "big"]],
        "ftz": [["--ftz", "--hidden", "128", "--lengths", "100", "1000", "--rounds", "2", "--repeats", "2"]],
        "end_to_end": [["--steps", "100", "--repeats", "2"]],
        "sweep": [["--steps", "100", "--rounds", "1"]],
    },
    "full": {
        "cells": [["--hidden", "32", "128", "512", "--lengths", "100", "1000", "--min-repeats", "3",
                   "--max-repeats", "9", "--cap", "20",
                   # minutes per step (exp(A) at every step), and (T, B, N, H) states past 24 GiB beside S6's step loop
                   "--skip", "orthogonal_rnn:step@512x1000", "s6:pyloop@512x1000"]],
        "ftz": [["--ftz", "--hidden", "128", "--lengths", "100", "1000", "--rounds", "3", "--repeats", "3"]],
        "end_to_end": [["--steps", "150", "--repeats", "3"]],
        "sweep": [["--steps", "300", "--rounds", "2"]],
    },
}
SCRIPTS = {"cells": "cells.py", "ftz": "cells.py", "end_to_end": "end_to_end.py", "sweep": "sweep.py"}


def run_section(section: str, mode: str, argv: list[str], threads: int | None,
                keep_memory: bool = False) -> tuple[str, int, float]:
    tag = mode
    if "--tag-extra" in argv:
        i = argv.index("--tag-extra")
        tag = f"{mode}-{argv[i + 1]}"
        argv = argv[:i] + argv[i + 2:]
    cmd = [sys.executable, str(HERE / SCRIPTS[section]), *argv, "--tag", tag]
    if threads:
        cmd += ["--threads", str(threads)]
    if keep_memory:
        cmd.append("--keep-memory")
    log(f"== {section}: {' '.join(cmd[1:])}")
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=HERE.parent).returncode
    elapsed = time.perf_counter() - start
    log(f"== {section} finished in {elapsed:.0f} s (exit {code})")
    return tag, code, elapsed


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def targets(mode: str, tags: dict[str, list[str]]) -> str:
    """The issue's targets, met or not, from the sections' JSON files."""
    rows: list[list[str]] = []
    for tag in tags.get("cells", []):
        cells = load(f"cells-{tag}.json")
        if not cells:
            continue
        per: dict[tuple[str, int], dict[int, dict]] = {}
        for c in cells["configs"]:
            for r in c["rows"]:
                per.setdefault((r["impl"], r["hidden"]), {})[r["length"]] = r
        growth = {}
        for key, by_length in per.items():
            if len(by_length) > 1:
                lo, hi = by_length[min(by_length)], by_length[max(by_length)]
                short = dict(zip(lo.get("rounds", []), lo["times_us"]))
                pairs = [t / short[r] for r, t in zip(hi.get("rounds", []), hi["times_us"]) if r in short]
                growth[key] = median(pairs) if pairs else hi["us_per_step"] / lo["us_per_step"]
        if growth:
            bad = sorted(((g, k) for k, g in growth.items() if g > 1.2), reverse=True)
            worst = ", ".join(f"{k[0]} h{k[1]} {g:.2f}x" for g, k in bad[:6])
            rows.append([f"per-step time grows <= 20% from short to long sequences ({tag}; paired growth)",
                         f"{len(growth) - len(bad)}/{len(growth)} runs", "met" if not bad else f"NOT met: {worst}"])
        fused = [r for c in cells["configs"] for r in c["rows"] if r["path"] == "fused" and r["cell"] == "lstm"]
        if fused:
            ratios = ", ".join(f"h{r['hidden']} T{r['length']}: {r['ratio_vs_lstm']:.2f}" for r in fused)
            rows.append([f"rnnbench lstm (fused) vs nn.LSTM ({tag})", ratios, "reference check (~1.0)"])
        trained = {(r["cell"], r["hidden"], r["length"]): r["paired_ratio_vs_lstm"]  # the path rnnbench trains on
                   for c in cells["configs"] for r in c["rows"] if r.get("trained") and not r.get("error")}
        if trained:
            over = sorted(((v, k) for k, v in trained.items() if v > 1.5), reverse=True)
            worst = ", ".join(f"{k[0]} h{k[1]} T{k[2]} {v:.2f}x" for v, k in over[:8])
            rows.append([f"every cell's trained path at most 1.5x nn.LSTM ({tag}; paired)",
                         f"{len(trained) - len(over)}/{len(trained)} (cell, size) pairs",
                         "met" if not over else f"NOT met: {worst}{' ...' if len(over) > 8 else ''}"])
    ftz = load(f"ftz-{mode}.json")
    if ftz:
        t = ftz["table"]
        rows.append(["lstm (fused) growth short->long with FTZ / without",
                     f"{t['on']['growth']:.2f}x / {t['off']['growth']:.2f}x",
                     "met with FTZ" if t["on"]["growth"] <= 1.2 else "NOT met with FTZ"])
    e2e = load(f"end_to_end-{mode}.json")
    if e2e:
        rows_by = {r["variant"]: r for r in e2e["rows"]}
        core = rows_by["train_core"]["vs_hand"]
        full = rows_by["job_mlflow"]["vs_hand"]
        rows.append(["rnnbench training loop at least as fast as the hand loop", f"{core:.2f}x hand",
                     "met" if core >= 0.95 else "NOT met"])
        over = rows_by["job_mlflow"]["overhead_vs_hand"]
        rows.append(["whole job (tracking, data, eval, diagnostics) costs < 10%",
                     f"{full:.2f}x hand ({over:+.0%})", "met" if over < 0.10 else "NOT met"])
    sweep = load(f"sweep-{mode}.json")
    if sweep:
        rows.append([f"sweep of {sweep['n_jobs']} jobs: joblib (2 workers) vs basic", f"{sweep['speedup']:.2f}x",
                     "met" if sweep["speedup"] >= 1.8 else "NOT met (target 1.8x)"])
    return md_table(["target", "measured", "verdict"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a few cells, hidden 32/128, lengths 100/300")
    group.add_argument("--reduced", action="store_true", help="every cell, big sizes for a few cells only")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), help="run only these sections")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every section (default: torch's / rnnbench's default)")
    parser.add_argument("--keep-memory", action="store_true",
                        help="glibc: no mmap and no trim in every section (the allocator change under test)")
    parser.add_argument("--tag", default="", help="appended to the mode in every output name, e.g. keepmem")
    parser.add_argument("--summary-only", action="store_true", help="rewrite the summary from existing results")
    args = parser.parse_args()
    preset = "quick" if args.quick else "reduced" if args.reduced else "full"
    mode = preset + (f"-{args.tag}" if args.tag else "")
    sections = args.only or list(SCRIPTS)

    tags: dict[str, list[str]] = {}
    timings: list[list] = []
    started = time.perf_counter()
    for section in SCRIPTS:
        for argv in MODES[preset][section]:
            tag = mode + (f"-{argv[argv.index('--tag-extra') + 1]}" if "--tag-extra" in argv else "")
            tags.setdefault(section, []).append(tag)
            if section not in sections or args.summary_only:
                continue
            tag, code, elapsed = run_section(section, mode, list(argv), args.threads, args.keep_memory)
            timings.append([section, tag, f"{elapsed:.0f}", code])

    parts = [f"# rnnbench speed suite, mode {mode}\n\n"]
    first = next((load(f"{s}-{t}.json") for s in ("cells", "end_to_end", "sweep") for t in tags.get(s, [])
                  if load(f"{s}-{t}.json")), None)
    if first:
        from common import machine_md

        parts += ["## Machine\n\n", machine_md(first["machine"]), "\n"]
    parts += ["## Targets\n\n", targets(mode, tags), "\n"]
    if timings:
        parts += ["## Section run times\n\n", md_table(["section", "tag", "seconds", "exit"], timings), "\n"]
    for section in SCRIPTS:
        for tag in dict.fromkeys(tags.get(section, [])):
            md = RESULTS / f"{'ftz' if section == 'ftz' else section}-{tag}.md"
            if md.exists():
                text = md.read_text()
                parts.append("\n" + text.replace("\n# ", "\n## ").replace("# ", "## ", 1))
    out = RESULTS / f"summary-{mode}.md"
    out.write_text("".join(parts))
    log(f"summary: {out} ({time.perf_counter() - started:.0f} s in all)")
    print(targets(mode, tags))


if __name__ == "__main__":
    main()
