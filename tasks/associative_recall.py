"""Multi-query associative recall, MQAR (Arora et al. 2023, zoology)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from rnnbench import Batch, TaskConfig, TaskSpec, hookimpl
from rnnbench.errors import ConfigError
from rnnbench.registry import RegisterTask
from rnnbench.tasks._common import (
    check_choice,
    check_int,
    check_number,
    MaskedRecallTask,
    random_subset,
)

VARIANTS = ("zoology",)


@dataclass
class AssociativeRecallConfig(TaskConfig):
    dependency_length: int = 64
    """Length of the query region that follows the key-value pairs."""
    variant: str = "zoology"
    vocab_size: int = 64
    num_kv_pairs: int = 8
    power_a: float = 0.01
    """Query gaps are drawn without replacement with weights g^(a - 1), g = 1, 2, ... (zoology's power law)."""
    random_non_queries: bool = True
    """Fill the non-query steps with random tokens (zoology's default) instead of 0."""


class AssociativeRecallTask(MaskedRecallTask):
    r"""Key-value pairs, then queries: on each query key, output the value it was paired with.

    Definition (zoology ``zoology/data/multiquery_ar.py``): vocabulary V, N = ``num_kv_pairs``. Keys are N
    distinct tokens from [1, V/2), values N distinct tokens from [V/2, V). The context k1 v1 ... kN vN (2N
    steps) is followed by a query region of T steps; every key is queried once, at region offset 2g, the N
    gaps g drawn without replacement from [0, T//2) with weights (g + 1)^(a - 1) (``power_a`` = a, 0.01 by
    default, so most queries come early). The target at a query step is the key's value (labels are -100
    elsewhere in zoology: ``Batch.mask`` here). Other query-region steps hold random tokens from [0, V)
    (``random_non_queries``) or 0. Length 2N + T; one-hot inputs and V output classes. One variant,
    ``zoology``.

    ``dependency_length`` is T, the query region: a pair is queried up to T + 2N - 2 steps after it was shown.
    At least 2N (room for N queries at even offsets).

    Loss: cross-entropy at the query steps only. Metrics: ``accuracy`` per query, ``exact`` per sequence.

    Baseline (uniform over the V - V/2 value tokens): CE = ln(V - V/2), accuracy 1/(V - V/2).
    """

    readout = "sequence"

    def __init__(
        self,
        dependency_length: int = 64,
        variant: str = "zoology",
        vocab_size: int = 64,
        num_kv_pairs: int = 8,
        power_a: float = 0.01,
        random_non_queries: bool = True,
    ) -> None:
        check_choice("task.variant", variant, VARIANTS)
        self.variant = variant
        self.num_kv_pairs = N = check_int("task.num_kv_pairs", num_kv_pairs, 1)
        self.vocab_size = V = check_int("task.vocab_size", vocab_size, 4)
        if N > V // 2 - 1:
            raise ConfigError(
                "task.num_kv_pairs", N, f"at most vocab_size // 2 - 1 = {V // 2 - 1} (distinct keys in [1, V/2))"
            )
        self.dependency_length = check_int(
            "task.dependency_length", dependency_length, 2 * N, f"2 * num_kv_pairs: room for {N} queries"
        )
        self.power_a = check_number("task.power_a", power_a, 0.0, math.inf)
        if not isinstance(random_non_queries, bool):
            raise ConfigError("task.random_non_queries", random_non_queries, "true or false")
        self.random_non_queries = random_non_queries
        self.sequence_length = 2 * N + self.dependency_length
        self.input_size = self.output_size = V
        self.num_values = V - V // 2

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        N, V, T, device = self.num_kv_pairs, self.vocab_size, self.dependency_length, generator.device
        half = V // 2
        keys = 1 + random_subset(batch_size, half - 1, N, generator)  # (B, N) distinct in [1, V/2)
        values = half + random_subset(batch_size, V - half, N, generator)  # (B, N) distinct in [V/2, V)
        space = T // 2
        weights = self.power_a * torch.arange(1, space + 1, device=device, dtype=torch.float64) ** (self.power_a - 1)
        gaps = torch.multinomial(weights.expand(batch_size, -1), N, replacement=False, generator=generator)
        if self.random_non_queries:
            region = torch.randint(0, V, (batch_size, T), generator=generator, device=device)
        else:
            region = torch.zeros(batch_size, T, dtype=torch.long, device=device)
        region.scatter_(1, 2 * gaps, keys)
        region_target = torch.zeros_like(region).scatter_(1, 2 * gaps, values)
        region_mask = torch.zeros_like(region, dtype=torch.bool).scatter_(1, 2 * gaps, True)
        context = torch.stack([keys, values], dim=2).flatten(1)  # (B, 2N): k1 v1 k2 v2 ...
        tokens = torch.cat([context, region], dim=1)  # (B, 2N + T)
        target = torch.cat([torch.zeros_like(context), region_target], dim=1)
        mask = torch.cat([torch.zeros_like(context, dtype=torch.bool), region_mask], dim=1)
        x = F.one_hot(tokens, V).float()
        return Batch(x=x, y=target, mask=mask)

    def baseline(self) -> dict[str, float]:
        return {"loss": math.log(self.num_values), "accuracy": 1 / self.num_values}

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "variant": self.variant,
            "vocab_size": self.vocab_size,
            "num_kv_pairs": self.num_kv_pairs,
        }


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(
        TaskSpec(
            name="associative_recall",
            task=AssociativeRecallTask,
            config=AssociativeRecallConfig,
            description="multi-query associative recall: key-value pairs, then queries",
            source="Arora et al. 2023 (zoology MQAR)",
        )
    )
