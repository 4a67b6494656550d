"""The training loop: one loop for a population of K >= 1 members of one configuration, trained in lockstep.

Every feature exists once and works for every K: seeded data streams, clipping per member, periodic held-out
checks, early stop confirmed by the final evaluation, divergence detection, diagnostics, atomic checkpoints and
bit-identical resume (per member, with every RNG state and counter), a stop at a step boundary on a signal,
progress, and the final evaluation that decides each member's outcome (:mod:`rnnbench.evaluation`).

The hot loop never synchronises with the device: losses and gradient norms stay tensors until a flush every
``trainer.log_every`` steps (and at every check and checkpoint), where they are checked for finiteness and handed
to the members' trackers. Trackers send buffered metrics to the store right before every checkpoint, so a run
resumed after a crash recomputes, bit for bit, exactly the steps whose metrics had not reached the store; steps a
resumed member had already logged (``Member.logged_through``) are recomputed silently.

When a member finishes (solved and confirmed, diverged, or out of steps) the loop logs its final metrics and
diagnostics, writes a final checkpoint holding its result, and closes its run ``FINISHED``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnbench import checkpoint as ckpt
from rnnbench.base import Task
from rnnbench.evaluation import Evaluation, evaluate, generator, outcome_of
from rnnbench.faults import fault
from rnnbench.lengths import Lengths
from rnnbench.lengths import logged as at_lengths
from rnnbench.population import Population
from rnnbench.progress import Progress
from rnnbench.tracking import Tracker

log = logging.getLogger("rnnbench")
CHECKPOINT_FORMAT = 2


def make_optimizer(cfg: Any, params: Any) -> torch.optim.Optimizer:
    name = cfg.name
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass
class RunResult:
    """A member's result: ``metrics`` are the final evaluation's (unprefixed) plus ``train/clip_fraction`` and
    ``time/steps_per_second``; ``step`` is the last step trained, or the first non-finite step if diverged."""

    outcome: str
    step: int
    metrics: dict[str, float]
    baseline: dict[str, float]
    diverged_step: int | None = None
    seed: int | None = None
    run_id: str | None = None
    """The MLflow run (None without tracking)."""
    experiment_id: str | None = None


class Interrupted(Exception):
    """Raised on SIGTERM/SIGINT after the population checkpointed at a step boundary."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


@dataclass
class Member:
    """One run of the population: where it records, its checkpoint and diagnostics, and its loop state."""

    seed: int
    tracker: Tracker
    checkpoint: Path | None = None
    diagnostics: Any = None
    resume: dict[str, Any] | None = None
    """A loaded checkpoint to resume from (all members of a population share its step)."""
    logged_through: int = 0
    """Steps up to this one already reached the store; their metrics are not logged again."""
    train_gen: torch.Generator | None = None
    eval_index: int = 0
    finals: int = 0
    last_eval: dict[str, float] = field(default_factory=dict)
    clipped_steps: int = 0
    started_step: int = 0
    result: RunResult | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step > self.logged_through and metrics:
            self.tracker.log_metrics(metrics, step)


def _checkpoint_state(population: Population, optimizer: torch.optim.Optimizer, k: int, m: Member,
                      step: int) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "weights": population.member_weights(k),
        "optimizer": population.member_optimizer_state(optimizer, k),
        "rng": ckpt.global_rng_state(),
        "train_gen": m.train_gen.get_state() if m.train_gen is not None else None,
        "eval_index": m.eval_index,
        "finals": m.finals,
        "last_eval": m.last_eval,
        "clipped_steps": m.clipped_steps,
        "diagnostics": m.diagnostics.state() if m.diagnostics is not None else None,
        "run_id": m.tracker.run_id,
        "seed": m.seed,
    }


