"""Validation, sampling and scoring helpers shared by the built-in tasks (not a plugin)."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, Task
from rnnbench import validation
from rnnbench import ConfigError
from rnnbench.validation import choice as check_choice  # noqa: F401 - used by the tasks
from rnnbench.validation import number as check_number  # noqa: F401 - used by the tasks


def check_int(key: str, value: object, minimum: int, why: str = "") -> int:
    """``value`` as an int, rejected unless it is an integer >= ``minimum``."""
    return validation.integer(key, value, minimum=minimum, why=why)


def draw_int(low: int, high: int, generator: torch.Generator) -> int:
    """One integer uniform in [low, high) from ``generator`` (a whole batch shares it: shapes depend on it)."""
    if high - low <= 1:
        return low
    return int(torch.randint(low, high, (1,), generator=generator, device=generator.device).item())


def other_position(first: Tensor, span: int, generator: torch.Generator) -> Tensor:
    """Per row, a position uniform in [0, span) excluding ``first`` (B,): draws j in [0, span - 1), skips first."""
    j = torch.randint(0, span - 1, first.shape, generator=generator, device=first.device)
    return j + (j >= first).long()


def sorted_positions(batch_size: int, span: int, k: int, generator: torch.Generator) -> Tensor:
    """(B, k) distinct positions uniform in [0, span), ascending: the k smallest of ``span`` random keys."""
    keys = torch.rand(batch_size, span, generator=generator, device=generator.device)
    return keys.topk(k, dim=1, largest=False).indices.sort(dim=1).values


def random_subset(batch_size: int, n: int, k: int, generator: torch.Generator) -> Tensor:
    """(B, k) distinct integers from [0, n) in random order (a random permutation's first k)."""
    keys = torch.rand(batch_size, n, generator=generator, device=generator.device)
    return keys.argsort(dim=1)[:, :k]


def masked_cross_entropy(output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy of (B, T, C) logits against (B, T) classes over the positions where ``mask`` holds."""
    losses = F.cross_entropy(output.flatten(0, 1), target.flatten(), reduction="none")  # (B*T,)
    weights = mask.flatten().to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)


def masked_accuracy(output: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Accuracy over the masked positions, and the fraction of sequences with every masked position right."""
    correct = output.argmax(-1) == target  # (B, T)
    weights = mask.float()
    accuracy = (correct.float() * weights).sum() / weights.sum().clamp_min(1.0)
    exact = (correct | ~mask).all(dim=1).float().mean()
    return accuracy, exact


def lag_facts(low: int, median: int, high: int, kind: str, method: str = "exact") -> dict[str, object]:
    """The lag keys every built-in task adds to :meth:`Task.describe` (see its docstring)."""
    assert low <= median <= high, (low, median, high)
    return {"lag_min": low, "lag_median": median, "lag_max": high, "lag_kind": kind, "lag_method": method}


def uniform_lower_median(low: int, high: int) -> int:
    """The lower median of the uniform distribution on the integers low..high."""
    return low + (high - low) // 2


def lower_median(cdf: Callable[[int, bool], float | Fraction], low: int, high: int) -> int:
    """The lower median of a distribution on the integers low..high, exactly: the smallest l with cdf(l) >= 1/2.

    ``cdf(l, exact)`` must be non-decreasing with ``cdf(high) == 1``; a float when ``exact`` is false, a
    :class:`~fractions.Fraction` when true. The bisection compares floats and asks for the exact value only where
    the float lies within 1e-9 of 1/2, so ties are decided exactly.
    """
    half = Fraction(1, 2)
    while low < high:
        mid = (low + high) // 2
        value = cdf(mid, False)
        reached = value >= 0.5 if abs(value - 0.5) > 1e-9 else cdf(mid, True) >= half
        if reached:
            high = mid
        else:
            low = mid + 1
    return low


class MaskedRecallTask(Task):
    """A per-step classification task scored only where ``batch.mask`` holds (loss and accuracy alike)."""

    readout = "sequence"

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        assert batch.mask is not None
        return masked_cross_entropy(output, batch.y, batch.mask)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        assert batch.mask is not None
        accuracy, exact = masked_accuracy(output, batch.y, batch.mask)
        return {"loss": self.loss(output, batch), "accuracy": accuracy, "exact": exact}


def memoryless_score(joint) -> dict[str, float]:
    """The score of the best predictor that sees only the last input: from the joint law ``joint[a, y]`` of the
    last input a and the class y (a NumPy array summing to 1), the conditional entropy H(Y | A) in nats (its
    cross-entropy) and the accuracy of answering argmax_y P(y | a)."""
    import numpy as np

    joint = np.asarray(joint, dtype=np.float64)
    marginal = joint.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, -joint * np.log(joint / marginal), 0.0)
    return {"loss": float(max(terms.sum(), 0.0)), "accuracy": float(joint.max(axis=1).sum())}


class LastStepClassification(Task):
    """One class per sequence, read out at the last step: cross-entropy and accuracy."""

    readout = "last"

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output, batch.y)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"loss": self.loss(output, batch), "accuracy": (output.argmax(-1) == batch.y).float().mean()}
