"""One job of the CLI: validate, build the task and the members' models, find what each run has to do (skip,
finish, resume or start), open the tracking runs, and hand the population to the training loop.

A job with ``trainer.seeds=K`` is K members (seeds ``seed .. seed + K - 1``), each its own MLflow run with its
own run key and checkpoint (:mod:`rnnbench.identity`). Members resuming at the same step train together as one
population; members at different steps (a rerun after a partial job) train as separate populations.

Everything a job sets process-wide (seeds, threads, deterministic mode, signal handlers) is set here at the
start of every job, because multirun workers are reused from one job to the next.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from rnnbench import checkpoint as ckpt
from rnnbench import identity, validation
from rnnbench.allocator import retain_freed_memory
from rnnbench.config import constructor_kwargs, validate
from rnnbench.diagnostics import Diagnostics
from rnnbench.errors import PluginError, RnnbenchError
from rnnbench.graphs import graphs_wanted
from rnnbench.lengths import Lengths
from rnnbench.lengths import check as check_lengths
from rnnbench.manager import get_registry, rnnbench_version
from rnnbench.devices import resolve_device
from rnnbench.memory import check_fits
from rnnbench.model import build_model, count_parameters, uses_fused
from rnnbench.population import SinglePopulation, StackedPopulation
from rnnbench.resources import usable_cpus
from rnnbench.run_info import run_params, run_tags
from rnnbench.tracking import MlflowTracker, NullTracker, Tracker, resolve_tracking_uri
from rnnbench.train import Interrupted, Member, RunResult, train

log = logging.getLogger("rnnbench")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


def configure_process(cfg: Any, device: torch.device, n_parallel: int) -> dict[str, str]:
    """Seeds, threads, denormal flushing and determinism for this job; returns what was set, as tags."""
    threads = cfg.trainer.threads or max(1, usable_cpus() // max(1, n_parallel))
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


def git_commit() -> str | None:
    """The commit of the rnnbench checkout this code runs from (``-dirty`` with local changes), or None when
    rnnbench is installed from a wheel: a repository that merely encloses site-packages is not its source."""
    source = Path(__file__).resolve().parent
    if not (source.parent / "pyproject.toml").is_file() or "site-packages" in source.parts:
        return None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(source.parent), *args], capture_output=True, text=True,
                                 timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if git("rev-parse", "--show-toplevel") != str(source.parent):
        return None
    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no", "--", "rnnbench", "plugins", "tasks", "conf"):
        commit += "-dirty"
    return commit


def handed_on(handler: Any) -> Callable[[int, Any], Any] | None:
    """The handler a signal had before rnnbench's, when rnnbench hands the signal on to it after checkpointing:
    a function that another part of the process installed (submitit's checkpoint-and-requeue on SIGUSR2);
    None for Python's defaults (``SIG_DFL``, ``SIG_IGN``, SIGINT's ``KeyboardInterrupt``)."""
    if callable(handler) and handler is not signal.default_int_handler:
        return handler
    return None


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], int | None]]:
    """For the whole job, SIGINT (Ctrl-C), SIGTERM (a cluster's time limit) and SIGUSR2 request a stop.

    Yields the poll function the training loop checks between steps, so a run is always checkpointed at a
    step boundary, never in the middle of an optimiser update. A signal that arrives after the last step lets
    the job close its runs first.

    When the job ends on a signal, the handlers that were there before are put back and the signal is handed
    on to the earlier one if it is a function (:func:`handed_on`): under submitit (``launcher=slurm``), SIGUSR2
    is SLURM's warning before the time limit, and submitit's handler requeues the job (it exits the process) or
    raises when it will not (``max_num_timeout`` used up). The requeued job resumes from the checkpoint into the
    same run. Otherwise, or when that handler returns, :class:`Interrupted` is raised and the caller exits with
    the signal's status.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(signum, frame):  # noqa: ARG001
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if received:
            earlier = handed_on(previous[received[0]])
            if earlier is not None:
                log.info("signal %d: runs checkpointed and closed; handing the signal on to %s",
                         received[0], getattr(earlier, "__qualname__", earlier))
                earlier(received[0], None)
            raise Interrupted(received[0])


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold ``<checkpoint>.lock`` for the whole job: one process per run key at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.stem + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise RnnbenchError(
                f"this configuration (run key {path.stem}) is being trained by process {holder} right now "
                f"(lock {lock}); wait for it to end or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


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


@dataclass
class Plan:
    """What one member of the job does: its identity, its run, and where it resumes."""

    seed: int
    cfg: Any
    resolved: dict[str, Any]
    key: str
    checkpoint: Path
    tracker: Tracker
    run_id: str | None = None
    """An earlier unfinished run of this run key to continue (None: a new run)."""
    resume: dict[str, Any] | None = None
    options: list[dict[str, Any]] = field(default_factory=list)
    """The run's readable checkpoints, newest first."""
    logged_through: int = 0
    has_baseline: bool = False


def _logged(tracker: Tracker, run_id: str) -> tuple[int, bool]:
    """The last step of ``train/loss`` in the store for ``run_id``, and whether its baseline is there."""
    client = getattr(tracker, "client", None)
    if client is None:
        return 0, False
    history = client.get_metric_history(run_id, "train/loss")
    return max((m.step for m in history), default=0), "baseline/loss" in client.get_run(run_id).data.metrics


def plan_member(cfg: Any, seed: int, original_cwd: Path, output_dir: Path) -> Plan | None:
    """Find what member ``seed`` has to do: None when its configuration already finished, else a plan."""
    member_cfg = cfg.copy()
    member_cfg.seed = seed
    resolved = OmegaConf.to_container(member_cfg, resolve=True)
    key = identity.run_key(resolved)
    path = identity.checkpoint_path(cfg.trainer.checkpoint_dir, original_cwd, key)
    tracker = make_tracker(member_cfg, original_cwd, output_dir)
    plan = Plan(seed, member_cfg, resolved, key, path, tracker)
    if not cfg.trainer.resume:
        ckpt.remove(path)
        return plan
    earlier = tracker.find_runs(key)
    finished = [rid for rid, status in earlier if status == "FINISHED"]
    if finished:
        log.info("skipped: run %s already finished this configuration (run key %s)", finished[0], key)
        return None
    saved = ckpt.load_all(path)
    open_ids = [rid for rid, _ in earlier]
    if isinstance(tracker, NullTracker):
        plan.options = saved
    else:
        plan.options = [s for s in saved if s.get("run_id") in open_ids]
        plan.run_id = plan.options[0]["run_id"] if plan.options else (open_ids[0] if open_ids else None)
        plan.options = [s for s in plan.options if s.get("run_id") == plan.run_id]
        if plan.run_id is not None:
            plan.logged_through, plan.has_baseline = _logged(tracker, plan.run_id)
            for rid in open_ids:
                if rid != plan.run_id:  # older attempts of the same run key: closed, never left RUNNING
                    tracker.client.set_terminated(rid, "KILLED")  # type: ignore[attr-defined]
    plan.resume = plan.options[0] if plan.options else None
    if plan.resume is None and saved:
        log.info("checkpoint %s belongs to no open run: starting afresh", path)
    return plan


def align(plans: list[Plan]) -> None:
    """Resume every member from the same step where their checkpoints allow it (a kill between two members'
    checkpoint writes leaves one a checkpoint ahead; its previous checkpoint matches the others)."""
    resuming = [p for p in plans if p.resume is not None]
    if not resuming or len(resuming) != len(plans):
        return
    target = min(p.resume["step"] for p in resuming)
    for p in resuming:
        for option in p.options:
            if option["step"] == target:
                p.resume = option


def run_job(
    cfg: Any,
    output_dir: Path,
    original_cwd: Path,
    n_parallel: int = 1,
    overrides: list[str] | None = None,
) -> list[RunResult]:
    """Run one configured job: one run, or ``trainer.seeds`` members trained side by side.

    Returns the results of the runs trained or finished now; a run whose configuration already finished is
    skipped (``trainer.resume=true``), so a fully finished job returns an empty list.
    """
    registry = get_registry()
    validate(cfg, registry)
    cell_spec, task_spec = registry.cell(cfg.cell.name), registry.task(cfg.task.name)
    device = resolve_device(cfg.trainer.device)
    validation.writable_dir("trainer.checkpoint_dir", cfg.trainer.checkpoint_dir, base=original_cwd)
    task = task_spec.task(**constructor_kwargs(cfg.task))
    lengths = check_lengths(task_spec, cfg.task, task)
    cell_kwargs = constructor_kwargs(cfg.cell)
    hidden = check_fits(cfg, task, cell_spec, cell_kwargs, device, task_spec=task_spec, lengths=lengths).hidden_size
    process_tags = configure_process(cfg, device, n_parallel)
    model_kwargs = dict(num_layers=cfg.model.num_layers, bidirectional=cfg.model.bidirectional,
                        dropout=cfg.model.dropout)

    def seeded_model(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)  # a model's initial weights depend on its seed only
        fused = uses_fused(cell_spec, cfg.model.fused, device.type)
        return build_model(cell_spec, cell_kwargs, task, hidden, fused=fused, **model_kwargs).to(device)

    check_contract(seeded_model(cfg.seed), task, registry.provenance("cell", cell_spec.name), cell_spec.name, device)
    common_tags = dict(process_tags, **{
        "rnnbench.cell": cell_spec.name,
        "rnnbench.task": task_spec.name,
        "rnnbench.cell.plugin": registry.provenance("cell", cell_spec.name),
        "rnnbench.task.plugin": registry.provenance("task", task_spec.name),
        "rnnbench.version": rnnbench_version(),
        "rnnbench.torch": torch.__version__,
        "rnnbench.overrides": " ".join(overrides or []),
        "rnnbench.output_dir": str(output_dir),
    })
    commit = git_commit()
    if commit:
        common_tags["rnnbench.git_commit"] = commit
    seeds = identity.member_seeds(cfg.seed, cfg.trainer.seeds)
    results: list[RunResult] = []
    with ExitStack() as stack:
        stop_requested = stack.enter_context(stop_on_signals())
        plans = []
        for seed in seeds:
            key = identity.run_key(identity.member_resolved(OmegaConf.to_container(cfg, resolve=True), seed))
            stack.enter_context(run_lock(identity.checkpoint_path(cfg.trainer.checkpoint_dir, original_cwd, key)))
            plan = plan_member(cfg, seed, original_cwd, output_dir)
            if plan is not None:
                plans.append(plan)
        align(plans)
        for plan in [p for p in plans if p.resume is not None and "result" in p.resume]:
            results.append(_close_finished(plan, common_tags))  # finished, but killed before its run was closed
        plans = [p for p in plans if p.resume is None or "result" not in p.resume]
        groups: dict[int, list[Plan]] = {}
        for plan in plans:
            groups.setdefault(plan.resume["step"] if plan.resume else 0, []).append(plan)
        for group in groups.values():
            results += _train_group(cfg, group, seeded_model, cell_spec, cell_kwargs, task, hidden, model_kwargs,
                                    device, common_tags, output_dir, len(seeds), stop_requested, lengths)
    return results


def _close_finished(plan: Plan, tags: dict[str, str]) -> RunResult:
    result: RunResult = plan.resume["result"]  # type: ignore[index]
    if plan.run_id is not None or isinstance(plan.tracker, NullTracker):
        plan.tracker.start("", {}, tags, run_id=plan.run_id)
        plan.tracker.end("FINISHED")
    return result


def _train_group(cfg: Any, plans: list[Plan], seeded_model: Callable[[int], torch.nn.Module], cell_spec: Any,
                 cell_kwargs: dict[str, Any], task: Any, hidden: int, model_kwargs: dict[str, Any],
                 device: torch.device, common_tags: dict[str, str], output_dir: Path, job_members: int,
                 stop_requested: Callable[[], int | None], lengths: Lengths | None = None) -> list[RunResult]:
    """Open the runs of members that resume at the same step and train them as one population."""
    models = [seeded_model(p.seed) for p in plans]
    if len(plans) == 1:
        population: Any = SinglePopulation(models[0])
        path = population.path
    else:
        population = StackedPopulation(cell_spec, cell_kwargs, task, models, hidden, **model_kwargs)
        path = f"seed_parallel:{population.path}"
    if graphs_wanted(cfg, device):
        population.capture_graphs()
    members: list[Member] = []
    try:
        for index, plan in enumerate(plans):
            params = run_params(plan.resolved, task.describe(), hidden, count_parameters(models[index]), path)
            tags = dict(common_tags, **run_tags(cfg.cell.name, cfg.task.name, task.dependency_length, plan.seed),
                        **{"rnnbench.run_key": plan.key, "rnnbench.checkpoint": str(plan.checkpoint),
                           "rnnbench.group_key": identity.group_key(plan.resolved)})
            if len(plans) > 1:
                tags.update({"rnnbench.seed_parallel": str(len(plans)), "rnnbench.seed_parallel.index": str(index)})
            folder = output_dir if job_members == 1 else output_dir / f"seed_{plan.seed}"
            name = f"{cfg.cell.name}-{cfg.task.name}-T{task.dependency_length}-s{plan.seed}"
            plan.tracker.start(name, params, tags, run_id=plan.run_id)
            if not plan.has_baseline:
                plan.tracker.log_metrics({f"baseline/{k}": v for k, v in task.baseline().items()}
                                         | (lengths.baselines() if lengths is not None else {}), 0)
            if plan.run_id is None:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "config.yaml").write_text(OmegaConf.to_yaml(plan.resolved))
                plan.tracker.log_artifact(folder / "config.yaml")
            diagnostics = Diagnostics.from_config(plan.cfg.diagnostics, models[index], task, device, folder)
            members.append(Member(plan.seed, plan.tracker, plan.checkpoint, diagnostics, plan.resume,
                                  plan.logged_through))
            log.info("run %s: %s on %s (T=%d, length %d), %d parameters, %s path, device %s, seed %d%s",
                     plan.tracker.run_id, cfg.cell.name, cfg.task.name, task.dependency_length,
                     task.sequence_length, count_parameters(models[index]), path, device, plan.seed,
                     f", resuming at step {plan.resume['step']}" if plan.resume else "")
        return train(cfg, population, task, members, device, stop_requested, lengths)
    except (KeyboardInterrupt, Interrupted):
        for m in members:
            if m.result is None:
                m.tracker.set_tags({"rnnbench.outcome": "interrupted"})
                m.tracker.end("KILLED")
        raise
    except BaseException:
        for m in members:
            if m.result is None:
                m.tracker.end("FAILED")
        raise
