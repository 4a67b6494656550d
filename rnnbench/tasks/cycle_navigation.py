"""Cycle navigation (Delétang et al. 2023, the regular level of neural_networks_chomsky_hierarchy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from rnnbench import Batch, RegisterTask, TaskConfig, TaskSpec, hookimpl
from rnnbench.tasks._common import LastStepClassification, check_choice, check_int, lag_facts, memoryless_score

VARIANTS = ("deletang2023",)


@dataclass
class CycleNavigationConfig(TaskConfig):
    dependency_length: int = 40
    variant: str = "deletang2023"
    cycle_length: int = 5


def position_law(steps: int, cycle_length: int) -> np.ndarray:
    """P(position = s), s = 0..C-1, after ``steps`` moves of -1, 0 or +1 (each 1/3) on a cycle of C states from 0:
    the C-point circular convolution of the one-move law with itself ``steps`` times, by the discrete Fourier
    transform (its eigenvalues (1 + 2 cos(2 pi j / C)) / 3 raised to the power ``steps``)."""
    move = np.zeros(cycle_length)
    for d in (-1, 0, 1):
        move[d % cycle_length] += 1 / 3
    law = np.real(np.fft.ifft(np.fft.fft(move) ** steps))
    law = np.clip(law, 0.0, None)
    return law / law.sum()


class CycleNavigationTask(LastStepClassification):
    r"""Moves ~ U{-1, 0, +1}, one-hot over three inputs as the reference encodes them (input 0 moves -1, input 1
    stays, input 2 moves +1); the class is the final position on a cycle of C = ``task.cycle_length`` states (5 by
    default, as in the paper) after starting at 0: the sum of the moves modulo C, read out at the last step.

    Definition (Delétang et al. 2023, ``tasks/regular/cycle_navigation.py``: actions drawn in {0, 1, 2}, final
    state ``sum(actions - 1) % 5``): ``1 -1 0 -1 -1`` ends at -2, class 3. A C-state automaton recognises it.

    ``dependency_length`` is T, the number of moves (the sequence length); T >= 1.

    Lag (``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max``): from the first move, which the class
    depends on (every move shifts it), to the readout at the last step: T - 1 (min = median = max). Exact.

    Baseline (the best predictor that sees only the last input): the last move shifts the position of the first
    T - 1 moves, so the best guess given it has the cross-entropy H(S) and accuracy max_s P(S = s) of that
    position S (:func:`position_law`): ln C and 1/C in the limit, exactly 0 and 1 at T = 1 (ln 5 - 0.000015 and
    0.2015 at T = 10, C = 5).
    """

    input_size = 3

    def __init__(self, dependency_length: int = 40, variant: str = "deletang2023", cycle_length: int = 5) -> None:
        self.variant = check_choice("task.variant", variant, VARIANTS)
        self.dependency_length = self.sequence_length = check_int("task.dependency_length", dependency_length, 1)
        self.cycle_length = self.output_size = check_int("task.cycle_length", cycle_length, 2)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        actions = torch.randint(0, 3, (batch_size, self.dependency_length), generator=generator,
                                device=generator.device)
        position = (actions - 1).sum(dim=1) % self.cycle_length  # Python's modulo: in [0, C)
        return Batch(x=F.one_hot(actions, 3).float(), y=position)

    def baseline(self) -> dict[str, float]:
        C = self.cycle_length
        before = position_law(self.dependency_length - 1, C)  # the position after the first T - 1 moves
        joint = np.zeros((3, C))
        for action in range(3):
            joint[action] = np.roll(before, action - 1) / 3  # the last move shifts it by action - 1
        return memoryless_score(joint)

    def describe(self) -> dict[str, object]:
        T = self.dependency_length
        return super().describe() | {"variant": self.variant} | lag_facts(
            T - 1, T - 1, T - 1, "first move -> last-step readout")


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="cycle_navigation",
            task=CycleNavigationTask,
            config=CycleNavigationConfig,
            description="the final position of a walk of -1/0/+1 moves on a cycle of 5 states (regular)",
            source="Delétang et al. 2023 (neural_networks_chomsky_hierarchy)",
        )
    )
