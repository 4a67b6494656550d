"""Multi-query associative recall, MQAR (Arora et al. 2023, zoology)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnbench import Batch, TaskConfig, TaskSpec, hookimpl
from rnnbench import ConfigError
from rnnbench import RegisterTask
from rnnbench.tasks._common import (
    check_choice,
    check_int,
    check_number,
    lag_facts,
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

    Lag (``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max``): per scored (query) position, the steps
    from the value token it must recall to the query: the j-th pair's value sits at step 2j - 1 (j = 1..N) and
    its query at 2N + 2 g_j, so the lag is 2N + 2 g_j - 2j + 1 (one more from the key). The gaps are drawn in
    pair order by weighted sampling without replacement, so early pairs tend to get the likelier (early) gaps.
    Exact: ``lag_min`` = 1 (last pair, gap 0) and ``lag_max`` = 2N + 2 (T//2) - 3 (first pair, last gap), both of
    positive probability. The median's distribution (the marginals of successive weighted draws) has no closed
    form: ``lag_median`` is a Monte-Carlo estimate of the lower median, from about 2^18 queries drawn from the same
    law with a fixed seed (``lag_method`` says so, with the sample size; T = 1024, N = 8, a = 0.01: 1 / 57 / 1037;
    the same config always gets the same estimate). With
    ``power_a`` = 1 the gaps are uniform and it is exact: j and g_j are then independent uniforms, and the lower
    median is 2 ((T//2 + N - 2)//2) + 1.

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

    def lag_facts(self) -> dict[str, object]:
        """Lag from each queried pair's value to its query: min and max exact, median Monte-Carlo unless a = 1."""
        N, space = self.num_kv_pairs, self.dependency_length // 2
        low, high = 1, 2 * N + 2 * space - 3
        kind = "value of the queried pair -> its query step"
        if self.power_a == 1.0:  # uniform gaps: lag = 2 (g + N - j) + 1, g uniform on [0, space), N - j on [0, N)
            return lag_facts(low, 2 * ((space + N - 2) // 2) + 1, high, kind)
        median, samples = _monte_carlo_median_lag(space, N, self.power_a)
        return lag_facts(low, median, high, kind, f"monte_carlo (median; {samples} queries, seed 0)")

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "variant": self.variant,
            "vocab_size": self.vocab_size,
            "num_kv_pairs": self.num_kv_pairs,
        } | self.lag_facts()


MC_WORK = 1 << 24
"""Work budget of the Monte-Carlo median lag: at most 2^15 sequences, 2^18 queries, about MC_WORK operations
(at least 256 sequences)."""


@lru_cache(maxsize=64)
def _monte_carlo_median_lag(space: int, pairs: int, power_a: float) -> tuple[int, int]:
    """The lower median of the query lag, estimated on a fixed-seed CPU generator; returns (median, queries).

    The gaps are drawn as in :meth:`AssociativeRecallTask.sample`: weights (g + 1)^(a - 1) over [0, space),
    without replacement, the j-th draw for the j-th pair; by rejection when few pairs share a long region, else
    by the exponential race (both exact samplers of that law, cheaper here than ``torch.multinomial``).
    """
    generator = torch.Generator().manual_seed(0)
    weights = torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    by_rejection = pairs * pairs < space
    cost = pairs * pairs if by_rejection else space * pairs.bit_length()
    sequences = max(256, min(1 << 15, MC_WORK // cost, (1 << 18) // pairs))
    draw = _gaps_by_rejection if by_rejection else _gaps_by_race
    gaps = draw(sequences, pairs, weights, generator)  # (sequences, N), column j the j-th pair's gap
    offset = 2 * pairs - 2 * torch.arange(1, pairs + 1) + 1  # 2N - 2j + 1 for the j-th pair
    ordered = (2 * gaps + offset).flatten().sort().values
    return int(ordered[(ordered.numel() - 1) // 2]), ordered.numel()


def _gaps_by_rejection(rows: int, pairs: int, weights: Tensor, generator: torch.Generator) -> Tensor:
    """Each draw from all the weights, redrawn while it repeats an earlier one of its row (the next draw without
    replacement, exactly); rows still repeating after 16 rounds draw from their remaining weights directly."""
    space = weights.numel()
    cumulative = weights.cumsum(0)
    cumulative = cumulative / cumulative[-1]
    gaps = torch.empty(rows, pairs, dtype=torch.long)
    for j in range(pairs):
        pending = torch.arange(rows)
        for _ in range(16):
            u = torch.rand(pending.numel(), dtype=torch.float64, generator=generator)
            draw = torch.searchsorted(cumulative, u, right=True).clamp_max(space - 1)
            repeated = (gaps[pending, :j] == draw[:, None]).any(dim=1)
            gaps[pending[~repeated], j] = draw[~repeated]
            pending = pending[repeated]
            if pending.numel() == 0:
                break
        if pending.numel():
            remaining = weights.expand(pending.numel(), -1).clone().scatter_(1, gaps[pending, :j], 0.0)
            gaps[pending, j] = torch.multinomial(remaining, 1, generator=generator).squeeze(1)
    return gaps


def _gaps_by_race(rows: int, pairs: int, weights: Tensor, generator: torch.Generator) -> Tensor:
    """Gap g arrives at E_g / w_g, E_g ~ Exp(1); the j-th arrival is the j-th draw without replacement."""
    space = weights.numel()
    chunk = max(1, (1 << 20) // space)
    out = []
    for start in range(0, rows, chunk):
        arrival = torch.empty(min(chunk, rows - start), space, dtype=torch.float64)
        arrival.exponential_(generator=generator).div_(weights)
        out.append(arrival.topk(pairs, dim=1, largest=False, sorted=True).indices)
    return torch.cat(out)


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
