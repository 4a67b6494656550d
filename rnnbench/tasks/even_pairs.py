"""Even pairs (Delétang et al. 2023, the regular level of neural_networks_chomsky_hierarchy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from rnnbench import Batch, RegisterTask, TaskConfig, TaskSpec, hookimpl
from rnnbench.tasks._common import LastStepClassification, check_choice, check_int, lag_facts, memoryless_score

VARIANTS = ("deletang2023",)


@dataclass
class EvenPairsConfig(TaskConfig):
    dependency_length: int = 40
    variant: str = "deletang2023"


class EvenPairsTask(LastStepClassification):
    r"""Bits ~ U{0, 1}, one-hot; class 1 when the number of unequal neighbours (the substrings 01 and 10) is odd,
    0 when it is even, read out at the last step.

    Definition (Delétang et al. 2023, ``tasks/regular/even_pairs.py``): ``0101001`` has two 10s and three 01s,
    five in all: class 1. Every change of value between neighbours is one 01 or 10, so the count is odd exactly
    when the first and the last bit differ: the class is ``bits[0] XOR bits[T - 1]``, a regular language that a
    two-state automaton recognises once it has kept the first bit.

    ``dependency_length`` is T, the number of bits (the sequence length); T >= 1 (one bit: no pair, class 0).

    Lag (``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max``): from the first bit, which the class
    depends on, to the readout at the last step: T - 1 (min = median = max). Exact.

    Baseline (the best predictor that sees only the last input): for T >= 2 the first bit is a fair coin
    independent of the last, so the class is too: CE = ln 2, accuracy 1/2. For T = 1 the class is always 0:
    CE 0, accuracy 1.
    """

    input_size = 2
    output_size = 2

    def __init__(self, dependency_length: int = 40, variant: str = "deletang2023") -> None:
        self.variant = check_choice("task.variant", variant, VARIANTS)
        self.dependency_length = self.sequence_length = check_int("task.dependency_length", dependency_length, 1)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        bits = torch.randint(0, 2, (batch_size, self.dependency_length), generator=generator, device=generator.device)
        unequal = (bits[:, 1:] != bits[:, :-1]).long()  # (B, T - 1): 1 at each 01 or 10
        return Batch(x=F.one_hot(bits, 2).float(), y=unequal.sum(dim=1) % 2)

    def baseline(self) -> dict[str, float]:
        if self.dependency_length == 1:
            return memoryless_score([[0.5, 0.0], [0.5, 0.0]])
        return memoryless_score([[0.25, 0.25], [0.25, 0.25]])

    def describe(self) -> dict[str, object]:
        T = self.dependency_length
        return super().describe() | {"variant": self.variant} | lag_facts(
            T - 1, T - 1, T - 1, "first bit -> last-step readout")


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="even_pairs",
            task=EvenPairsTask,
            config=EvenPairsConfig,
            description="whether a bit string has an even number of 01 and 10 pairs (regular)",
            source="Delétang et al. 2023 (neural_networks_chomsky_hierarchy)",
        )
    )
