"""Length generalisation: train on every length up to ``task.train_length``, test at ``task.test_lengths``
(internal). The framework does it for every task, built-in or plugin, from two fields of every task config
(:class:`rnnbench.base.TaskConfig`) that the task's constructor never sees:

- ``task.train_length`` (null: off). The training lengths are every length from the task's shortest (the
  smallest its constructor accepts: 1 for even pairs, 2 for parity) to ``train_length``. Each training batch
  draws its length uniformly among them from the member's training stream (so a resumed run draws the same
  lengths) and is sampled from the task built at that length (built once, kept). ``task.dependency_length``,
  the length of the periodic checks, of the early stop and of the final evaluation that decides the outcome,
  defaults to ``train_length`` and may not exceed it.
- ``task.test_lengths``. When a member finishes (not diverged), each test length L is evaluated on
  ``trainer.final_eval_sequences`` fresh sequences of the task built at L, from the stream ``final:<n>@L``
  (``<n>`` the final evaluation's), and logged as ``final/<metric>_at_L`` (``accuracy``, ``loss`` and the
  task's extras), ``final/loss_se_at_L`` and ``final/sequences_at_L``; the memoryless baseline at L as
  ``baseline/<metric>_at_L`` at step 0. (MLflow names cannot contain ``@``.) The sequences are scored in chunks
  of at most as many time steps as the final evaluation's chunks at ``dependency_length``: the same number of
  sequences, fewer per chunk, so memory does not grow with L.

Refused with one line, before anything is built or written: a length the task does not accept, and a task
whose model would change with the length (its input size, output size or readout differ between lengths).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from rnnbench.base import Batch, Task
from rnnbench.errors import ConfigError, RnnbenchError

if TYPE_CHECKING:
    from rnnbench.evaluation import Evaluation
    from rnnbench.population import Population

SHAPE = ("input_size", "output_size", "readout")
"""What a model is built from: equal at every length, or the task cannot be trained or tested across lengths."""


def at(metric: str, length: int) -> str:
    """The name of ``metric`` measured at test length ``length``: ``final/accuracy`` -> ``final/accuracy_at_500``."""
    return f"{metric}_at_{length}"


class Lengths:
    """A run's tasks by length: the task of ``task.dependency_length`` (``base``), the training lengths and the
    test lengths. :meth:`build` checks and makes one from a composed task node."""

    def __init__(self, base: Task, build: Callable[[int], Task], train_lengths: list[int], test_lengths: list[int],
                 tasks: dict[int, Task] | None = None) -> None:
        self.base = base
        self._build = build
        self.train_lengths = train_lengths
        """Every length a training batch may have (empty: the base task's only)."""
        self.test_lengths = test_lengths
        self._tasks: dict[int, Task] = dict(tasks or {})

    @classmethod
    def off(cls, base: Task) -> Lengths:
        return cls(base, lambda length: base, [], [])

    @classmethod
    def build(cls, spec: Any, node: Any, base: Task, kwargs: dict[str, Any] | None = None) -> Lengths:
        """Check the length fields of the composed task ``node`` against the task of ``spec`` and return its
        lengths. ``base`` is the task built from ``node``; ``kwargs`` its constructor's arguments (default: from
        ``node``). Raises :class:`ConfigError` (a length the task refuses, a model that changes with the length)."""
        from omegaconf import DictConfig, OmegaConf

        from rnnbench.config import constructor_kwargs

        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        train_length, tests = values.get("train_length"), list(values.get("test_lengths") or [])
        if train_length is None and not tests:
            return cls.off(base)
        kwargs = dict(kwargs) if kwargs is not None else constructor_kwargs(values)
        name = values.get("name") or getattr(spec, "name", "?")

        def make(length: int) -> Task:
            return spec.task(**dict(kwargs, dependency_length=length))

        def shape_of(task: Task) -> tuple[Any, ...]:
            return tuple(getattr(task, key) for key in SHAPE)

        def same_model(key: str, value: Any, length: int, task: Task) -> None:
            if shape_of(task) != shape_of(base):
                differ = next(k for k in SHAPE if getattr(task, k) != getattr(base, k))
                raise ConfigError(key, value, f"a length task {name!r} builds the same model at: its {differ} is "
                                  f"{getattr(task, differ)!r} at length {length} and {getattr(base, differ)!r} at "
                                  f"{base.dependency_length}, so no model can be trained or tested across lengths")

        tasks: dict[int, Task] = {base.dependency_length: base}
        train_lengths: list[int] = []
        if train_length is not None:
            shortest = None
            for length in range(1, train_length + 1):
                try:
                    task = tasks.get(length) or make(length)
                except ConfigError as exc:
                    if shortest is None:
                        continue
                    raise ConfigError("task.train_length", train_length,
                                      f"a length up to which task {name!r} accepts every length from its shortest "
                                      f"({shortest}); at {length}: {exc.allowed}") from exc
                shortest = length if shortest is None else shortest
                same_model("task.train_length", train_length, length, task)
                train_lengths.append(length)
                if length in (train_length, shortest):
                    tasks[length] = task
            if not train_lengths:
                raise ConfigError("task.train_length", train_length,
                                  f"a length task {name!r} accepts (it refuses every length up to {train_length})")
        for length in tests:
            try:
                task = tasks.get(length) or make(length)
            except ConfigError as exc:
                raise ConfigError("task.test_lengths", tests,
                                  f"lengths task {name!r} accepts; at {length}: {exc.allowed}") from exc
            same_model("task.test_lengths", tests, length, task)
            tasks[length] = task
        return cls(base, make, train_lengths, tests, tasks)

    @property
    def active(self) -> bool:
        return bool(self.train_lengths or self.test_lengths)

    def task_at(self, length: int) -> Task:
        """The task built at ``length`` (built once)."""
        if length not in self._tasks:
            self._tasks[length] = self._build(length)
        return self._tasks[length]

    @property
    def longest_training_task(self) -> Task:
        """The task of the longest training batches (the memory estimate's)."""
        return self.task_at(self.train_lengths[-1]) if self.train_lengths else self.base

    @property
    def longest_test_task(self) -> Task | None:
        return self.task_at(self.test_lengths[-1]) if self.test_lengths else None

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A training batch: of a length drawn uniformly among the training lengths from ``generator`` (one
        draw per batch, before the batch's own), or of the base task when training at one length."""
        if not self.train_lengths:
            return self.base.sample(batch_size, generator)
        index = int(torch.randint(len(self.train_lengths), (1,), generator=generator, device=generator.device))
        return self.task_at(self.train_lengths[index]).sample(batch_size, generator)

    def baselines(self) -> dict[str, float]:
        """``baseline/<metric>_at_L`` for every test length."""
        return {at(f"baseline/{key}", length): value for length in self.test_lengths
                for key, value in self.task_at(length).baseline().items()}

    def chunk_at(self, length: int, chunk: int) -> int:
        """Sequences per evaluation chunk at test length ``length``: at most as many time steps as ``chunk``
        sequences of the base task."""
        steps = max(1, int(self.base.sequence_length))
        return max(1, min(chunk, chunk * steps // max(1, int(self.task_at(length).sequence_length))))

    def evaluate(self, population: Population, k: int, seed: int, final_index: int, sequences: int, chunk: int,
                 device: torch.device) -> dict[int, Evaluation]:
        """Member ``k`` (its ``seed``) at every test length, on its streams ``final:<final_index>@L``."""
        from rnnbench.evaluation import evaluate

        out = {}
        for length in self.test_lengths:
            task = self.task_at(length)
            out[length] = evaluate(population, task, {k: seed}, f"final:{final_index}@{length}", sequences,
                                   self.chunk_at(length, chunk), device)[k]
        return out


def logged(evaluations: dict[int, Evaluation]) -> dict[str, float]:
    """The metrics of test-length evaluations as logged: ``final/<metric>_at_L``, ``final/loss_se_at_L``,
    ``final/sequences_at_L``."""
    out: dict[str, float] = {}
    for length, ev in evaluations.items():
        out.update({at(f"final/{key}", length): value for key, value in ev.metrics.items()})
        out[at("final/loss_se", length)] = ev.loss_se
        out[at("final/sequences", length)] = float(ev.sequences)
    return out


def check(spec: Any, node: Any, base: Task) -> Lengths:
    """:meth:`Lengths.build`, a plugin's own failure at some length reported as a :class:`RnnbenchError`."""
    try:
        return Lengths.build(spec, node, base)
    except RnnbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin task that fails at another length than its default
        raise RnnbenchError(f"task {getattr(spec, 'name', '?')!r} could not be built at its training or test "
                            f"lengths: {type(exc).__name__}: {' '.join(str(exc).split())}") from exc
