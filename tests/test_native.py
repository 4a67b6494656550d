"""The compiled time loops (rnnbench.native): float32 results against the Python loops (the polynomial exp and
tanh, oneDNN's matmul at large hidden sizes, K stacked models), NaN and infinities carried as torch carries them,
and the build: cached, atomic under concurrent builders and kills, one notice and the Python loops without a
compiler or when the build fails."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rnnbench import kernels, native

pytestmark = pytest.mark.skipif(native.ops() is None, reason="no compiled time loops on this machine")


def both(run, *inputs: torch.Tensor, monkeypatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs and input gradients of ``run`` with the compiled loops, then with the Python loops."""
    results = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(native, "usable", lambda *tensors: None)
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        out = run(*leaves)
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
        results.append([out.detach(), *torch.autograd.grad((out * up).sum(), leaves)])
    return results[0], results[1]


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


KINDS = ["lstm_peephole_fgr", "gru", "gru_cho", "mingru", "minlstm", "indrnn", "slstm", "slstm_exp", "lru", "s6"]


def kernel_case(kind: str, K: int, H: int, T: int = 6, B: int = 9, dtype=torch.float32):
    """(run, inputs) of one kernel at these sizes, random, seeded."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    def unit(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype)

    if kind == "lstm_peephole_fgr":
        flags = kernels.LSTMFlags(peepholes="ifo", gate_recurrence=True)
        args = (rand(K, T, B, 4 * H), rand(K, 4 * H, 4 * H, scale=H ** -0.5), rand(K, 3, H))
        return (lambda xp, w, p: kernels.lstm(xp, w, p, flags)), args
    if kind == "gru":
        return kernels.gru, (rand(K, T, B, 3 * H), rand(K, 3 * H, H, scale=H ** -0.5), rand(K, 3 * H))
    if kind == "gru_cho":
        return kernels.gru_cho, (rand(K, T, B, 3 * H), rand(K, 2 * H, H, scale=H ** -0.5),
                                 rand(K, H, H, scale=H ** -0.5))
    if kind in ("slstm", "slstm_exp"):
        args = (rand(K, T, B, 4 * H, scale=3.0), rand(K, 4 * H, H, scale=H ** -0.5))
        return (lambda xp, w: kernels.slstm(xp, w, kind == "slstm_exp")), args
    if kind == "lru":
        phase = rand(K, H)
        args = (0.99 * torch.cos(phase), 0.99 * torch.sin(phase), rand(K, T, B, H), rand(K, T, B, H))
        return (lambda *a: torch.cat(kernels.lru_scan(*a), dim=-1)), args
    if kind == "s6":
        N = 8
        return kernels.s6_scan, (rand(K, T, B, H), unit(K, T, B, H) * 0.2, -unit(K, H, N) * 4, rand(K, T, B, N),
                                 rand(K, T, B, N))
    if kind == "indrnn":
        return kernels.indrnn, (rand(K, T, B, H), rand(K, H))
    return (lambda pre: kernels.min_rnn(pre, kind)), (rand(K, T, B, (2 if kind == "mingru" else 3) * H, scale=2.0),)


@pytest.mark.parametrize("K,H", [(1, 256), (2, 256), (1, 16)], ids=["onednn", "stacked", "small"])
@pytest.mark.parametrize("kind", KINDS)
def test_float32_matches_the_python_loops(kind, K, H, monkeypatch):
    """float32 at sizes where one weight set takes oneDNN's matmul (K = 1, hidden 256), stacked sets take
    bmm, and small rows end in the vector loops' remainders: within float32 rounding of the Python loops."""
    run, args = kernel_case(kind, K, H)
    got, want = both(run, *args, monkeypatch=monkeypatch)
    for name, a, b in zip(["output", *(f"grad {n}" for n in range(len(args)))], got, want):
        assert rel_error(a, b) < 2e-5, name


SUMMED_PER_THREAD = {"s6": {3}, "indrnn": {2}, "lru": {1, 2}}
"""Per kernel, the indices (0: output, then the inputs' gradients) of the gradients summed per thread."""


