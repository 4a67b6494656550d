"""Copy memory (Arjovsky, Shah & Bengio 2016)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, Task, TaskConfig, TaskSpec, hookimpl
from rnnbench.errors import ConfigError

VARIANTS = ("arjovsky2016",)


@dataclass
class CopyConfig(TaskConfig):
    dependency_length: int = 50
    variant: str = "arjovsky2016"
    alphabet: int = 8
    """Number of data symbols (1..alphabet); 0 is the blank and alphabet + 1 the delimiter."""
    symbols: int = 10
    """How many symbols to remember."""


class CopyTask(Task):
    r"""Remember ``symbols`` data symbols across a lag of T blanks, then reproduce them after a delimiter.

    ``arjovsky2016``: input of length T + 2K (K = ``symbols``): K symbols ~ U{1..A}, T - 1 blanks, the
    delimiter, K blanks. Target: T + K blanks, then the K symbols. One-hot inputs of size A + 2; A + 1 output
    classes (blank and data); cross-entropy over all T + 2K steps, as in the paper.

    ``dependency_length`` is T: each symbol is recalled T + K steps after it was shown. Accuracy is measured on
    the K recall positions only (chance 1/A); ``exact`` is the fraction of sequences recalled without error.
    Baseline (blanks, then uniform over the alphabet): CE = K ln A / (T + 2K), accuracy 1/A.
    """

    readout = "sequence"

    def __init__(self, dependency_length: int = 50, variant: str = "arjovsky2016", alphabet: int = 8, symbols: int = 10) -> None:
        if variant not in VARIANTS:
            raise ConfigError("task.variant", variant, f"one of {', '.join(VARIANTS)}")
        if dependency_length < 1:
            raise ConfigError("task.dependency_length", dependency_length, "a positive integer")
        if alphabet < 2:
            raise ConfigError("task.alphabet", alphabet, "an integer >= 2")
        if symbols < 1:
            raise ConfigError("task.symbols", symbols, "a positive integer")
        self.variant, self.alphabet, self.symbols = variant, alphabet, symbols
        self.dependency_length = dependency_length
        self.sequence_length = dependency_length + 2 * symbols
        self.input_size = alphabet + 2
        self.output_size = alphabet + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        T, K, A, device = self.dependency_length, self.symbols, self.alphabet, generator.device
        data = torch.randint(1, A + 1, (batch_size, K), generator=generator, device=device)  # (B, K)
        tokens = torch.zeros(batch_size, T + 2 * K, dtype=torch.long, device=device)
        tokens[:, :K] = data
        tokens[:, T + K - 1] = A + 1  # delimiter
        target = torch.zeros_like(tokens)
        target[:, T + K :] = data
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, T + K :] = True
        x = F.one_hot(tokens, self.input_size).float()  # (B, T + 2K, A + 2)
        return Batch(x=x, y=target, mask=mask)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1), batch.y.flatten())

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        correct = output.argmax(-1) == batch.y  # (B, T + 2K)
        recall = correct[:, -self.symbols :]
        return {
            "loss": self.loss(output, batch),
            "accuracy": recall.float().mean(),
            "exact": recall.all(dim=1).float().mean(),
        }

    def baseline(self) -> dict[str, float]:
        return {
            "loss": self.symbols * math.log(self.alphabet) / self.sequence_length,
            "accuracy": 1 / self.alphabet,
        }


@hookimpl
def register_tasks(register) -> None:
    register(
        TaskSpec(
            name="copy",
            task=CopyTask,
            config=CopyConfig,
            description="copy memory: reproduce K symbols after a lag of T steps",
            source="Arjovsky, Shah & Bengio 2016",
        )
    )
