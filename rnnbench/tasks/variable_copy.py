"""Variable-delay copy (Henaff, Szlam & LeCun 2016)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from rnnbench import Batch, TaskConfig, TaskSpec, hookimpl
from rnnbench import ConfigError
from rnnbench import RegisterTask
from rnnbench.tasks._common import check_choice, check_int, lag_facts, uniform_lower_median

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

    Lag (``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max``): per scored (recall) position, the steps
    from the symbol it must reproduce to that position: D + K, D uniform in [d0, T] (d0 = ``min_delay``). So
    the lag is uniform on [d0 + K, T + K], lower median d0 + K + (T - d0)//2 (T = 100, K = 10, d0 = 1:
    11 / 60 / 110). Exact.

    Loss: cross-entropy over all T + 2K steps, as in copy. Metrics: ``accuracy`` on the recall positions
    (chance 1/A), ``exact``, ``accuracy_all``.

    Baseline (:meth:`baseline`, logged as ``baseline/*``): a predictor that knows where the recall window is but
    not its contents: blank except on the K steps after the delimiter, where uniform over A. CE =
    K ln A / (T + 2K), accuracy 1/A, all-position accuracy (T + K + K/A) / (T + 2K). It is *not* memoryless:
    where the window lies depends on D, which only a memory of the delimiter tells. It is the conservative bar
    (a model that found the window but recalls nothing sits on it, and is reported at baseline); ``describe()``
    names it in ``baseline_kind``. The truly memoryless figure is ``describe()``'s ``memoryless_loss``: the best
    predictor that sees the step index t and the current input and remembers nothing puts mass q_t on the data
    symbols at a blank input, q_t = P(t in the window | t, blank input) = #{D in [d0, T]: t - 2K < D <= t - K} /
    #{D in [d0, T]: D != t - K + 1}, for CE = sum over t of P(blank input at t) (H(q_t) + q_t ln A) / (T + 2K),
    H the binary entropy (0.667 at T = 50, K = 10, A = 8, d0 = 1, against 0.297 for the window-aware predictor;
    equal when d0 = T). Its recall accuracy is still 1/A (always name a data symbol).
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

    def lag_facts(self) -> dict[str, object]:
        """Exact lag from each data symbol to its recall step: D + K, D uniform in [min_delay, T]."""
        K, low, high = self.symbols, self.min_delay, self.dependency_length
        return lag_facts(low + K, uniform_lower_median(low, high) + K, high + K, "data symbol -> its recall step")

    def memoryless_loss(self) -> float:
        """CE of the best predictor that sees the step index and the current input only (see the class docstring)."""
        T, K, low = self.dependency_length, self.symbols, self.min_delay
        n, length, log_a = T - low + 1, T + 2 * K, math.log(self.alphabet)
        total = 0.0
        for t in range(K, length):  # steps t < K show a data symbol and want a blank: no loss
            delimiter = 1 if low <= t - K + 1 <= T else 0  # D = t - K + 1 puts the delimiter at t (target blank)
            inside = max(0, min(T, t - K) - max(low, t - 2 * K + 1) + 1)  # D with t in the window
            blank = n - delimiter
            if blank == 0 or inside == 0:
                continue
            q = inside / blank
            entropy = -q * math.log(q) - (1 - q) * math.log(1 - q) if q < 1 else 0.0
            total += blank / n * (entropy + q * log_a)
        return total / length

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "variant": self.variant,
            "min_delay": self.min_delay,
            "alphabet": self.alphabet,
            "symbols": self.symbols,
            "baseline_kind": "window-aware: knows where the recall window is, not its contents",
            "memoryless_loss": self.memoryless_loss(),
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
