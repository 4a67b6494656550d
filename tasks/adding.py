"""The adding problem (Hochreiter & Schmidhuber 1997) in its four incompatible literature variants."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, Task, TaskConfig, TaskSpec, hookimpl
from rnnbench.registry import RegisterTask
from rnnbench.tasks._common import check_choice, check_int, check_number, draw_int, other_position

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

    ``dependency_length`` is the paper's T: the (minimum) sequence length. The first marked value lies about T
    steps before the readout (at least T//2 for arjovsky2016, at least T - 10 for hochreiter1997, ...).
    ``sequence_length`` is the longest length a batch can have.

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

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "min_sequence_length": self.min_length,
            "max_sequence_length": self.max_length,
            "variant": self.variant,
        }


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
