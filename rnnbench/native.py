"""The compiled time loops of :mod:`rnnbench.kernels` (``csrc/steps.cpp``): built at first use, cached, optional.

The first process that needs them compiles ``steps.cpp`` against the installed torch with the machine's C++
compiler (``$CXX``, else ``c++``; about 40 s, once) into ``$RNNBENCH_CACHE`` (default
``~/.cache/rnnbench``), under a name that hashes the source, torch's version and the compiler command, so a
new torch or a changed source builds anew and a shared cache never serves a mismatched library. The library is
written to a temporary name and renamed into place: processes that build at once each finish and one copy wins;
a process killed mid-build leaves no partial library behind and no lock to wait on.

Without a compiler, or if the build fails, the kernels run their Python loops (same results, slower) after one
line on stderr naming the cause. ``RNNBENCH_NATIVE=0`` turns the compiled loops off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).with_name("csrc") / "steps.cpp"
# OpenMP on Linux: the library then splits each step's rows across torch's own intra-op threads (the libgomp the
# torch wheel ships has the system's soname, so the loader binds the library to the runtime torch already loaded:
# one thread pool). Elsewhere only the SIMD pragmas, and the rows of a step run on one thread.
OPENMP = "-fopenmp" if sys.platform.startswith("linux") else "-fopenmp-simd"
FLAGS = ("-O3", "-std=c++20", "-fPIC", "-shared", OPENMP, "-fno-trapping-math", "-DNDEBUG")


def _notice(message: str) -> None:
    print(f"rnnbench: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where built libraries live: ``$RNNBENCH_CACHE``, else ``$XDG_CACHE_HOME/rnnbench``, else ~/.cache/rnnbench."""
    if os.environ.get("RNNBENCH_CACHE"):
        return Path(os.environ["RNNBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rnnbench"


def _command(compiler: str, source: Path, target: Path) -> list[str]:
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    lib = cpp_extension.library_paths()[0]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    return [compiler, *FLAGS, abi, *includes, str(source), "-o", str(target), f"-L{lib}", f"-Wl,-rpath,{lib}",
            "-lc10", "-ltorch_cpu", "-ltorch"]


def library_path(compiler: str) -> Path:
    """The cached library for this source, torch and compiler."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join([torch.__version__, compiler, *FLAGS, sysconfig.get_platform()]).encode())
    return cache_dir() / f"steps-{key.hexdigest()[:16]}.so"


def build(compiler: str, target: Path) -> None:
    """Compile ``steps.cpp`` into ``target`` (atomically: a temporary file renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + "-", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(_command(compiler, SOURCE, Path(tmp)), capture_output=True, text=True)
        if done.returncode != 0:
            log = target.with_suffix(".log")
            log.write_text(done.stderr)
            raise RuntimeError(f"the build failed (compiler output in {log})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def ops() -> Any | None:
    """``torch.ops.rnnbench`` with the compiled loops loaded, or None (Python loops) after one notice."""
    if os.environ.get("RNNBENCH_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        _notice(f"no C++ compiler ({compiler}) found: the LSTM family and GRUs run their Python time loops "
                "(slower); install one (Debian: g++) for the compiled loops")
        return None
    target = library_path(compiler)
    try:
        if not target.exists():
            _notice(f"compiling the time loops for this machine into {target} (once, about 40 s)")
            build(compiler, target)
        torch.ops.load_library(str(target))
    except (OSError, RuntimeError) as err:
        _notice(f"compiled time loops unavailable ({err}): the Python time loops run instead (slower)")
        return None
    return torch.ops.rnnbench


def usable(*tensors: torch.Tensor) -> Any | None:
    """The compiled loops when they apply to ``tensors`` (CPU, float32 or float64), else None."""
    if any(t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) for t in tensors):
        return None
    return ops()
