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

from rnnbench.allocator import retain_freed_memory
from rnnbench.config import constructor_kwargs, validate
from rnnbench.diagnostics import Diagnostics
from rnnbench.errors import ConfigError, PluginError
from rnnbench.manager import get_registry, rnnbench_version
from rnnbench.model import build_model, count_parameters, hidden_size_for_budget
from rnnbench.tracking import MlflowTracker, NullTracker, Tracker, resolve_tracking_uri
from rnnbench.train import Interrupted, RunResult, train

log = logging.getLogger("rnnbench")

# Keys that do not change what a run computes: excluded from the run key that identifies a run for resume/skip.
_VOLATILE = ("tracking", "trainer.progress", "trainer.checkpoint_dir", "trainer.resume", "trainer.threads",
             "trainer.log_every", "trainer.seeds")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("trainer.device", name, "auto or cpu: no CUDA device is available on this machine")
        if ":" in name and int(name.split(":")[1]) >= count:
            raise ConfigError("trainer.device", name, f"cuda:0 to cuda:{count - 1} (this machine has {count})")
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
    retained = retain_freed_memory()
    deterministic = bool(cfg.trainer.deterministic)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call imports inductor: seconds
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    return {
        "rnnbench.threads": str(threads),
        "rnnbench.flush_denormal": str(ftz).lower(),
        "rnnbench.retain_freed_memory": str(retained).lower(),
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
    uri = resolve_tracking_uri(cfg.tracking.uri, original_cwd)
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
) -> list[RunResult]:
    """Run one configured job: one run, or ``trainer.seeds`` runs trained side by side as one batched model.

    Returns the results of the runs trained; a run whose identical configuration already finished is skipped
    (``trainer.resume=true``), so a fully finished job returns an empty list.
    """
    validate(cfg)
    registry = get_registry()
    cell_spec, task_spec = registry.cell(cfg.cell.name), registry.task(cfg.task.name)
    device = resolve_device(cfg.trainer.device)
    process_tags = configure_process(cfg, device, n_parallel)

    task = task_spec.task(**constructor_kwargs(cfg.task))
    cell_kwargs = constructor_kwargs(cfg.cell)
    model_kwargs = dict(
        num_layers=cfg.model.num_layers, bidirectional=cfg.model.bidirectional, dropout=cfg.model.dropout
    )
    hidden = cfg.model.hidden_size
    if cfg.model.param_budget is not None:
        hidden = hidden_size_for_budget(cell_spec, cell_kwargs, task, cfg.model.param_budget, **model_kwargs)
    seeds = [cfg.seed + k for k in range(cfg.trainer.seeds)]
    models = [_seeded_model(cell_spec, cell_kwargs, task, hidden, cfg.model.fused, seed, model_kwargs, device)
              for seed in seeds]
    check_contract(models[0], task, registry.provenance("cell", cell_spec.name), cell_spec.name, device)

    common_tags = dict(
        process_tags,
        **{
            "rnnbench.cell": cell_spec.name,
            "rnnbench.task": task_spec.name,
            "rnnbench.cell.plugin": registry.provenance("cell", cell_spec.name),
            "rnnbench.task.plugin": registry.provenance("task", task_spec.name),
            "rnnbench.version": rnnbench_version(),
            "rnnbench.torch": torch.__version__,
            "rnnbench.overrides": " ".join(overrides or []),
            "rnnbench.output_dir": str(output_dir),
        },
    )
    commit = _git_commit()
    if commit:
        common_tags["rnnbench.git_commit"] = commit
    runs: list[_Run] = []
    for seed, model in zip(seeds, models):
        member_cfg = cfg.copy()
        member_cfg.seed = seed
        run = _Run.prepare(member_cfg, model, task, tracker if len(seeds) == 1 else None, original_cwd, output_dir)
        if run is not None:
            runs.append(run)
    if not runs:
        return []
    path = "fused" if cfg.model.fused and cell_spec.fused else "loop"
    if len(runs) > 1:
        from rnnbench.seed_parallel import choose_path

        path = f"seed_parallel:{choose_path(cell_spec, runs[0].model)}"
        common_tags.update({"rnnbench.seed_parallel": str(len(runs)), "rnnbench.seed_parallel.group": runs[0].key})
    for index, run in enumerate(runs):
        params = dict(run.params, **{
            "model.resolved_hidden_size": str(hidden),
            "model.num_parameters": str(count_parameters(run.model)),
            "model.path": path,
        })
        tags = dict(common_tags, **{"rnnbench.run_key": run.key})
        if len(runs) == 1:
            tags["rnnbench.checkpoint"] = str(run.checkpoint)
        else:
            tags["rnnbench.seed_parallel.index"] = str(index)
        seed = run.cfg.seed
        config_dir = output_dir if len(runs) == 1 else output_dir / f"seed_{seed}"
        run.open(f"{cell_spec.name}-{task_spec.name}-T{task.dependency_length}-s{seed}", params, tags, config_dir)
        log.info(
            "run %s: %s on %s (T=%d, length %d), %d parameters, %s path, device %s, seed %d",
            run.tracker.run_id, cell_spec.name, task_spec.name, task.dependency_length, task.sequence_length,
            count_parameters(run.model), path, device, seed,
        )

    diagnostics = None
    if len(runs) == 1:
        diagnostics = Diagnostics.from_config(cfg.diagnostics, runs[0].model, task, device, output_dir)
    elif cfg.diagnostics is not None and cfg.diagnostics.get("enabled", False):
        log.warning("diagnostics are not measured for seed-parallel runs (trainer.seeds > 1)")
    try:
        with stop_on_signals() as stop_requested:
            if len(runs) == 1:
                run = runs[0]
                results = [train(run.cfg, run.model, task, run.tracker, device, run.checkpoint, diagnostics,
                                 stop_requested)]
            else:
                from rnnbench.seed_parallel import train_seeds

                results = train_seeds(
                    cfg, cell_spec, cell_kwargs, task, [r.cfg.seed for r in runs], [r.tracker for r in runs],
                    device, hidden, models=[r.model for r in runs], stop_requested=stop_requested, **model_kwargs
                )
        if diagnostics is not None:
            diagnostics.finish(runs[0].tracker)
    except (KeyboardInterrupt, Interrupted):
        for run in runs:
            run.tracker.set_tags({"rnnbench.outcome": "interrupted"})
            run.tracker.end("KILLED")
        raise
    except BaseException:
        for run in runs:
            run.tracker.end("FAILED")
        raise
    for run, result in zip(runs, results):
        result.seed = run.cfg.seed
        final_tags = {"rnnbench.outcome": result.outcome}
        if result.diverged_step is not None:
            final_tags["rnnbench.diverged_step"] = str(result.diverged_step)
        run.tracker.set_tags(final_tags)
        run.tracker.end("FINISHED")
    return results


