"""The adding problem (Hochreiter & Schmidhuber 1997), in the variant of Arjovsky, Shah & Bengio 2016."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rnnbench import Batch, Task, TaskConfig, TaskSpec, hookimpl
from rnnbench.errors import ConfigError

VARIANTS = ("arjovsky2016",)


@dataclass
class AddingConfig(TaskConfig):
    dependency_length: int = 50
    variant: str = "arjovsky2016"
    tolerance: float = 0.04
    """A sequence counts as correct when |error| < tolerance on the target rescaled to [0, 1] (1997's 0.04)."""


class AddingTask(Task):
    r"""Two channels per step: a value and a marker; predict the sum of the two marked values at the end.

    ``arjovsky2016``: length T, values ~ U[0, 1], one marker uniformly in the first half, one in the second
    half, target the sum (amarshah/complex_RNN ``adding_problem.py``).

    ``dependency_length`` is T, the sequence length: the first marked value may lie T - 1 steps before the
    readout. Baseline (predict the mean, 1): MSE = Var(X1 + X2) = 1/6; accuracy = P(|S - 1| < 2 tol) = 2d - d^2
    with d = 2 tol (0.1536 at tol 0.04).
    """

    readout = "last"
    input_size = 2
    output_size = 1

    def __init__(self, dependency_length: int = 50, variant: str = "arjovsky2016", tolerance: float = 0.04) -> None:
        if variant not in VARIANTS:
            raise ConfigError("task.variant", variant, f"one of {', '.join(VARIANTS)}")
        if dependency_length < 2:
            raise ConfigError("task.dependency_length", dependency_length, "an integer >= 2 (two marked steps)")
        if not 0 < tolerance < 1:
            raise ConfigError("task.tolerance", tolerance, "a number in (0, 1)")
        self.variant, self.tolerance = variant, tolerance
        self.dependency_length = self.sequence_length = dependency_length
        self.scale = 2.0  # width of the target's range: accuracy is judged on target / scale

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        T, device = self.sequence_length, generator.device
        values = torch.rand(batch_size, T, generator=generator, device=device)  # (B, T)
        half = T // 2
        first = torch.randint(0, half, (batch_size,), generator=generator, device=device)
        second = torch.randint(half, T, (batch_size,), generator=generator, device=device)
        markers = torch.zeros(batch_size, T, device=device)
        rows = torch.arange(batch_size, device=device)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        target = (values * markers).sum(dim=1, keepdim=True)  # (B, 1)
        return Batch(x=torch.stack([values, markers], dim=-1), y=target)  # x: (B, T, 2)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return torch.nn.functional.mse_loss(output, batch.y)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        error = (output - batch.y).abs().squeeze(-1) / self.scale
        mse = torch.nn.functional.mse_loss(output, batch.y)
        return {"loss": mse, "mse": mse, "accuracy": (error < self.tolerance).float().mean()}

    def baseline(self) -> dict[str, float]:
        d = 2 * self.tolerance  # |S - 1| < d on the sum scale
        return {"loss": 1 / 6, "accuracy": 2 * d - d * d}


@hookimpl
def register_tasks(register) -> None:
    register(
        TaskSpec(
            name="adding",
            task=AddingTask,
            config=AddingConfig,
            description="adding problem: sum of two marked values",
            source="Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016",
        )
    )
