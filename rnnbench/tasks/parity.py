"""Parity of a bit string (Delétang et al. 2023, neural_networks_chomsky_hierarchy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, Task, TaskConfig, TaskSpec, hookimpl
from rnnbench import RegisterTask
from rnnbench.tasks._common import check_choice, check_int, lag_facts, uniform_lower_median

VARIANTS = ("final", "running")


@dataclass
class ParityConfig(TaskConfig):
    dependency_length: int = 50
    variant: str = "final"


class ParityTask(Task):
    r"""Bits ~ U{0, 1}, one-hot; predict the parity of their sum (1 when the number of ones is odd).

    ``final`` (deepmind neural_networks_chomsky_hierarchy ``parity_check``; zoology ``circuits``): one class
    for the whole string, read out at the last step. Baseline: CE = ln 2, accuracy 1/2.

    ``running``: at every step t, the parity of the first t bits, read out at every step. Baseline: step 1 is
    the bit itself, every later parity is a coin flip independent of the current bit: CE = (T - 1) ln 2 / T,
    accuracy (T + 1) / (2T).

    ``dependency_length`` is T, the number of bits: the final parity depends on a bit T - 1 steps back.

    Lag (``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max``): from the earliest input the target depends
    on (bit 0: every bit flips the parity) to the step where it is scored. ``final``: T - 1 (min = median = max).
    ``running``: the parity at step t is scored at t, so the lags are 0, 1, ..., T - 1, one per scored step:
    uniform on [0, T - 1], lower median (T - 1)//2. Exact. (A single bit of state, updated every step, suffices:
    the lag says how far back the target reaches, not how much must be stored.)
    """

    input_size = 2
    output_size = 2

    def __init__(self, dependency_length: int = 50, variant: str = "final") -> None:
        check_choice("task.variant", variant, VARIANTS)
        self.dependency_length = self.sequence_length = check_int("task.dependency_length", dependency_length, 2)
        self.variant = variant
        self.readout = "last" if variant == "final" else "sequence"

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        bits = torch.randint(0, 2, (batch_size, self.dependency_length), generator=generator, device=generator.device)
        running = bits.cumsum(dim=1) % 2  # (B, T)
        y = running[:, -1] if self.variant == "final" else running
        return Batch(x=F.one_hot(bits, 2).float(), y=y)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        if self.variant == "final":
            return F.cross_entropy(output, batch.y)
        return F.cross_entropy(output.flatten(0, 1), batch.y.flatten())

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        correct = output.argmax(-1) == batch.y
        out = {"loss": self.loss(output, batch), "accuracy": correct.float().mean()}
        if self.variant == "running":
            out["exact"] = correct.all(dim=1).float().mean()
        return out

    def baseline(self) -> dict[str, float]:
        if self.variant == "final":
            return {"loss": math.log(2), "accuracy": 0.5}
        T = self.dependency_length
        return {"loss": (T - 1) * math.log(2) / T, "accuracy": (T + 1) / (2 * T)}

    def lag_facts(self) -> dict[str, object]:
        """Exact lag from the first bit to the scored step(s) (see the class docstring)."""
        T = self.dependency_length
        if self.variant == "final":
            return lag_facts(T - 1, T - 1, T - 1, "first bit -> last-step readout")
        return lag_facts(0, uniform_lower_median(0, T - 1), T - 1, "first bit -> each step's running parity")

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "variant": self.variant,
        } | self.lag_facts()


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="parity",
            task=ParityTask,
            config=ParityConfig,
            description="parity of a bit string, at the end (final) or at every step (running)",
            source="Delétang et al. 2023 (neural_networks_chomsky_hierarchy)",
        )
    )
