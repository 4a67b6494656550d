"""Selective copy / denoise (Jing et al. 2017; Gu & Dao 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from rnnbench import Batch, TaskConfig, TaskSpec, hookimpl
from rnnbench import ConfigError
from rnnbench import RegisterTask
from rnnbench.tasks._common import (
    MaskedRecallTask,
    check_choice,
    check_int,
    lag_facts,
    sorted_positions,
    uniform_lower_median,
)

VARIANTS = ("gu2023",)


@dataclass
class SelectiveCopyConfig(TaskConfig):
    dependency_length: int = 50
    """Number of steps over which the data symbols are scattered."""
    variant: str = "gu2023"
    alphabet: int = 8
    symbols: int = 10


class SelectiveCopyTask(MaskedRecallTask):
    r"""Data symbols scattered among blanks; reproduce them, in order, once the markers arrive.

    Definition (denoise task of Jing et al. 2017, arXiv:1706.02761; selective copying of Gu & Dao 2023; the
    layout of s4's ``copying.py`` with ``variable=True``): K = ``symbols`` symbols ~ U{1..A} at K distinct
    positions drawn uniformly in the first T steps (blank, 0, elsewhere), then the marker (A + 1) on K steps.
    On the k-th marker step the target is the k-th data symbol in order of appearance. Length T + K. Inputs
    one-hot of size A + 2; A + 1 output classes (blank and data). One variant, ``gu2023`` (marker tokens on the
    recall steps, as in Mamba's figure and s4).

    ``dependency_length`` is T, the span the symbols are scattered over. At least K (one position per symbol).

    Lag (``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max``): per scored (recall) position, the steps
    from the symbol it must reproduce to that position. The k-th symbol (k = 1..K) at step w_k is recalled at
    T + k - 1, so its lag is K + (the number of blanks after it in the span): at least K (the symbols fill the
    span's last K steps) and at most T (they fill its first K steps). Pooled over the K recall positions the lag
    is exactly uniform on [K, T] (the blanks after a symbol picked at random among the K are uniform on
    0..T - K: a Vandermonde sum), so the lower median is K + (T - K)//2 and the mean (T + K) / 2 (T = 100,
    K = 10: 10 / 55 / 100).

    Loss: cross-entropy on the K recall steps only (``Batch.mask``), as in s4 and mad-lab. Metrics:
    ``accuracy`` per recalled symbol (chance 1/A), ``exact`` per sequence.

    Baseline (uniform over the A data symbols at each recall step): CE = ln A, accuracy 1/A.
    """

    readout = "sequence"

    def __init__(
        self, dependency_length: int = 50, variant: str = "gu2023", alphabet: int = 8, symbols: int = 10
    ) -> None:
        check_choice("task.variant", variant, VARIANTS)
        self.variant = variant
        self.alphabet = check_int("task.alphabet", alphabet, 2)
        self.symbols = check_int("task.symbols", symbols, 1)
        self.dependency_length = check_int("task.dependency_length", dependency_length, 1)
        if symbols > dependency_length:
            raise ConfigError(
                "task.symbols", symbols, f"at most task.dependency_length={dependency_length} (one position each)"
            )
        self.sequence_length = self.dependency_length + self.symbols
        self.input_size = self.alphabet + 2
        self.output_size = self.alphabet + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        T, K, A, device = self.dependency_length, self.symbols, self.alphabet, generator.device
        data = torch.randint(1, A + 1, (batch_size, K), generator=generator, device=device)  # (B, K)
        where = sorted_positions(batch_size, T, K, generator)  # (B, K) ascending
        tokens = torch.zeros(batch_size, T + K, dtype=torch.long, device=device)
        tokens.scatter_(1, where, data)
        tokens[:, T:] = A + 1
        target = torch.zeros_like(tokens)
        target[:, T:] = data
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, T:] = True
        x = F.one_hot(tokens, self.input_size).float()
        return Batch(x=x, y=target, mask=mask, extras={"positions": where})

    def baseline(self) -> dict[str, float]:
        return {"loss": math.log(self.alphabet), "accuracy": 1 / self.alphabet}

    def lag_facts(self) -> dict[str, object]:
        """Exact lag from each data symbol to its recall step: uniform on [K, T] (see the class docstring)."""
        T, K = self.dependency_length, self.symbols
        return lag_facts(K, uniform_lower_median(K, T), T, "data symbol -> its recall step")

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "variant": self.variant,
            "alphabet": self.alphabet,
            "symbols": self.symbols,
        } | self.lag_facts()


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="selective_copy",
            task=SelectiveCopyTask,
            config=SelectiveCopyConfig,
            description="selective copy: reproduce symbols scattered at random positions, in order",
            source="Jing et al. 2017; Gu & Dao 2023",
        )
    )
