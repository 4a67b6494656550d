"""One job of the CLI: validate, build cell + task + model, open the tracking run, train, record the outcome.

Everything a job sets process-wide (seeds, threads, deterministic mode, signal handlers) is set here at the
start of every job, because multirun workers are reused from one job to the next.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from rnnbench.config import constructor_kwargs, validate
from rnnbench.diagnostics import Diagnostics
from rnnbench.errors import ConfigError, PluginError
from rnnbench.manager import get_registry, rnnbench_version
from rnnbench.model import build_model, count_parameters, hidden_size_for_budget
from rnnbench.tracking import MlflowTracker, NullTracker, Tracker, absolute_uri, default_tracking_uri
from rnnbench.train import Interrupted, RunResult, train

log = logging.getLogger("rnnbench")

# Keys that do not change what a run computes: excluded from the run key that identifies a run for resume/skip.
_VOLATILE = ("tracking", "trainer.progress", "trainer.checkpoint_dir", "trainer.resume", "trainer.threads",
             "trainer.log_every")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu: no CUDA device is available on this machine")
    return torch.device(name)


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = "null" if tree is None else json.dumps(tree) if isinstance(tree, list) else str(tree)
    return out


def run_key(resolved: dict[str, Any]) -> str:
    """A stable hash of everything that determines the run's numbers."""
    flat = flatten(resolved)
    kept = {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in _VOLATILE)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def configure_process(cfg: Any, device: torch.device, n_parallel: int) -> dict[str, str]:
    """Seeds, threads, denormal flushing and determinism for this job; returns what was set, as tags."""
    threads = cfg.trainer.threads or max(1, (os.cpu_count() or 1) // max(1, n_parallel))
    torch.set_num_threads(threads)
    ftz = torch.set_flush_denormal(True)  # vanishing gradients produce denormals: 2.6-7x slower without
    deterministic = bool(cfg.trainer.deterministic)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    return {
        "rnnbench.threads": str(threads),
        "rnnbench.flush_denormal": str(ftz).lower(),
        "rnnbench.deterministic": str(deterministic).lower(),
        "rnnbench.device": str(device),
    }


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], int | None]]:
    """While training, SIGINT (Ctrl-C), SIGTERM (a cluster's time limit) and SIGUSR2 request a stop.

    Yields the poll function the training loop checks between steps, so a run is always checkpointed at a
    step boundary, never in the middle of an optimiser update.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(signum, frame):  # noqa: ARG001
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def check_contract(model: torch.nn.Module, task: Any, provider: str, name: str, device: torch.device) -> None:
    """Run the model once on a tiny batch so a broken plugin cell is named before training starts."""
    gen = torch.Generator(device=device).manual_seed(0)
    batch = task.sample(2, gen)
    try:
        with torch.random.fork_rng(devices=[]):
            out = model(batch.x)
            task.loss(out, batch)
    except Exception as exc:
        raise PluginError(
            f"cell {name!r} from plugin {provider} failed on a (2, {batch.x.shape[1]}, {batch.x.shape[2]}) batch: "
            f"{type(exc).__name__}: {exc}. Check it with rnnbench.testing.check_cell"
        ) from exc


def make_tracker(cfg: Any, original_cwd: Path, output_dir: Path) -> Tracker:
    if cfg.tracking.backend == "none":
        return NullTracker()
    uri = absolute_uri(cfg.tracking.uri or default_tracking_uri(original_cwd), original_cwd)
    tracker = MlflowTracker(uri, cfg.tracking.experiment, fallback_dir=output_dir)
    tracker.connect()
    return tracker


def run_job(
    cfg: Any,
    output_dir: Path,
    original_cwd: Path,
    n_parallel: int = 1,
    overrides: list[str] | None = None,
    tracker: Tracker | None = None,
) -> RunResult | None:
    """Run one configured job; returns None when an identical finished run already exists (resume=true)."""
    validate(cfg)
    registry = get_registry()
    cell_spec, task_spec = registry.cell(cfg.cell.name), registry.task(cfg.task.name)
    device = resolve_device(cfg.trainer.device)
    tags = configure_process(cfg, device, n_parallel)

    task = task_spec.task(**constructor_kwargs(cfg.task))
    cell_kwargs = constructor_kwargs(cfg.cell)
    model_kwargs = dict(
        num_layers=cfg.model.num_layers, bidirectional=cfg.model.bidirectional, dropout=cfg.model.dropout
    )
    hidden = cfg.model.hidden_size
    if cfg.model.param_budget is not None:
        hidden = hidden_size_for_budget(cell_spec, cell_kwargs, task, cfg.model.param_budget, **model_kwargs)
    torch.manual_seed(cfg.seed)  # the model's initial weights depend on the seed only
    model = build_model(cell_spec, cell_kwargs, task, hidden, fused=cfg.model.fused, **model_kwargs).to(device)
    check_contract(model, task, registry.provenance("cell", cell_spec.name), cell_spec.name, device)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    key = run_key(resolved)
    tracker = tracker or make_tracker(cfg, original_cwd, output_dir)
    ckpt_dir = Path(cfg.trainer.checkpoint_dir)
    checkpoint = (ckpt_dir if ckpt_dir.is_absolute() else original_cwd / ckpt_dir) / f"{key}.pt"

    resume_id: str | None = None
    if cfg.trainer.resume:
        earlier = tracker.find_runs(key)
        finished = [rid for rid, status in earlier if status == "FINISHED"]
        if finished:
            log.info("skipped: run %s already finished this configuration (run key %s)", finished[0], key)
            return None
        if checkpoint.exists():
            saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get("run_id")
            resume_id = saved if any(rid == saved for rid, _ in earlier) else None
    elif checkpoint.exists():
        checkpoint.unlink()
    if resume_id is None and checkpoint.exists() and not isinstance(tracker, NullTracker):
        checkpoint.unlink()  # a checkpoint whose run is gone: start afresh rather than mix two runs

    params = flatten(resolved)
    params.update(
        {
            "model.resolved_hidden_size": str(hidden),
            "model.num_parameters": str(count_parameters(model)),
            "model.path": "fused" if cfg.model.fused and cell_spec.fused else "loop",
        }
    )
    params.update({f"task.{k}": str(v) for k, v in task.describe().items() if f"task.{k}" not in params})
    commit = _git_commit()
    tags.update(
        {
            "rnnbench.cell": cell_spec.name,
            "rnnbench.task": task_spec.name,
            "rnnbench.cell.plugin": registry.provenance("cell", cell_spec.name),
            "rnnbench.task.plugin": registry.provenance("task", task_spec.name),
            "rnnbench.run_key": key,
            "rnnbench.version": rnnbench_version(),
            "rnnbench.torch": torch.__version__,
            "rnnbench.overrides": " ".join(overrides or []),
            "rnnbench.output_dir": str(output_dir),
            "rnnbench.checkpoint": str(checkpoint),
            **({"rnnbench.git_commit": commit} if commit else {}),
        }
    )
    run_name = f"{cell_spec.name}-{task_spec.name}-T{task.dependency_length}-s{cfg.seed}"
    run_id = tracker.start(run_name, params, tags, run_id=resume_id)
    baseline = task.baseline()
    if resume_id is None:
        tracker.log_metrics({f"baseline/{k}": v for k, v in baseline.items()}, 0)
        config_file = output_dir / "config.yaml"
        output_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(OmegaConf.to_yaml(resolved))
        tracker.log_artifact(config_file)
    log.info(
        "run %s: %s on %s (T=%d, length %d), %d parameters, %s path, device %s",
        run_id, cell_spec.name, task_spec.name, task.dependency_length, task.sequence_length,
        count_parameters(model), params["model.path"], device,
    )
    diagnostics = Diagnostics.from_config(cfg.diagnostics, model, task, device, output_dir)
    try:
        with stop_on_signals() as stop_requested:
            result = train(cfg, model, task, tracker, device, checkpoint, diagnostics, stop_requested)
        if diagnostics is not None:
            diagnostics.finish(tracker)
    except (KeyboardInterrupt, Interrupted):
        tracker.set_tags({"rnnbench.outcome": "interrupted"})
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    final_tags = {"rnnbench.outcome": result.outcome}
    if result.diverged_step is not None:
        final_tags["rnnbench.diverged_step"] = str(result.diverged_step)
    tracker.set_tags(final_tags)
    tracker.end("FINISHED")
    return result
