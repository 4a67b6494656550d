"""Bad input through the real command line: one line on stderr naming the key and the value, exit status 2, no
traceback, and nothing written in the working directory (no mlflow.db, mlruns/, outputs/, checkpoint or run).

Two layers, both through ``rnnbench.cli.main``:

- every case the README and the bug reports list runs as its own ``rnnbench`` subprocess (two at a time);
- a table covering every config key (wrong types, NaN, infinities, negatives, zero, huge values, unknown keys with
  and without ``+``, wrong group options, unicode, unwritable paths) runs in ONE subprocess that calls
  ``rnnbench.cli.main`` in-process per case, each in a fresh directory: the same code path, without paying
  Python's and torch's start-up per case.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import RNNBENCH

pytestmark = pytest.mark.slow

HUGE_INT = "99999999999999999999999"

# (arguments, key the line must name, value the line must show)
Case = tuple[list[str], str, str]


def _snapshot(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR", "RNNBENCH_FAULT")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


# --- the listed cases, each a real subprocess ------------------------------------------------------------------

SUBPROCESS_CASES: dict[str, tuple[list[str], str, str]] = {
    # accepted silently before
    "plus-typo-model": (["+model.hiden_size=64"], "model.hiden_size", "64"),
    "plus-typo-trainer": (["+trainer.step=100"], "trainer.step", "100"),
    "plus-unknown-root": (["+foo=1"], "foo", "1"),
    "bool-from-int": (["trainer.early_stop=2"], "trainer.early_stop", "2"),
    "forget-bias-nan": (["cell=lstm", "cell.forget_bias=nan"], "cell.forget_bias", "nan"),
    "forget-bias-inf": (["cell=lstm", "cell.forget_bias=inf"], "cell.forget_bias", "inf"),
    "forget-bias-nan-gru": (["cell.forget_bias=nan"], "cell.forget_bias", "nan"),
    "irnn-input-std-inf": (["cell=irnn", "cell.input_std=inf"], "cell.input_std", "inf"),
    "negative-hidden-with-budget": (["model.param_budget=500", "model.hidden_size=-3"], "model.hidden_size", "-3"),
    # tracebacks before
    "plus-typo-task": (["+task.dependancy_length=100"], "task.dependancy_length", "100"),
    "plus-key-of-another-cell": (["cell=gru", "+cell.forget_bias=2.0"], "cell.forget_bias", "2.0"),
    "seed-overflow": (["seed=99999999999999999999"], "seed", "99999999999999999999"),
    "checkpoint-dir-proc": (["trainer.checkpoint_dir=/proc/forbidden"], "trainer.checkpoint_dir", "/proc/forbidden"),
    "store-in-proc": (["tracking.uri=sqlite:////proc/nope/x.db"], "tracking.uri", "sqlite:////proc/nope/x.db"),
    "store-is-a-directory": (["tracking.uri=sqlite:///a_folder"], "tracking.uri", "a_folder"),
    "store-scheme": (["tracking.uri=foo://bar"], "tracking.uri", "foo://bar"),
    "mlflow-db-is-a-folder": ([], "tracking.uri", "mlflow.db"),
    "empty-experiment": (["tracking.experiment=''"], "tracking.experiment", "''"),
    # Hydra-level mistakes
    "unknown-key": (["model.hiden_size=64"], "model.hiden_size", "64"),
    "wrong-type": (["optim.lr=fast"], "optim.lr", "fast"),
    "unknown-group-option": (["cell=nope"], "cell", "nope"),
    "unknown-group-option-close": (["cell=lstmm"], "cell", "lstmm"),
    "multirun-unknown-group-option": (["-m", "cell=nope,gru"], "cell", "nope"),
    "multirun-plus-unknown-key": (["-m", "seed=0,1", "+foo=1"], "foo", "1"),
    "multirun-wrong-type": (["-m", "optim.lr=0.1,fast"], "optim.lr", "fast"),
    # huge values, refused before anything is allocated
    "huge-batch": (["trainer.batch_size=1000000000"], "trainer.batch_size", "1000000000"),
    "huge-hidden": (["model.hidden_size=1000000"], "model.hidden_size", "1000000"),
    "huge-budget": (["model.param_budget=1000000000000"], "model.param_budget", "1000000000000"),
    "huge-alphabet": (["task=copy", "task.alphabet=1000000000"], "task.alphabet", "1000000000"),
    "huge-diagnostics-batch": (["diagnostics.batch_size=1000000000"], "diagnostics.batch_size", "1000000000"),
    "huge-length": (["task.dependency_length=100000000"], "task.dependency_length", "100000000"),
    # maintenance commands
    "reap-nan": (["runs", "reap", "--stale-after", "nan"], "--stale-after", "nan"),
    "reap-inf": (["runs", "reap", "--stale-after", "inf"], "--stale-after", "inf"),
    "reap-negative": (["runs", "reap", "--stale-after=-5"], "--stale-after", "-5"),
    "upload-binary": (["runs", "upload", "garbage.bin"], "garbage.bin", "binary"),
    "upload-text-line": (["runs", "upload", "line.jsonl"], "line.jsonl", "hello world"),
    "upload-json-list": (["runs", "upload", "list.jsonl"], "list.jsonl", "[1,2,3]"),
}
if not __import__("torch").cuda.is_available():
    SUBPROCESS_CASES["no-cuda"] = (["trainer.device=cuda"], "trainer.device", "cuda")


def _setup(name: str, directory: Path, template: Path) -> None:
    """What a case needs in its directory before it runs."""
    if name == "store-is-a-directory":
        (directory / "a_folder").mkdir()
    elif name == "mlflow-db-is-a-folder":
        (directory / "mlflow.db").mkdir()
    elif name.startswith("reap-"):
        # a live run (fresh heartbeat) that a reap with a NaN threshold used to mark KILLED
        import shutil

        from mlflow.tracking import MlflowClient

        shutil.copy(template, directory / "mlflow.db")
        client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
        run = client.create_run("0")
        client.set_tag(run.info.run_id, "rnnbench.heartbeat", f"{time.time():.0f}")
    elif name == "upload-binary":
        (directory / "garbage.bin").write_bytes(bytes(range(256)) * 8)
    elif name == "upload-text-line":
        (directory / "line.jsonl").write_text("hello world\n")
    elif name == "upload-json-list":
        (directory / "list.jsonl").write_text("[1,2,3]\n")


def _run_one(name: str, root: Path, template: Path) -> dict:
    args = SUBPROCESS_CASES[name][0]
    directory = root / name
    directory.mkdir()
    _setup(name, directory, template)
    before = _snapshot(directory)
    digest = {p: (directory / p).read_bytes() for p in before if (directory / p).is_file()}
    is_run = not args or args[0] not in ("runs",)
    full = (["trainer=smoke", *args] if args[:1] != ["-m"] else ["-m", "trainer=smoke", *args[1:]]) if is_run else args
    started = time.perf_counter()
    proc = subprocess.run([RNNBENCH, *full], cwd=directory, env=_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    after = _snapshot(directory)
    changed = [p for p, data in digest.items() if (directory / p).read_bytes() != data]
    return {"returncode": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout, "before": before,
            "after": after, "changed": changed, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory, _template_store) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bad-input-cli")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run_one, name, root, _template_store) for name in SUBPROCESS_CASES}
        results = {name: future.result() for name, future in futures.items()}
    results["reap-nan"]["directory"] = str(root / "reap-nan")
    return results


def _assert_clean(result: dict, key: str, value: str, label: str) -> None:
    err = result["stderr"]
    lines = [line for line in err.splitlines() if line.strip()]
    assert result["returncode"] == 2, (label, result["returncode"], err, result["stdout"][-2000:])
    assert "Traceback" not in err + result["stdout"], (label, err)
    assert len(lines) == 1, (label, err)
    assert lines[0].startswith("rnnbench: error: "), (label, lines[0])
    assert key in lines[0] and value in lines[0], (label, key, value, lines[0])
    assert result["after"] == result["before"], (label, sorted(set(result["after"]) - set(result["before"])))
    assert not result["changed"], (label, result["changed"])


@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES))
def test_listed_bad_input_is_one_line_exit_2_and_writes_nothing(subprocess_results, name):
    _, key, value = SUBPROCESS_CASES[name]
    _assert_clean(subprocess_results[name], key, value, name)


def test_reap_with_nan_left_the_live_run_running(subprocess_results):
    from mlflow.tracking import MlflowClient

    directory = Path(subprocess_results["reap-nan"]["directory"])
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
    (run,) = client.search_runs(["0"])
    assert run.info.status == "RUNNING"


# --- the table: every config key, in-process through rnnbench.cli.main ------------------------------------------

INT_POSITIVE = ["abc", "1.5", "-1", "0"]
INT_NON_NEGATIVE = ["abc", "true", "-1"]
FLOAT = ["abc", "nan", "inf"]
BOOL = ["2", "yes"]
CHOICE = ["nope", "''", "'cüda'"]


def _framework_table() -> list[Case]:
    table: list[Case] = []

    def add(key: str, values: list[str], prefix: list[str] | None = None) -> None:
        for value in values:
            table.append(([*(prefix or []), f"{key}={value}"], key, value.strip("'")))

    add("seed", [*INT_NON_NEGATIVE, HUGE_INT])
    add("model.hidden_size", [*INT_POSITIVE, "1000000"])
    add("model.num_layers", [*INT_POSITIVE, "100000"])
    add("model.bidirectional", BOOL)
    add("model.dropout", [*FLOAT, "-inf", "true", "[1]", "1.0", "-0.1"])
    add("model.param_budget", ["abc", "1.5", "0", "-1", "1e3", "1000000000000"])
    add("model.fused", BOOL)
    add("optim.name", CHOICE)
    add("optim.lr", [*FLOAT, "0", "-1"])
    add("optim.weight_decay", [*FLOAT, "-1"])
    add("optim.momentum", [*FLOAT, "-1"])
    for key in ("steps", "eval_every", "eval_batches", "log_every", "checkpoint_every", "final_eval_sequences"):
        add(f"trainer.{key}", INT_POSITIVE)
    add("trainer.batch_size", [*INT_POSITIVE, "nan", "inf", "true", "[1]", "1000000000"])
    add("model.bidirectional", ["0.5", "[1]", "abc"])
    add("optim.name", ["5", "[1]"])
    add("trainer.seeds", [*INT_POSITIVE, "1000000"])
    add("trainer.threads", ["abc", "0", "-1", "1.5", "100000"])
    add("trainer.device", ["tpu", "cuda:x", "5", "''", "'cüda'"])
    add("trainer.grad_clip", [*FLOAT, "0", "-1"])
    add("trainer.clip_mode", CHOICE)
    add("trainer.progress", CHOICE)
    add("trainer.solved_threshold", [*FLOAT, "0", "1.5"])
    add("trainer.baseline_z", [*FLOAT, "-1"])
    add("trainer.baseline_margin", [*FLOAT, "1.0", "-0.1"])
    for key in ("early_stop", "resume", "deterministic", "cuda_graphs"):
        add(f"trainer.{key}", BOOL)
    add("trainer.checkpoint_dir", ["''", "/proc/forbidden", "/dev/null"])
    add("tracking.backend", CHOICE)
    add("tracking.uri", ["foo://bar", "mlflow.db", "''", "sqlite://", "sqlite:////proc/forbidden/x.db", "5"])
    add("tracking.experiment", ["''", "'  '"])
    add("diagnostics.enabled", BOOL)
    add("diagnostics.figures", BOOL)
    add("diagnostics.every", INT_POSITIVE)
    add("diagnostics.batch_size", [*INT_POSITIVE, "1000000000"])
    add("diagnostics.seed", [*INT_NON_NEGATIVE, HUGE_INT])
    add("diagnostics.saturation", [*FLOAT, "0", "0.5", "-0.1"])
    add("diagnostics.dtype", ["float16", "nope", "5", "''"])
    add("diagnostics.cell", ["5", "[1]"])
    add("diagnostics.task", ["5", "[1]"])
    add("diagnostics.dependency_length", ["abc", "1.5", "[1]"])
    add("hydra.run.dir", ["/proc/forbidden"])
    for group in ("task", "cell", "optim", "trainer", "tracking", "diagnostics", "launcher", "experiment", "model"):
        add(group, ["nope", "'ßgru'"])
    for key in ("+model.hiden_size", "model.hiden_size", "+trainer.stepz", "trainer.stepz", "+optim.lrr", "+foo",
                "foo", "+tracking.urii", "+diagnostics.evry", "diagnostics.evry", "+cell.bogus", "cell.bogus",
                "+task.bogus", "task.bogus"):
        table.append(([f"{key}=1"], key.lstrip("+"), "1"))
    table.append((["+träiner.steps=1"], "träiner.steps", "1"))
    table.append((["task=адд"], "task", "адд"))
    return table


def _plugin_table() -> list[Case]:
    """Every key of every built-in task, and of every built-in cell's config schema, under its own group option."""
    from rnnbench.manager import get_registry

    registry = get_registry()
    table: list[Case] = []
    for kind, specs in (("cell", registry.cells), ("task", registry.tasks)):
        seen: set[tuple[type, str]] = set()
        for name, spec in sorted(specs.items()):
            if not registry.provenance(kind, name).startswith("rnnbench=="):
                continue
            for f in dataclasses.fields(spec.config):
                # tasks validate in their own constructors: every task's every key; cells share schemas and
                # validation code: every key of each schema once
                if f.name == "name" or (kind == "cell" and (spec.config, f.name) in seen):
                    continue
                seen.add((spec.config, f.name))
                kind_of = str(f.type)
                if "float" in kind_of:
                    values = ["abc", "nan", "inf"]
                elif "bool" in kind_of:
                    values = ["2", "abc"]
                elif "int" in kind_of:
                    values = ["abc", "1.5", "-1", "100000000" if f.name == "dependency_length" else "1000000000"]
                else:
                    values = ["nope", "''", "5"]
                for value in values:
                    table.append(([f"{kind}={name}", f"{kind}.{f.name}={value}"], f"{kind}.{f.name}", value.strip("'")))
    return table


