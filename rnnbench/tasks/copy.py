"""Copy memory (Arjovsky, Shah & Bengio 2016), and the TCN variant (Bai, Kolter & Koltun 2018)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, Task, TaskConfig, TaskSpec, hookimpl
from rnnbench import RegisterTask
from rnnbench.tasks._common import check_choice, check_int, lag_facts, masked_accuracy

VARIANTS = ("arjovsky2016", "tcn2018")


@dataclass
class CopyConfig(TaskConfig):
    dependency_length: int = 50
    variant: str = "arjovsky2016"
    alphabet: int = 8
    """Number of data symbols (1..alphabet); 0 is the blank and alphabet + 1 the delimiter."""
    symbols: int = 10
    """How many symbols to remember."""


def copy_metrics(output: Tensor, batch: Batch, loss: Tensor) -> dict[str, Tensor]:
    """Recall-position accuracy (headline), exact-sequence accuracy, and the all-position accuracy of TCN/expRNN."""
    assert batch.mask is not None
    accuracy, exact = masked_accuracy(output, batch.y, batch.mask)
    return {
        "loss": loss,
        "accuracy": accuracy,
        "exact": exact,
        "accuracy_all": (output.argmax(-1) == batch.y).float().mean(),
    }


class CopyTask(Task):
    r"""Remember K data symbols across a lag of T blanks, then reproduce them after a delimiter.

    ``arjovsky2016`` (amarshah/complex_RNN ``memory_problem.py``; same in expRNN, EUNN): input of length
    T + 2K (K = ``symbols``, A = ``alphabet``): K symbols ~ U{1..A}, T - 1 blanks (0), the delimiter (A + 1),
    K blanks. Target: T + K blanks, then the K symbols. A + 1 output classes (blank and data).

    ``tcn2018`` (locuslab/TCN ``copy_memory/utils.py``): the same, except that the delimiter is repeated on
    the K + 1 last input steps (the delimiter step and all K recall steps), and A + 2 output classes (the
    delimiter is a class too). TCN feeds the symbol as one scalar channel; here both variants are one-hot.

    Inputs one-hot of size A + 2. Loss: cross-entropy over all T + 2K steps, as in both papers.

    ``dependency_length`` is T: each symbol is recalled T + K steps after it was shown; the delimiter comes
    T steps after the last symbol.

    Lag (``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max``): per scored (recall) position, the steps
    from the symbol it must reproduce to that position. Symbol k sits at step k and is recalled at T + K + k, so
    every lag is exactly T + K (min = median = max), in both variants.

    Metrics: ``accuracy`` on the K recall positions only (chance 1/A), ``exact`` the fraction of sequences
    recalled without error, ``accuracy_all`` over all T + 2K positions (what TCN and expRNN report: 99 % for a
    memoryless model at T = 1000).

    Baseline (blanks until the recall, then uniform over the A data symbols): CE = K ln A / (T + 2K), accuracy
    1/A, for both variants. In tcn2018 the target sequence is the same and the delimiter class is never a
    target, so the best memoryless strategy puts no mass on it and reaches the same CE; its all-position
    accuracy is (T + K + K/A) / (T + 2K).
    """

    readout = "sequence"

    def __init__(
        self, dependency_length: int = 50, variant: str = "arjovsky2016", alphabet: int = 8, symbols: int = 10
    ) -> None:
        check_choice("task.variant", variant, VARIANTS)
        self.dependency_length = check_int("task.dependency_length", dependency_length, 1)
        self.alphabet = check_int("task.alphabet", alphabet, 2)
        self.symbols = check_int("task.symbols", symbols, 1)
        self.variant = variant
        self.sequence_length = self.dependency_length + 2 * self.symbols
        self.input_size = self.alphabet + 2
        self.output_size = self.alphabet + (2 if variant == "tcn2018" else 1)

    @property
    def delimiter(self) -> int:
        return self.alphabet + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        T, K, A, device = self.dependency_length, self.symbols, self.alphabet, generator.device
        data = torch.randint(1, A + 1, (batch_size, K), generator=generator, device=device)  # (B, K)
        tokens = torch.zeros(batch_size, T + 2 * K, dtype=torch.long, device=device)
        tokens[:, :K] = data
        if self.variant == "tcn2018":
            tokens[:, T + K - 1 :] = self.delimiter
        else:
            tokens[:, T + K - 1] = self.delimiter
        target = torch.zeros_like(tokens)
        target[:, T + K :] = data
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, T + K :] = True
        x = F.one_hot(tokens, self.input_size).float()  # (B, T + 2K, A + 2)
        return Batch(x=x, y=target, mask=mask)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1), batch.y.flatten())

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        return copy_metrics(output, batch, self.loss(output, batch))

    def baseline(self) -> dict[str, float]:
        T, K, A = self.dependency_length, self.symbols, self.alphabet
        return {
            "loss": K * math.log(A) / (T + 2 * K),
            "accuracy": 1 / A,
            "accuracy_all": (T + K + K / A) / (T + 2 * K),
        }

    def lag_facts(self) -> dict[str, object]:
        """Exact lag from each data symbol to its recall step (see the class docstring)."""
        lag = self.dependency_length + self.symbols
        return lag_facts(lag, lag, lag, "data symbol -> its recall step")

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "variant": self.variant,
            "alphabet": self.alphabet,
            "symbols": self.symbols,
        } | self.lag_facts()


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="copy",
            task=CopyTask,
            config=CopyConfig,
            description="copy memory: reproduce K symbols after a lag of T steps (variants arjovsky2016, tcn2018)",
            source="Arjovsky, Shah & Bengio 2016; Bai, Kolter & Koltun 2018",
        )
    )
