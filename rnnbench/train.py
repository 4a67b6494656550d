"""One training run: seeded data streams, the optimisation loop, clipping, held-out evaluation, early stop,
divergence detection and atomic checkpoints. Returns the run's final metrics and outcome.

The hot loop never synchronises with the device: losses and gradient norms stay tensors until a flush every
``trainer.log_every`` steps, where they are checked for finiteness and handed to the tracker's buffer. The
buffer reaches the store at every checkpoint, so a run resumed after a crash never logs a step twice.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnbench.base import Task
from rnnbench.tracking import Tracker

log = logging.getLogger("rnnbench")


def stream_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for a named data stream (``train``, ``eval:3``...) of a run seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1


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
    outcome: str
    step: int
    metrics: dict[str, float]
    baseline: dict[str, float]
    diverged_step: int | None = None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    seed: int | None = None


class Interrupted(Exception):
    """Raised in the main thread on SIGTERM/SIGINT so the run can checkpoint and close cleanly."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(train_gen: torch.Generator) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "train": train_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], train_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    train_gen.set_state(state["train"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Progress:
    """A tqdm bar in an interactive terminal, periodic log lines otherwise."""

    def __init__(self, mode: str, total: int, initial: int, label: str) -> None:
        interactive = sys.stderr.isatty()
        self.mode = ("bar" if interactive else "log") if mode == "auto" else mode
        self.bar = None
        self.label = label
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, dynamic_ncols=True, leave=False)

    def update(self, step: int, advanced: int, values: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        if self.bar is not None:
            self.bar.update(advanced)
            self.bar.set_postfix_str(text, refresh=False)
        elif self.mode == "log":
            log.info("%s step %d %s", self.label, step, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def evaluate(model: nn.Module, task: Task, cfg: Any, index: int, device: torch.device) -> dict[str, float]:
    """Mean metrics over ``trainer.eval_batches`` fresh batches of the held-out stream ``eval:<index>``."""
    gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, f"eval:{index}"))
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for _ in range(cfg.trainer.eval_batches):
            batch = task.sample(cfg.trainer.batch_size, gen)
            for key, value in task.metrics(model(batch.x), batch).items():
                totals[key] = totals.get(key, 0) + value.detach().float()
    model.train(was_training)
    return {key: float(value) / cfg.trainer.eval_batches for key, value in totals.items()}


def outcome_of(metrics: dict[str, float], baseline: dict[str, float], cfg: Any) -> str:
    if metrics.get("accuracy", 0.0) >= cfg.trainer.solved_threshold:
        return "solved"
    if metrics.get("loss", math.inf) >= (1.0 - cfg.trainer.baseline_margin) * baseline["loss"]:
        return "at_baseline"
    return "learning"