# Runs cases in-process through rnnbench.cli.main, each in a fresh directory; prints JSON results.
DRIVER = r"""
import contextlib, io, json, os, sys, time, traceback
from pathlib import Path
import rnnbench.cli as cli

cases = json.loads(Path(sys.argv[1]).read_text())
root = Path(sys.argv[2])
results = []
for index, args in enumerate(cases):
    directory = root / f"case{index}"
    directory.mkdir()
    os.chdir(directory)
    err, out = io.StringIO(), io.StringIO()
    sys.argv = ["rnnbench", "trainer=smoke", *args]
    code = 0
    started = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc(file=err)
            code = "exception"
    results.append({"returncode": code, "stderr": err.getvalue(), "stdout": out.getvalue(),
                    "after": sorted(str(p.relative_to(directory)) for p in directory.rglob("*")),
                    "seconds": time.perf_counter() - started})
    os.chdir(root)
print(json.dumps(results))
"""


TABLE = _framework_table() + _plugin_table()


@pytest.fixture(scope="module")
def table_results(tmp_path_factory) -> list[dict]:
    """The table through two driver processes side by side (the machine's two cores), in order."""
    root = tmp_path_factory.mktemp("bad-input-table")
    chunks = [[args for args, _, _ in TABLE][i::2] for i in range(2)]
    procs = []
    for i, chunk in enumerate(chunks):
        (root / f"cases{i}.json").write_text(json.dumps(chunk))
        work = root / f"work{i}"
        work.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(root / f"cases{i}.json"), str(work)],
                                      cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    results = [None] * len(TABLE)
    for i, chunk_results in enumerate(outputs):
        results[i::2] = chunk_results
    for result in results:
        result["before"], result["changed"] = [], []
    return results


def test_the_table_covers_every_config_key(compose):
    """Every key of the composed configuration (and of every built-in cell and task) has bad values in the table."""
    from omegaconf import OmegaConf

    covered = {key for _, key, _ in TABLE}
    config = OmegaConf.to_container(compose(), resolve=False)

    def keys(node, prefix=""):
        for k, v in node.items():
            full = f"{prefix}{k}"
            if isinstance(v, dict) and k not in ("cell", "task"):
                yield from keys(v, full + ".")
            elif k not in ("cell", "task") or prefix:
                yield full

    missing = sorted(k for k in keys(config) if k not in covered and not k.endswith(".name"))
    assert not missing, missing
    for group in ("cell", "task"):
        assert group in covered


def test_every_bad_value_in_the_table_is_one_clean_line(table_results):
    failures = []
    for (args, key, value), result in zip(TABLE, table_results):
        try:
            _assert_clean(result, key, value, " ".join(args))
        except AssertionError as exc:
            failures.append(str(exc)[:400])
    assert not failures, f"{len(failures)} of {len(TABLE)} cases:\n" + "\n".join(failures)
