"""Validation, sampling and scoring helpers shared by the built-in tasks (not a plugin)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, Task
from rnnbench.errors import ConfigError


def check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"one of {', '.join(allowed)}")


def check_int(key: str, value: object, minimum: int, why: str = "") -> int:
    """``value`` as an int, rejected unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"an integer >= {minimum}" + (f" ({why})" if why else ""))
    return value


def check_number(key: str, value: object, low: float, high: float) -> float:
    """``value`` as a float, rejected unless ``low < value < high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ConfigError(key, value, f"a number in ({low}, {high})")
    return float(value)


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
