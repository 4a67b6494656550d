"""Temporal order (Hochreiter & Schmidhuber 1997, Exp. 6a and 6b)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, Task, TaskConfig, TaskSpec, hookimpl
from rnnbench import RegisterTask
from rnnbench.tasks._common import check_choice, check_int, lag_facts, uniform_lower_median

VARIANTS = ("2bit", "3bit")
STARTS = {"2bit": (0.1, 0.5), "3bit": (0.1, 0.3, 0.6)}
"""Each relevant symbol lies in [int(f T), int(f T) + int(0.1 T)) for f in these fractions (tempOrder*.py)."""

X, Y, A, B, C, D, START, END = range(8)
SYMBOLS = "XYabcdEB"


@dataclass
class TemporalOrderConfig(TaskConfig):
    dependency_length: int = 100
    variant: str = "2bit"


class TemporalOrderTask(Task):
    r"""Classify the order in which two (three) relevant symbols X / Y appear among distractors.

    Definition (Hochreiter & Schmidhuber 1997, Exp. 6a / 6b; positions as in pascanur/trainingRNNs
    ``tempOrder.py`` / ``tempOrder3bit.py``, which scale the paper's with the length): a sequence of length T
    starts with E and ends with B; the other steps are distractors ~ U{a, b, c, d}, except the relevant steps,
    each X or Y with probability 1/2, at t_i uniform in [int(f_i T), int(f_i T) + int(0.1 T)) with
    f = (0.1, 0.5) for ``2bit`` (1997: t1 in [10, 20], t2 in [50, 60] at T = 100) and f = (0.1, 0.3, 0.6) for
    ``3bit``. Class: the relevant symbols read as a binary number, the first one most significant, X = 0, Y = 1
    (2bit: XX, XY, YX, YY = 0..3, the paper's Q, R, S, U; 3bit: 8 classes). One-hot inputs over the 8 symbols
    X, Y, a, b, c, d, E, B; the class is read out at the last step.

    ``dependency_length`` is T, the sequence length: the first relevant symbol lies between about 0.8 T and
    0.9 T steps before the readout.

    Lag (``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max``): T - 1 - t1, from the first relevant
    symbol t1 to the readout at the last step T - 1. With w = int(0.1 T), t1 is uniform in
    [int(0.1 T), int(0.1 T) + w), so the lag is uniform on [T - int(0.1 T) - w, T - 1 - int(0.1 T)], lower median
    T - int(0.1 T) - w + (w - 1)//2; the same for both variants (T = 100: 80 / 84 / 89). Exact.

    Baseline (uniform over the classes): CE = ln 4 (2bit) or ln 8 (3bit), accuracy 1/4 or 1/8.
    """

    readout = "last"
    input_size = len(SYMBOLS)

    def __init__(self, dependency_length: int = 100, variant: str = "2bit") -> None:
        check_choice("task.variant", variant, VARIANTS)
        self.dependency_length = self.sequence_length = check_int(
            "task.dependency_length", dependency_length, 10, "int(0.1 T) >= 1 positions per relevant symbol"
        )
        self.variant = variant
        self.bits = len(STARTS[variant])
        self.output_size = 2**self.bits

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        T, device = self.dependency_length, generator.device
        tokens = torch.randint(A, D + 1, (batch_size, T), generator=generator, device=device)  # distractors
        tokens[:, 0] = START
        tokens[:, -1] = END
        rows = torch.arange(batch_size, device=device)
        target = torch.zeros(batch_size, dtype=torch.long, device=device)
        width = int(0.1 * T)
        for fraction in STARTS[self.variant]:  # 2 or 3 relevant symbols, each vectorised over the batch
            where = int(fraction * T) + torch.randint(0, width, (batch_size,), generator=generator, device=device)
            bit = torch.randint(0, 2, (batch_size,), generator=generator, device=device)
            tokens[rows, where] = X + bit
            target = 2 * target + bit
        x = F.one_hot(tokens, self.input_size).float()  # (B, T, 8)
        return Batch(x=x, y=target)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output, batch.y)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"loss": self.loss(output, batch), "accuracy": (output.argmax(-1) == batch.y).float().mean()}

    def baseline(self) -> dict[str, float]:
        return {"loss": math.log(self.output_size), "accuracy": 1 / self.output_size}

    def lag_facts(self) -> dict[str, object]:
        """Exact lag from the first relevant symbol to the readout (see the class docstring)."""
        T = self.dependency_length
        start, width = int(STARTS[self.variant][0] * T), int(0.1 * T)
        low, high = T - start - width, T - 1 - start
        return lag_facts(low, uniform_lower_median(low, high), high, "first relevant symbol -> last-step readout")

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "variant": self.variant,
            "classes": self.output_size,
        } | self.lag_facts()


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="temporal_order",
            task=TemporalOrderTask,
            config=TemporalOrderConfig,
            description="temporal order: classify the order of 2 (4 classes) or 3 (8 classes) relevant symbols",
            source="Hochreiter & Schmidhuber 1997 (Exp. 6a, 6b); Pascanu et al. 2013",
        )
    )
