"""The adding problem (Hochreiter & Schmidhuber 1997) in its four incompatible literature variants."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, Task, TaskConfig, TaskSpec, hookimpl
from rnnbench import RegisterTask
from rnnbench.tasks._common import (
    check_choice,
    check_int,
    check_number,
    draw_int,
    lag_facts,
    lower_median,
    other_position,
)

VARIANTS = ("hochreiter1997", "pascanu2013", "arjovsky2016", "tcn2018")
MIN_LENGTH = {"hochreiter1997": 22, "pascanu2013": 10, "arjovsky2016": 2, "tcn2018": 2}
"""Smallest T at which each variant's marker ranges exist (1997: 10 first steps inside the first T/2 - 1)."""


@dataclass
class AddingConfig(TaskConfig):
    dependency_length: int = 50
    variant: str = "arjovsky2016"
    tolerance: float = 0.04
    """A sequence counts as correct when |error| < tolerance on the target rescaled to [0, 1] (1997's 0.04)."""


def _triangle_within(d: float) -> float:
    """P(|U1 + U2 - 1| < d) for independent U1, U2 ~ U[0, 1] (triangular density on [-1, 1])."""
    return 1.0 if d >= 1 else 2 * d - d * d


class AddingTask(Task):
    r"""Two input channels per step, a value and a marker; predict a function of the two marked values at the end.

    Variants (``task.variant``):

    ``hochreiter1997`` (Hochreiter & Schmidhuber 1997, Exp. 4): values ~ U[-1, 1]; the length L is uniform in
    [T, T + T//10]; X1 is marked at one of the first 10 steps, X2 at one of the first T//2 - 1 steps still
    unmarked; the marker is -1 on the first and last step (unless the first is marked) and 0 elsewhere; a marked
    first step has its value set to 0. Target 0.5 + (X1 + X2) / 4, in [0, 1].

    ``pascanu2013`` (Martens & Sutskever 2011; pascanur/trainingRNNs ``addition.py``): values ~ U[0, 1]; length
    L = T + U{0 .. int(0.1 T) - 1}; p0 uniform in [0, int(0.1 L)), p1 uniform in [int(0.1 L), int(0.5 L));
    target the mean (a + b) / 2.

    ``arjovsky2016`` (uRNN; amarshah/complex_RNN ``adding_problem.py``; also IRNN, s4, IndRNN): length T, values
    ~ U[0, 1], one marker uniform in [0, T//2), one in [T//2, T); target the sum.

    ``tcn2018`` (Bai, Kolter & Koltun 2018; locuslab/TCN ``adding_problem/utils.py``): length T, values
    ~ U[0, 1], two distinct marker positions uniform over the whole sequence; target the sum.

    Variable lengths (1997, pascanu2013) are drawn once per batch from the generator, so a batch stays one
    (B, L, 2) tensor; every sequence of the batch has that length, and lengths vary from batch to batch.

    ``dependency_length`` is the paper's T: the (minimum) sequence length. ``sequence_length`` is the longest
    length a batch can have.

    Lag (``describe()``'s ``lag_min``, ``lag_median``, ``lag_max``): L - 1 - p, from the earliest marked step p
    whose value enters the target to the readout at the last step L - 1 (steps counted from 0). In
    hochreiter1997 a marked step 0 has its value zeroed and carries nothing, so p is the earliest marked step
    after step 0 there. Exact, from the generator's distributions; the median is the lower median (the smallest
    l with P(lag <= l) >= 1/2). With h = T//2:

    - ``arjovsky2016``: p uniform in [0, h): lag uniform on [T - h, T - 1], median T - h + (h - 1)//2 (T = 100:
      50 / 74 / 99).
    - ``tcn2018``: p the smaller of two distinct positions in [0, T): P(lag = l) = l / C(T, 2) for l in
      [1, T - 1]; the median is the smallest l with 2 l (l + 1) >= T (T - 1), about T / sqrt(2) (T = 100:
      1 / 70 / 99).
    - ``pascanu2013``: p uniform in [0, int(0.1 L)), L uniform in [T, T + int(0.1 T) - 1]: lag from
      T - int(0.1 T) to T + int(0.1 T) - 2; median from the exact CDF
      P(lag <= l) = mean over L of clip(int(0.1 L) - (L - 1 - l), 0, int(0.1 L)) / int(0.1 L) (T = 100: 90 / 99 / 108).
    - ``hochreiter1997``: P(p > m) = (h - 1 - m)(1 + max(0, 9 - m)) / (10 (h - 1)) for 0 <= m < h, L uniform in
      [T, T + T//10]: lag from T - h (X1 zeroed at step 0, X2 at step h - 1, L = T) to T + T//10 - 2 (p = 1);
      median from the exact CDF P(lag <= l) = mean over L of P(p > L - 2 - l) (T = 100: 50 / 99 / 108).

    Loss: MSE on the variant's target. Metrics: ``accuracy``, the fraction of sequences with |error| <
    ``tolerance`` on the target rescaled to [0, 1] (sum targets are divided by 2), and ``mse``.

    Baseline: predict the target's mean (0.5, 0.5, 1, 1). MSE is the target's variance: 1997
    (2 - q1 - q2) / 48 with q1 = 1/10 and q2 = 0.9 / (T//2 - 1) the chances that X1 or X2 is a zeroed first
    step (about 1/24); pascanu2013 1/24; arjovsky2016 and tcn2018 1/6 (0.1767 in the IRNN paper and the TCN
    README is a typo). Accuracy from the target's distribution: 0.1536 for the three U[0, 1] variants at
    tolerance 0.04, slightly above for 1997.
    """

    readout = "last"
    input_size = 2
    output_size = 1

    def __init__(self, dependency_length: int = 50, variant: str = "arjovsky2016", tolerance: float = 0.04) -> None:
        check_choice("task.variant", variant, VARIANTS)
        T = check_int("task.dependency_length", dependency_length, MIN_LENGTH[variant], f"variant {variant}")
        self.tolerance = check_number("task.tolerance", tolerance, 0.0, 1.0)
        self.variant = variant
        self.dependency_length = T
        if variant == "hochreiter1997":
            self.min_length, self.max_length = T, T + T // 10
        elif variant == "pascanu2013":
            self.min_length, self.max_length = T, T + int(0.1 * T) - 1
        else:
            self.min_length = self.max_length = T
        self.sequence_length = self.max_length
        self.scale = 2.0 if variant in ("arjovsky2016", "tcn2018") else 1.0
        """Width of the target's range: accuracy is judged on error / scale."""

    def _length(self, generator: torch.Generator) -> int:
        return draw_int(self.min_length, self.max_length + 1, generator)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        T, B, device = self.dependency_length, batch_size, generator.device
        L = self._length(generator)
        rows = torch.arange(B, device=device)
        markers = torch.zeros(B, L, device=device)
        if self.variant == "hochreiter1997":
            values = torch.rand(B, L, generator=generator, device=device) * 2 - 1
            first = torch.randint(0, 10, (B,), generator=generator, device=device)
            second = other_position(first, T // 2, generator)
            markers[:, 0] = -1.0
            markers[:, L - 1] = -1.0
        else:
            values = torch.rand(B, L, generator=generator, device=device)
            if self.variant == "pascanu2013":
                tenth = int(0.1 * L)
                first = torch.randint(0, tenth, (B,), generator=generator, device=device)
                second = tenth + torch.randint(0, int(0.4 * L), (B,), generator=generator, device=device)
            elif self.variant == "arjovsky2016":
                first = torch.randint(0, T // 2, (B,), generator=generator, device=device)
                second = torch.randint(T // 2, T, (B,), generator=generator, device=device)
            else:
                first = torch.randint(0, T, (B,), generator=generator, device=device)
                second = other_position(first, T, generator)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        if self.variant == "hochreiter1997":
            values[:, 0] = torch.where(markers[:, 0] == 1.0, 0.0, values[:, 0])
        marked = (values * (markers == 1.0)).sum(dim=1, keepdim=True)  # (B, 1)
        if self.variant == "hochreiter1997":
            target = 0.5 + marked / 4
        elif self.variant == "pascanu2013":
            target = marked / 2
        else:
            target = marked
        return Batch(x=torch.stack([values, markers], dim=-1), y=target)  # x: (B, L, 2), y: (B, 1)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(output, batch.y)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        error = (output - batch.y).abs().squeeze(-1) / self.scale
        mse = F.mse_loss(output, batch.y)
        return {"loss": mse, "mse": mse, "accuracy": (error < self.tolerance).float().mean()}

    def target_mean(self) -> float:
        return 1.0 if self.scale == 2.0 else 0.5

    def baseline(self) -> dict[str, float]:
        tol = self.tolerance
        if self.variant == "hochreiter1997":
            q1 = 1 / 10
            q2 = 0.9 / (self.dependency_length // 2 - 1)
            d = 4 * tol  # |X1 + X2| < d
            one_uniform = min(d, 1.0)
            two_uniform = 1.0 if d >= 2 else d - d * d / 4
            return {
                "loss": (2 - q1 - q2) / 48,
                "accuracy": (q1 + q2) * one_uniform + (1 - q1 - q2) * two_uniform,
            }
        if self.variant == "pascanu2013":
            return {"loss": 1 / 24, "accuracy": _triangle_within(2 * tol)}
        return {"loss": 1 / 6, "accuracy": _triangle_within(2 * tol)}

    def lag_facts(self) -> dict[str, object]:
        """Exact lag from the earliest informative marked value to the readout (see the class docstring)."""
        T, v = self.dependency_length, self.variant
        kind = "earliest marked value -> last-step readout"
        h = T // 2
        if v == "arjovsky2016":
            return lag_facts(T - h, T - h + (h - 1) // 2, T - 1, kind)
        if v == "tcn2018":
            half = T * (T - 1)  # P(lag <= l) = l (l + 1) / (T (T - 1)) >= 1/2  <=>  2 l (l + 1) >= T (T - 1)
            m = max(1, (math.isqrt(1 + 2 * half) - 1) // 2)
            while 2 * m * (m + 1) < half:
                m += 1
            while m > 1 and 2 * (m - 1) * m >= half:
                m -= 1
            return lag_facts(1, m, T - 1, kind)
        lengths = range(self.min_length, self.max_length + 1)
        n = len(lengths)
        if v == "pascanu2013":

            def cdf(lag: int, exact: bool) -> float | Fraction:  # p uniform in [0, int(0.1 L)), lag = L - 1 - p
                number = Fraction if exact else float
                total = number(0)
                for L in lengths:
                    tenth = int(0.1 * L)
                    total += number(min(max(tenth - (L - 1 - lag), 0), tenth)) / tenth
                return total / n

            low = min(L - int(0.1 * L) for L in lengths)
            return lag_facts(low, lower_median(cdf, low, self.max_length - 1), self.max_length - 1, kind)

        def above(m: int) -> int:  # 10 (h - 1) P(p > m), p the earliest marked step after step 0
            if m < 0:
                return 10 * (h - 1)
            if m >= h - 1:
                return 0
            return (h - 1 - m) * (1 + max(0, 9 - m))

        def cdf_1997(lag: int, exact: bool) -> float | Fraction:  # lag <= l <=> p >= L - 1 - l <=> p > L - 2 - l
            total = sum(above(L - 2 - lag) for L in lengths)  # an integer: exact either way
            return Fraction(total, 10 * (h - 1) * n) if exact else total / (10 * (h - 1) * n)

        low, high = T - h, self.max_length - 2
        return lag_facts(low, lower_median(cdf_1997, low, high), high,
                         kind + " (a marked step 0 is zeroed and skipped)")

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "min_sequence_length": self.min_length,
            "max_sequence_length": self.max_length,
            "variant": self.variant,
        } | self.lag_facts()


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="adding",
            task=AddingTask,
            config=AddingConfig,
            description="adding problem: a function of two marked values (variants hochreiter1997, pascanu2013, "
            "arjovsky2016, tcn2018)",
            source="Hochreiter & Schmidhuber 1997; Martens & Sutskever 2011; Arjovsky et al. 2016; Bai et al. 2018",
        )
    )