@pytest.mark.parametrize("kind", KINDS)
def test_rows_split_across_threads(kind, monkeypatch):
    """The compiled loops split each step's rows (the elementwise recurrences: whole sequences of rows) across
    torch's threads. With two threads the float64 results equal the Python loops' to rounding, and every output
    and gradient equals one thread's bit for bit, but for the parameter gradients that each thread sums over its
    own rows (S6's d A, IndRNN's d u, the LRU's d lambda), equal to rounding."""
    run, args = kernel_case(kind, K=2, H=64, T=5, B=16, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two, want = both(run, *args, monkeypatch=monkeypatch)
        monkeypatch.undo()
        torch.set_num_threads(1)
        one = both(run, *args, monkeypatch=monkeypatch)[0]
    finally:
        torch.set_num_threads(threads)
    for n, (a, b, c) in enumerate(zip(two, want, one)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        if n in SUMMED_PER_THREAD.get(kind, ()):
            torch.testing.assert_close(a, c, rtol=1e-13, atol=0)
        else:
            assert torch.equal(a, c), f"tensor {n} differs between one and two threads"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenMP threads on Linux only")
def test_one_openmp_runtime_in_the_process():
    """The compiled loops use torch's own OpenMP thread pool: one libgomp is mapped, the one torch loaded."""
    native.ops()
    maps = Path("/proc/self/maps").read_text().splitlines()
    loaded = {line.split()[-1] for line in maps if "libgomp" in line.split()[-1]}
    torch_lib = Path(torch.__file__).parent / "lib"
    assert len(loaded) == 1 and Path(loaded.pop()).parent == torch_lib, loaded


def test_nan_and_infinities_propagate_as_in_torch(monkeypatch):
    """A diverged run must stay visible: NaN inputs give NaN outputs in the same places, and +-inf and huge
    pre-activations saturate the gates to the values torch's sigmoid and tanh give."""
    T, B, H = 3, 4, 8
    xp = torch.randn(1, T, B, 4 * H)
    xp[0, 0, 0, 5] = float("nan")
    xp[0, 1, 1, :] = float("inf")
    xp[0, 1, 2, :] = -float("inf")
    xp[0, 2, 3, :] = 1e30
    w = torch.randn(1, 4 * H, H) * 0.1
    outs = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(native, "usable", lambda *tensors: None)
        outs.append(kernels.lstm(xp, w, None).detach())
    got, want = outs
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    finite = ~want.isnan()
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gate", ["tanh", "sigmoid"])
def test_activations_within_a_few_ulp_over_the_float32_range(gate):
    """The polynomial tanh and sigmoid, through one LSTM step with zero recurrent weights and saturated gates
    (tanh: i = o = 1, f = 0, h = tanh(tanh(x)); sigmoid: g = 1, h = tanh(sigmoid(x))), over 300,003 points in
    [-100, 100] (denser in [-2, 2] and near 0), float32, against float64: within 3 ulp relative (torch's own
    float32 functions: about 1.2 ulp; measured here 1.5-1.6)."""
    x = torch.cat([torch.linspace(-100, 100, 100_001), torch.linspace(-2, 2, 100_001),
                   torch.linspace(-1e-3, 1e-3, 100_001)])
    on, off = torch.full_like(x, 1e4), torch.full_like(x, -1e4)
    cols = [on, off, x, on] if gate == "tanh" else [x, off, on, on]  # i, f, g, o
    got = kernels.lstm(torch.stack(cols, dim=1).reshape(1, 1, -1, 4), torch.zeros(1, 4, 1), None).reshape(-1)
    inner = torch.tanh(x.double()) if gate == "tanh" else torch.sigmoid(x.double())
    want = torch.tanh(inner)
    ulps = ((got.double() - want).abs() / want.abs().clamp_min(1e-30)) / torch.finfo(torch.float32).eps
    assert ulps.max().item() < 3.0, f"max {ulps.max().item():.2f} ulp at x = {x[ulps.argmax()].item()}"


def test_slstm_log_sigmoid_as_accurate_as_torchs(monkeypatch):
    """The polynomial log sigmoid of the sLSTM forget gate: two steps with zero recurrent weights where h_2 =
    sigma(x) / (1 + sigma(x)) passes through exp(log sigma(x)) (step 1: i = 0, g = o = 1, so c = n = 1; step 2:
    i~ = 0, f~ = x, z~ = 0, o = 1), over 300,003 points in [-100, 100], float32 against float64, where the result
    is a normal float32: no further from it than torch's own float32 functions (the Python loop) plus 3 ulp (exp
    of a logarithm loses about |log| ulp at large |x| in either)."""
    x = torch.cat([torch.linspace(-100, 100, 100_001), torch.linspace(-2, 2, 100_001),
                   torch.linspace(-1e-3, 1e-3, 100_001)])
    zero, on = torch.zeros_like(x), torch.full_like(x, 1e4)
    xp = torch.stack([torch.stack([zero, zero, on, on], dim=1), torch.stack([zero, x, zero, on], dim=1)])
    errors = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(native, "usable", lambda *tensors: None)
        got = kernels.slstm(xp.unsqueeze(0), torch.zeros(1, 4, 1))[0, 1, :, 0].double()
        s = torch.sigmoid(x.double())
        want = s / (1 + s)
        normal = want >= torch.finfo(torch.float32).tiny
        errors.append(((got - want).abs() / want)[normal] / torch.finfo(torch.float32).eps)
    ours, torchs = errors
    x = x[normal]
    worst = (ours - torchs).max().item()
    assert worst < 3.0, f"{worst:.2f} ulp beyond torch's at x = {x[(ours - torchs).argmax()].item()}"


# ---- the build ---------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import torch
    from rnnbench import kernels, native
    torch.manual_seed(0)
    xp, w = torch.randn(1, 5, 3, 8), torch.randn(1, 8, 2)
    y = kernels.lstm(xp, w, None)
    print("compiled" if native.ops() is not None else "python", float(y.sum()))
""")


def child(cache: Path, **env: str) -> subprocess.Popen:
    full = dict(os.environ, RNNBENCH_CACHE=str(cache), **env)
    return subprocess.Popen([sys.executable, "-c", CHILD], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[str, str, int]:
    out, err = proc.communicate(timeout=600)
    return out, err, proc.returncode


@pytest.mark.slow
def test_first_use_builds_once_and_later_processes_load_the_cache(tmp_path):
    out, err, rc = finish(child(tmp_path))
    assert rc == 0 and out.startswith("compiled"), err
    assert [line for line in err.splitlines() if line.startswith("rnnbench:")] == [
        next(line for line in err.splitlines() if "compiling the time loops" in line)]
    libraries = sorted(p.name for p in tmp_path.iterdir())
    assert len(libraries) == 1 and libraries[0].endswith(".so")
    out2, err2, rc2 = finish(child(tmp_path))
    assert rc2 == 0 and out2 == out and "rnnbench:" not in err2  # loaded, not rebuilt; same numbers
    assert sorted(p.name for p in tmp_path.iterdir()) == libraries


@pytest.mark.slow
def test_builders_at_once_and_a_builder_killed_midway_leave_one_whole_library(tmp_path):
    """Three processes start on an empty cache at once, and a fourth is killed (SIGKILL) while its compiler
    runs: the three load the compiled loops, and the cache holds one library and no temporary file."""
    victim = child(tmp_path)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".so.tmp") for p in tmp_path.glob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(p.name.endswith(".so.tmp") for p in tmp_path.glob("*")), "the build never started"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    procs = [child(tmp_path) for _ in range(3)]
    results = [finish(p) for p in procs]
    for out, err, rc in results:
        assert rc == 0 and out.startswith("compiled"), err
    assert len({out for out, _, _ in results}) == 1
    names = sorted(p.name for p in tmp_path.iterdir())
    stale = [n for n in names if n.endswith(".so.tmp")]
    # the killed builder's temporary file is its only leftover: never loaded, never taken for a library
    assert [n for n in names if n.endswith(".so")] == [native.library_path("c++").name] and len(stale) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no compiler", "failing compiler"])
def test_without_a_working_compiler_one_notice_and_the_python_loops(tmp_path, case):
    if case == "no compiler":
        env = {"CXX": "rnnbench-no-such-compiler"}
    else:
        broken = tmp_path / "bin" / "broken-c++"
        broken.parent.mkdir()
        broken.write_text("#!/bin/sh\necho 'steps.cpp:1: error: broken on purpose' >&2\nexit 1\n")
        broken.chmod(0o755)
        env = {"CXX": str(broken)}
    cache = tmp_path / "cache"
    out, err, rc = finish(child(cache, **env))
    reference, reference_err, _ = finish(child(tmp_path / "other", RNNBENCH_NATIVE="0"))
    notices = [line for line in err.splitlines() if line.startswith("rnnbench:")]
    assert rc == 0 and out.startswith("python")
    assert reference.startswith("python") and "rnnbench:" not in reference_err  # RNNBENCH_NATIVE=0: no build
    assert float(out.split()[1]) == pytest.approx(float(reference.split()[1]), rel=1e-6)
    if case == "no compiler":
        assert notices == [notices[0]] and "no C++ compiler (rnnbench-no-such-compiler)" in notices[0]
    else:
        assert len(notices) == 2 and "the build failed" in notices[1]
        log = Path(notices[1].split("compiler output in ")[1].split(")")[0])
        assert "broken on purpose" in log.read_text()
        assert not list(cache.glob("*.so"))


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("nm") is None, reason="x86-64 with binutils only")
def test_every_float_pass_is_built_for_three_cpu_levels_and_vectorised():
    """Each float32 elementwise function of the library is an indirect function (resolved when the library
    loads) with an AVX-512, an AVX2 and a baseline clone, so one cached build runs on any x86-64 CPU; and the
    compiler vectorised each one: its AVX-512 clone computes on 512-bit registers (zmm), its AVX2 clone on 256-bit
    ones (a branch in the element loop, e.g. a select the compiler keeps as a jump, leaves scalar code only)."""
    library = native.library_path(os.environ.get("CXX", "c++"))
    symbols = subprocess.run(["nm", "-C", str(library)], capture_output=True, text=True, check=True).stdout
    functions = {re.search(r"(\w+)\(", line.split(" i ", 1)[1].replace("(anonymous namespace)", "")).group(1)
                 for line in symbols.splitlines() if " i " in line}
    assert functions >= {
        "lstm_forward_step_f", "lstm_backward_step_f", "gru_forward_rows_f", "gru_backward_rows_f",
        "cho_gates_rows_f", "cho_state_rows_f", "cho_dn_rows_f", "cho_drz_rows_f", "min_forward_rows_f",
        "min_backward_rows_f", "ind_forward_rows_f", "ind_backward_rows_f", "slstm_forward_rows_f",
        "slstm_backward_rows_f", "lru_forward_rows_f", "lru_backward_rows_f",
        "s6_forward_rows_f", "s6_backward_rows_f"}
    code = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(library)], capture_output=True,
                          text=True, check=True).stdout
    bodies = {header: body for header, body in re.findall(r"\n[0-9a-f]+ <(.+?)>:\n(.*?)(?=\n\n)", code, re.S)}
    for function in functions:
        clones = {line.rsplit("[clone .", 1)[1].rstrip("]") for line in symbols.splitlines()
                  if f"{function}(" in line and "[clone ." in line and "resolver" not in line}
        assert clones >= {"arch_x86_64_v4", "arch_x86_64_v3", "default"}, function
        for clone, register in (("arch_x86_64_v4", "zmm"), ("arch_x86_64_v3", "ymm")):
            body = next(b for h, b in bodies.items() if f"::{function}(" in h and h.endswith(f"[clone .{clone}]"))
            assert re.search(rf"\sv\w+ps\s+\S*%{register}", body), f"{function} {clone}: no packed {register} arithmetic"