def _seeded_model(spec, cell_kwargs, task, hidden, fused, seed, model_kwargs, device) -> torch.nn.Module:
    torch.manual_seed(seed)  # a model's initial weights depend on its seed only
    return build_model(spec, cell_kwargs, task, hidden, fused=fused, **model_kwargs).to(device)


class _Run:
    """One tracked run: its config, run key, checkpoint, tracker, and whether it resumes an earlier run."""

    def __init__(self, cfg: Any, model: torch.nn.Module, task: Any, key: str, resolved: dict, tracker: Tracker,
                 checkpoint: Path, resume_id: str | None) -> None:
        self.cfg, self.model, self.task, self.key, self.resolved = cfg, model, task, key, resolved
        self.tracker, self.checkpoint, self.resume_id = tracker, checkpoint, resume_id
        self.params = flatten(resolved)
        self.params.update({f"task.{k}": str(v) for k, v in task.describe().items()
                            if f"task.{k}" not in self.params})

    @classmethod
    def prepare(cls, cfg: Any, model: torch.nn.Module, task: Any, tracker: Tracker | None, original_cwd: Path,
                output_dir: Path) -> _Run | None:
        """Find what to do with this run: None when it already finished, else a new or resumed run."""
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
        if checkpoint.exists() and (not cfg.trainer.resume or (resume_id is None and not isinstance(tracker, NullTracker))):
            checkpoint.unlink()  # a checkpoint whose run is gone: start afresh rather than mix two runs
        return cls(cfg, model, task, key, resolved, tracker, checkpoint, resume_id)

    def open(self, run_name: str, params: dict[str, str], tags: dict[str, str], config_dir: Path) -> None:
        self.tracker.start(run_name, params, tags, run_id=self.resume_id)
        if self.resume_id is None:
            self.tracker.log_metrics({f"baseline/{k}": v for k, v in self.task.baseline().items()}, 0)
            config_dir.mkdir(parents=True, exist_ok=True)
            config_file = config_dir / "config.yaml"
            config_file.write_text(OmegaConf.to_yaml(self.resolved))
            self.tracker.log_artifact(config_file)
