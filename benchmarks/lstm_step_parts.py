"""Where an LSTM-family step's time goes in the compiled forward loop (rnnbench/csrc/steps.cpp), at small sizes.

Per configuration (K = 1, T time steps, batch B, hidden H, one thread): the whole compiled forward loop
(``lstm_forward``: per step one GEMM, then the gate arithmetic of every element), the same GEMM alone (T calls of
``baddbmm_`` of the step's shapes from Python, less a trivial in-place op's time, which stands for the Python call),
and what is left per element of the step (B x H). Medians of ``--repeats``, interleaved.

    python benchmarks/lstm_step_parts.py
"""

from __future__ import annotations

import torch

torch.set_flush_denormal(True)

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from common import machine_info, machine_md, md_table, median, write_text  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["128x32", "128x64", "512x32", "128x128"],
                        metavar="BxH")
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from rnnbench.allocator import retain_freed_memory
    from rnnbench.kernels import LSTMFlags, _native_flags
    from rnnbench.native import ops

    retain_freed_memory()
    torch.set_num_threads(1)
    native = ops()
    if native is None:
        raise SystemExit("the compiled loops are not available on this machine")
    T, rows = args.length, []
    small = torch.zeros(8)
    for flags in (LSTMFlags(), LSTMFlags(peepholes="ifo")):
        codes = _native_flags(flags)
        for config in args.configs:
            B, H = (int(v) for v in config.split("x"))
            xp = torch.randn(1, T, B, 4 * H) * 0.1
            wrec = torch.randn(1, 4 * H, H) * 0.1
            peep = torch.randn(1, 3, H) * 0.1 if flags.peepholes else None
            a, w, out = torch.randn(1, B, H), torch.randn(1, H, 4 * H), torch.randn(1, B, 4 * H)
            parts: dict[str, Callable[[], object]] = {
                "loop": lambda: native.lstm_forward(xp, wrec, peep, codes, False),
                "gemm": lambda: [out.baddbmm_(a, w) for _ in range(T)],
                "call": lambda: [small.add_(0.0) for _ in range(T)],
            }
            for fn in parts.values():
                fn()
            times: dict[str, list[float]] = {name: [] for name in parts}
            for _ in range(args.repeats):
                for name, fn in parts.items():
                    times[name].append(timed(fn))
            loop, gemm, call = (median(times[n]) / T * 1e6 for n in ("loop", "gemm", "call"))
            gemm -= call
            rows.append([flags.peepholes or "-", B, H, loop, gemm, 2 * B * H * 4 * H / gemm / 1e3, loop - gemm,
                         (loop - gemm) / (B * H) * 1e3])
    header = ["peepholes", "B", "H", "loop us/step", "GEMM us/step", "GEMM GFLOP/s", "rest us/step",
              "rest ns/element"]
    text = ("# The compiled LSTM forward loop, part by part\n\n" + machine_md(machine_info(ftz=True)) +
            f"\n`python benchmarks/lstm_step_parts.py` (T={T}, one thread, medians of {args.repeats}; the GEMM is "
            "timed from Python, less the time of a trivial op's call)\n\n" + md_table(header, rows))
    print(text)
    write_text("lstm_step_parts.md", text)


if __name__ == "__main__":
    main()
