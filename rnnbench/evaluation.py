"""Held-out evaluation and a run's outcome (internal).

Every run's data come from named streams of its seed: ``train``, ``eval:<i>`` for the i-th periodic check and
``final:<n>`` for the n-th final evaluation (the confirmation before an early stop, or the evaluation after the
last step). The final evaluation scores ``trainer.final_eval_sequences`` fresh sequences: its metrics are the
run's result, logged as ``final/<metric>``, and decide the outcome:

- ``solved``: ``final/accuracy`` >= ``trainer.solved_threshold``;
- ``at_baseline``: ``final/loss`` is not below the memoryless baseline loss by more than ``trainer.baseline_z``
  standard errors of the final evaluation's mean loss (the model learned nothing a memoryless predictor could
  not, as far as the evaluation can tell);
- ``learning`` otherwise; ``diverged`` (a non-finite loss, gradient or evaluation) is decided by the loop.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rnnbench.base import Task

if TYPE_CHECKING:
    from rnnbench.population import Population


def stream_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for a named data stream (``train``, ``eval:3``...) of a run seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1


def generator(seed: int, stream: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream))


@dataclass
class Evaluation:
    metrics: dict[str, float]
    """Means over the evaluated sequences (each chunk weighted by its size)."""
    loss_se: float
    """Standard error of the mean loss, from the spread of the chunks' mean losses (nan with one chunk)."""
    sequences: int

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.metrics.values())


def evaluate(population: Population, task: Task, seeds: dict[int, int], stream: str, sequences: int, chunk: int,
             device: torch.device) -> dict[int, Evaluation]:
    """Evaluate members ``seeds`` (member index -> seed) on ``sequences`` fresh sequences of their stream
    ``stream``, in chunks of ``chunk``, without gradients and without dropout."""
    members = list(seeds)
    gens = {k: generator(s, stream, device) for k, s in seeds.items()}
    sums: dict[int, dict[str, torch.Tensor]] = {k: {} for k in members}
    chunk_losses: dict[int, list[torch.Tensor]] = {k: [] for k in members}
    population.train(False)
    try:
        with torch.no_grad():
            done = 0
            while done < sequences:
                n = min(chunk, sequences - done)
                batches = [task.sample(n, gens[k]) for k in members]
                outs = population.forward([b.x for b in batches], members)
                for k, out, batch in zip(members, outs, batches):
                    for key, value in task.metrics(out, batch).items():
                        sums[k][key] = sums[k].get(key, 0) + value.detach().double() * n
                        if key == "loss":
                            chunk_losses[k].append(value.detach().double())
                done += n
    finally:
        population.train(True)
    result = {}
    for k in members:
        metrics = {key: float(v) / sequences for key, v in sums[k].items()}
        losses = [float(v) for v in chunk_losses[k]]
        se = statistics.stdev(losses) / math.sqrt(len(losses)) if len(losses) > 1 else math.nan
        result[k] = Evaluation(metrics, se, sequences)
    return result


def outcome_of(final: Evaluation, baseline: dict[str, float], trainer: Any) -> str:
    """``solved``, ``at_baseline`` or ``learning`` from the final evaluation (module docstring)."""
    if final.metrics.get("accuracy", 0.0) >= trainer.solved_threshold:
        return "solved"
    margin = trainer.baseline_z * (final.loss_se if math.isfinite(final.loss_se) else 0.0)
    if final.metrics.get("loss", math.inf) >= baseline["loss"] - margin:
        return "at_baseline"
    return "learning"