def train(
    cfg: Any,
    population: Population,
    task: Task,
    members: list[Member],
    device: torch.device,
    stop_requested: Callable[[], int | None] | None = None,
    lengths: Lengths | None = None,
) -> list[RunResult]:
    """Train ``population`` (member k is ``members[k]``) for ``cfg.trainer.steps`` steps; returns one result per
    member, in order. A stop request (a signal number) checkpoints every running member and raises
    :class:`Interrupted`. ``lengths``: length generalisation (:mod:`rnnbench.lengths`): the training batches'
    lengths and the test lengths of the final evaluation; ``task`` is the task at ``task.dependency_length``."""
    t = cfg.trainer
    lengths = lengths if lengths is not None else Lengths.off(task)
    K = population.size
    optimizer = make_optimizer(cfg.optim, population.parameters())
    baseline = task.baseline()
    clip = t.grad_clip
    norm_clip = clip is not None and t.clip_mode == "norm"
    chunk = max(1, min(4 * t.batch_size, t.final_eval_sequences))
    step = 0
    for m in members:
        m.train_gen = generator(m.seed, "train", device)
    if members[0].resume is not None:
        step = members[0].resume["step"]
        population.load_members(optimizer, [m.resume["weights"] for m in members],
                                [m.resume["optimizer"] for m in members])
        ckpt.set_global_rng_state(members[0].resume["rng"])
        for m in members:
            r = m.resume
            m.train_gen.set_state(r["train_gen"])
            m.eval_index, m.finals, m.last_eval, m.clipped_steps = (
                r["eval_index"], r["finals"], dict(r["last_eval"]), r["clipped_steps"])
            if m.diagnostics is not None and r.get("diagnostics") is not None:
                m.diagnostics.load_state(r["diagnostics"])
        log.info("resumed %d run(s) at step %d", K, step)
    for m in members:
        m.started_step = step
    active = list(range(K))
    rows: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, (K,) losses, (K,) norms), NaN if not run
    progress = Progress(t.progress, t.steps, step, f"{cfg.cell.name}/{cfg.task.name}" + (f" x{K}" if K > 1 else ""))
    started = time.perf_counter()

    def finish(k: int, outcome: str, final: Evaluation | None, at: int, diverged_step: int | None = None) -> None:
        """Close member k: final metrics, diagnostics, a final checkpoint with its result, run FINISHED."""
        m = members[k]
        active.remove(k)
        population.freeze(k)
        elapsed = time.perf_counter() - started
        trained = max(at - m.started_step, 1)
        summary = {
            "time/steps_per_second": trained / elapsed if elapsed > 0 else 0.0,
            "train/clip_fraction": m.clipped_steps / max(at, 1) if norm_clip else 0.0,
        }
        metrics = dict(final.metrics) if final is not None else {}
        logged = {f"final/{key}": v for key, v in metrics.items()}
        if final is not None:
            logged["final/loss_se"] = final.loss_se
            logged["final/sequences"] = float(final.sequences)
            if lengths.test_lengths:
                tested = lengths.evaluate(population, k, m.seed, m.finals, t.final_eval_sequences, chunk, device)
                logged |= at_lengths(tested)
                metrics |= {f"accuracy_at_{length}": ev.metrics["accuracy"] for length, ev in tested.items()
                            if "accuracy" in ev.metrics}
        m.log(logged | summary, at)
        model = population.model_of(k)  # the member's model object holds its final weights
        if m.diagnostics is not None:
            m.diagnostics.finish(m.tracker, model, at)
        m.result = RunResult(outcome, diverged_step or at, metrics | summary, baseline, diverged_step, m.seed,
                             m.tracker.run_id, getattr(m.tracker, "experiment_id", None))
        tags = {"rnnbench.outcome": outcome}
        if diverged_step is not None:
            tags["rnnbench.diverged_step"] = str(diverged_step)
        m.tracker.set_tags(tags)
        m.tracker.flush()
        if m.checkpoint is not None:
            state = _checkpoint_state(population, optimizer, k, m, at)
            state["result"] = m.result
            ckpt.save(state, m.checkpoint)
        m.tracker.end("FINISHED")

    def flush() -> None:
        """Hand buffered step metrics to the trackers; a member with a non-finite value diverged there."""
        if not rows:
            return
        losses = torch.stack([r[1] for r in rows]).tolist()
        norms = torch.stack([r[2] for r in rows]).tolist()
        steps = [r[0] for r in rows]
        rows.clear()
        for k in list(active):
            m = members[k]
            for s, lr, nr in zip(steps, losses, norms):
                lv, nv = lr[k], nr[k]
                if not (math.isfinite(lv) and math.isfinite(nv)):
                    finish(k, "diverged", None, s, diverged_step=s)
                    break
                m.log({"train/loss": lv, "train/grad_norm": nv}, s)
                if norm_clip and nv > clip:
                    m.clipped_steps += 1
            m.tracker.heartbeat()
        shown: dict[str, float] = {"loss": sum(losses[-1][k] for k in active) / len(active)} if active else {}
        accs = [members[k].last_eval["accuracy"] for k in active if "accuracy" in members[k].last_eval]
        if accs:
            shown["acc"] = sum(accs) / len(accs)
        progress.update(steps[-1], len(steps), shown)

    def final_evaluation(ks: list[int]) -> dict[int, Evaluation]:
        for k in ks:
            members[k].finals += 1
        return _evaluate_members(population, task, members, ks, "final", t.final_eval_sequences, chunk, device)

    def save_checkpoints() -> None:
        for k in active:
            members[k].tracker.flush()
        for k in active:
            m = members[k]
            if m.checkpoint is not None:
                ckpt.save(_checkpoint_state(population, optimizer, k, m, step), m.checkpoint)

    try:
        while step < t.steps and active:
            signum = stop_requested() if stop_requested is not None else None
            if signum is not None:
                flush()
                save_checkpoints()
                raise Interrupted(signum)
            step += 1
            running = list(active)
            batches = [lengths.sample(t.batch_size, members[k].train_gen) for k in running]
            outs = population.forward([b.x for b in batches], running)
            losses = [task.loss(out, batch) for out, batch in zip(outs, batches)]
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms = population.clip_(clip, t.clip_mode)
            optimizer.step()
            population.after_step()
            if len(running) == K:
                row = torch.stack(losses).detach() if K > 1 else loss.detach().reshape(1)
            else:
                idle = [k for k in range(K) if k not in running]
                row = torch.full((K,), math.nan, device=device)
                row[running] = torch.stack(losses).detach()
                norms = norms.detach().clone()
                norms[idle] = math.nan
            rows.append((step, row, norms.detach()))
            for k in running:
                d = members[k].diagnostics
                if d is not None and d.due(step):
                    members[k].log(d.measure(step, population.model_of(k)) or {}, step)
            if step == 1:
                fault("train.before_first_checkpoint")
            fault("train.step", stop_requested)

            do_eval = step % t.eval_every == 0 or step == t.steps
            checkpoint_now = step % t.checkpoint_every == 0 and step < t.steps
            if step % t.log_every == 0 or do_eval or checkpoint_now:
                flush()
            if do_eval and active:
                for k in active:
                    members[k].eval_index += 1
                checks = _evaluate_members(population, task, members, list(active), "eval",
                                           t.eval_batches * t.batch_size, t.batch_size, device)
                confirm = []
                for k, ev in checks.items():
                    m = members[k]
                    if not ev.finite:
                        finish(k, "diverged", None, step, diverged_step=step)
                        continue
                    m.last_eval = ev.metrics
                    m.log({f"eval/{key}": v for key, v in ev.metrics.items()}, step)
                    if t.early_stop and step < t.steps and ev.metrics.get("accuracy", 0.0) >= t.solved_threshold:
                        confirm.append(k)
                for k, ev in (final_evaluation(confirm) if confirm else {}).items():
                    if ev.finite and ev.metrics.get("accuracy", 0.0) >= t.solved_threshold:
                        finish(k, "solved", ev, step)
                    else:
                        members[k].log({"confirm/accuracy": ev.metrics.get("accuracy", math.nan)}, step)
            if checkpoint_now and active:
                save_checkpoints()
        flush()
        fault("train.after_last_step")
        if active:
            for k, ev in final_evaluation(list(active)).items():
                if ev.finite:
                    finish(k, outcome_of(ev, baseline, t), ev, step)
                else:
                    finish(k, "diverged", None, step, diverged_step=step)
    finally:
        progress.close()
    return [m.result for m in members]  # type: ignore[misc]


def _evaluate_members(population: Population, task: Task, members: list[Member], ks: list[int], kind: str,
                      sequences: int, chunk: int, device: torch.device) -> dict[int, Evaluation]:
    """Evaluate members ``ks`` on their streams ``<kind>:<i>`` (``i`` their ``eval_index`` or ``finals``
    count): one batched evaluation per stream name."""
    by_stream: dict[str, dict[int, int]] = {}
    for k in ks:
        index = members[k].eval_index if kind == "eval" else members[k].finals
        by_stream.setdefault(f"{kind}:{index}", {})[k] = members[k].seed
    out: dict[int, Evaluation] = {}
    for stream, seeds in by_stream.items():
        out.update(evaluate(population, task, seeds, stream, sequences, chunk, device))
    return out
