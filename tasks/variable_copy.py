"""Variable-delay copy (Henaff, Szlam & LeCun 2016)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from rnnbench import Batch, TaskConfig, TaskSpec, hookimpl
from rnnbench.errors import ConfigError
from rnnbench.registry import RegisterTask
from rnnbench.tasks._common import check_choice, check_int

VARIANTS = ("henaff2016",)
from rnnbench.tasks.copy import CopyTask


@dataclass
class VariableCopyConfig(TaskConfig):
    dependency_length: int = 50
    """The longest delay T."""
    variant: str = "henaff2016"
    min_delay: int = 1
    """The shortest delay; each sequence's delay is uniform in [min_delay, dependency_length]."""
    alphabet: int = 8
    symbols: int = 10


class VariableCopyTask(CopyTask):
    r"""Copy memory whose delay is drawn per sequence, which defeats fixed-delay (hand-built orthogonal) solutions.

    Definition (Henaff, Szlam & LeCun 2016, "Recurrent orthogonal networks and long-memory tasks"): each
    sequence draws its delay D uniformly in [``min_delay``, T]. Input: K symbols ~ U{1..A}, D - 1 blanks, the
    delimiter (A + 1), then blanks up to the common padded length T + 2K. Target: the K symbols on the K steps
    right after the delimiter, blank (0) everywhere else, padding included. With D = T this is exactly
    ``copy`` (arjovsky2016). ``Batch.mask`` marks the K recall positions of each sequence. One variant,
    ``henaff2016``.

    ``dependency_length`` is T, the longest delay: the delimiter comes D <= T steps after the last symbol and
    each symbol is recalled D + K steps after it was shown.

    Loss: cross-entropy over all T + 2K steps, as in copy. Metrics: ``accuracy`` on the recall positions
    (chance 1/A), ``exact``, ``accuracy_all``.

    Baseline (blank except on the K steps after the delimiter, where uniform over A): CE = K ln A / (T + 2K),
    accuracy 1/A, all-position accuracy (T + K + K/A) / (T + 2K).
    """

    readout = "sequence"

    def __init__(
        self,
        dependency_length: int = 50,
        variant: str = "henaff2016",
        min_delay: int = 1,
        alphabet: int = 8,
        symbols: int = 10,
    ) -> None:
        check_choice("task.variant", variant, VARIANTS)
        self.variant = variant
        self.dependency_length = check_int("task.dependency_length", dependency_length, 1)
        self.min_delay = check_int("task.min_delay", min_delay, 1)
        if self.min_delay > self.dependency_length:
            raise ConfigError(
                "task.min_delay", min_delay, f"an integer in [1, task.dependency_length={dependency_length}]"
            )
        self.alphabet = check_int("task.alphabet", alphabet, 2)
        self.symbols = check_int("task.symbols", symbols, 1)
        self.sequence_length = self.dependency_length + 2 * self.symbols
        self.input_size = self.alphabet + 2
        self.output_size = self.alphabet + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        T, K, A, device = self.dependency_length, self.symbols, self.alphabet, generator.device
        data = torch.randint(1, A + 1, (batch_size, K), generator=generator, device=device)  # (B, K)
        delay = torch.randint(self.min_delay, T + 1, (batch_size, 1), generator=generator, device=device)
        position = torch.arange(T + 2 * K, device=device).expand(batch_size, -1)  # (B, L)
        delimiter_at = K - 1 + delay  # (B, 1)
        offset = position - delimiter_at - 1  # index into data on the recall steps
        mask = (offset >= 0) & (offset < K)
        tokens = torch.zeros(batch_size, T + 2 * K, dtype=torch.long, device=device)
        tokens[:, :K] = data
        tokens = torch.where(position == delimiter_at, A + 1, tokens)
        recalled = data.gather(1, offset.clamp(0, K - 1))  # (B, L)
        target = torch.where(mask, recalled, 0)
        x = F.one_hot(tokens, self.input_size).float()
        return Batch(x=x, y=target, mask=mask, extras={"delay": delay.squeeze(1)})

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "variant": self.variant,
            "min_delay": self.min_delay,
            "alphabet": self.alphabet,
            "symbols": self.symbols,
        }


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="variable_copy",
            task=VariableCopyTask,
            config=VariableCopyConfig,
            description="copy memory with a delay drawn per sequence",
            source="Henaff, Szlam & LeCun 2016",
        )
    )