def train(
    cfg: Any,
    model: nn.Module,
    task: Task,
    tracker: Tracker,
    device: torch.device,
    checkpoint: Path | None = None,
    on_step: Callable[[int, nn.Module], dict[str, float] | None] | None = None,
    stop_requested: Callable[[], int | None] | None = None,
) -> RunResult:
    """Train ``model`` on ``task`` for ``cfg.trainer.steps`` steps (resuming from ``checkpoint`` if it exists).

    ``on_step(step, model)`` is called after every optimiser step (diagnostics decide their own interval);
    metrics it returns are logged at that step. ``stop_requested()`` is polled between steps; a signal number
    makes the run checkpoint at that step boundary and raise :class:`Interrupted`.
    """
    t = cfg.trainer
    model.to(device).train()
    optimizer = make_optimizer(cfg.optim, model.parameters())
    train_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "train"))
    baseline = task.baseline()
    step, eval_index, last_eval = 0, 0, {}
    history: dict[str, list[tuple[int, float]]] = {}

    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], train_gen)
        step, eval_index, last_eval = state["step"], state["eval_index"], state["last_eval"]
        log.info("resumed from %s at step %d", checkpoint, step)

    def save_checkpoint() -> None:
        """Send buffered metrics to the store, then write the checkpoint: a resumed run recomputes, bit for
        bit, exactly the steps whose metrics had not reached the store."""
        tracker.flush()
        if checkpoint is not None:
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": _rng_state(train_gen),
                    "step": step,
                    "eval_index": eval_index,
                    "last_eval": last_eval,
                    "run_id": tracker.run_id,
                },
                checkpoint,
            )

    losses: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    first_pending = step + 1
    clip = t.grad_clip
    params = [p for p in model.parameters() if p.requires_grad]
    progress = Progress(t.progress, t.steps, step, f"{cfg.cell.name}/{cfg.task.name}")
    diverged_step: int | None = None
    clipped_steps = 0
    started, started_step = time.perf_counter(), step

    def flush() -> int | None:
        """Hand buffered step metrics to the tracker; returns the first non-finite step, if any."""
        nonlocal losses, norms, first_pending, clipped_steps
        if not losses:
            return None
        loss_values = torch.stack(losses).tolist()
        norm_values = torch.stack(norms).tolist()
        bad = None
        for offset, (lv, nv) in enumerate(zip(loss_values, norm_values)):
            s = first_pending + offset
            if not (math.isfinite(lv) and math.isfinite(nv)):
                bad = s
                break
            tracker.log_metrics({"train/loss": lv, "train/grad_norm": nv}, s)
            history.setdefault("train/loss", []).append((s, lv))
            if clip is not None and t.clip_mode == "norm" and nv > clip:
                clipped_steps += 1
        progress.update(
            first_pending + len(loss_values) - 1, len(loss_values), {"loss": loss_values[-1]} | last_eval_short()
        )
        first_pending += len(loss_values)
        losses, norms = [], []
        tracker.heartbeat()
        return bad

    def last_eval_short() -> dict[str, float]:
        return {"acc": last_eval["accuracy"]} if "accuracy" in last_eval else {}

    try:
        while step < t.steps:
            signum = stop_requested() if stop_requested is not None else None
            if signum is not None:
                raise Interrupted(signum)
            step += 1
            batch = task.sample(t.batch_size, train_gen)
            loss = task.loss(model(batch.x), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None and t.clip_mode == "norm":
                norm = torch.nn.utils.clip_grad_norm_(params, clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                if clip is not None:
                    torch.nn.utils.clip_grad_value_(params, clip)
            optimizer.step()
            losses.append(loss.detach())
            norms.append(norm.detach())
            if on_step is not None:
                extra = on_step(step, model)
                if extra:
                    tracker.log_metrics(extra, step)

            do_eval = step % t.eval_every == 0 or step == t.steps
            if step % t.log_every == 0 or do_eval or step % t.checkpoint_every == 0:
                diverged_step = flush()
                if diverged_step is not None:
                    break
            if do_eval:
                eval_index += 1
                last_eval = evaluate(model, task, cfg, eval_index, device)
                if not all(math.isfinite(v) for v in last_eval.values()):
                    diverged_step = step
                    break
                tracker.log_metrics({f"eval/{k}": v for k, v in last_eval.items()}, step)
                for k, v in last_eval.items():
                    history.setdefault(f"eval/{k}", []).append((step, v))
            if step % t.checkpoint_every == 0 or (do_eval and step == t.steps):
                save_checkpoint()
            if do_eval and t.early_stop and last_eval.get("accuracy", 0.0) >= t.solved_threshold:
                break
    except (KeyboardInterrupt, Interrupted):
        if flush() is None:
            save_checkpoint()
        progress.close()
        raise
    finally:
        progress.close()

    if diverged_step is not None:
        metrics = {k: v for k, v in last_eval.items()}
        result = RunResult("diverged", step, metrics, baseline, diverged_step, history)
    else:
        if not last_eval:
            eval_index += 1
            last_eval = evaluate(model, task, cfg, eval_index, device)
        result = RunResult(outcome_of(last_eval, baseline, cfg), step, dict(last_eval), baseline, None, history)
    elapsed = time.perf_counter() - started
    done_steps = max(step - started_step, 1)
    summary = {
        "time/steps_per_second": done_steps / elapsed if elapsed > 0 else 0.0,
        "train/clip_fraction": clipped_steps / done_steps if clip is not None and t.clip_mode == "norm" else 0.0,
    }
    tracker.log_metrics(summary, step)
    result.metrics.update(summary)
    return result
