"""The lag each task asks for: ``describe()``'s ``lag_min`` / ``lag_median`` / ``lag_max`` against the lags found in
sampled batches (every registered built-in task, every variant, small and long), against a brute-force
enumeration of the generator's law at tiny lengths, and a third-party task that gives no lag at all."""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from fractions import Fraction

import pytest
import torch

from rnnbench import Batch, Task, TaskConfig, TaskSpec
from rnnbench.base import FRAMEWORK_TASK_FIELDS
from rnnbench.manager import get_registry

REGISTRY = get_registry()
BUILTIN = sorted(n for n in REGISTRY.tasks if REGISTRY.providers[("task", n)].startswith("rnnbench.tasks."))
LAG_KEYS = ("lag_min", "lag_median", "lag_max")


def variants(name: str) -> tuple[str, ...]:
    """A built-in task's variants: its module's ``VARIANTS``."""
    return tuple(sys.modules[REGISTRY.task(name).task.__module__].VARIANTS)


def build(name: str, **overrides):
    """The task as the runner builds it: every field of the spec's config (defaults, then overrides), less name."""
    spec = REGISTRY.task(name)
    fields = dataclasses.asdict(spec.config(name=name, **overrides))
    for key in FRAMEWORK_TASK_FIELDS:
        fields.pop(key)
    return spec.task(**fields)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ the information, found in a batch alone


def _nth_pairs(info: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Rows with k information steps and k scored steps: the k-th scored step recalls the k-th information step.
    Returns the (B * k,) lags, scored step minus information step."""
    B = info.shape[0]
    where = info.nonzero()[:, 1].view(B, -1)
    at = scored.nonzero()[:, 1].view(B, -1)
    assert where.shape == at.shape
    return (at - where).flatten()


def measured_lags(name: str, task, batch: Batch) -> torch.Tensor:
    """Every lag in ``batch``, found from its inputs, targets and mask (not from ``extras``): one per sequence for
    a last-step readout, one per scored position for a per-step readout."""
    B, L = batch.x.shape[:2]
    steps = torch.arange(L).expand(B, L)
    if name == "adding":
        values, marked = batch.x[..., 0], batch.x[..., 1] == 1
        if task.variant == "hochreiter1997":  # a marked step 0 has value 0: it carries nothing
            assert (values[marked[:, 0], 0] == 0).all()
            marked = marked.clone()
            marked[:, 0] = False
        earliest = steps.masked_fill(~marked, L).min(dim=1).values
        assert (earliest < L).all()
        return L - 1 - earliest
    tokens = batch.x.argmax(-1)
    if name in ("copy", "variable_copy", "selective_copy"):
        data = (tokens >= 1) & (tokens <= task.alphabet)
        lags = _nth_pairs(data, batch.mask)
        assert torch.equal(batch.y[batch.mask], tokens[data])  # the k-th recall is the k-th symbol shown
        return lags
    if name == "temporal_order":
        from rnnbench.tasks.temporal_order import X, Y

        relevant = (tokens == X) | (tokens == Y)
        return L - 1 - steps.masked_fill(~relevant, L).min(dim=1).values
    if name == "parity":  # every target is the parity of bits 0..t: it reaches back to bit 0
        running = tokens.cumsum(1) % 2
        if task.variant == "final":
            assert torch.equal(batch.y, running[:, -1])
            return torch.full((B,), L - 1)
        assert torch.equal(batch.y, running)
        return steps.flatten()
    if name == "even_pairs":  # first XOR last bit: the first bit is needed at the last step
        assert torch.equal(batch.y, tokens[:, 0] ^ tokens[:, -1])
        return torch.full((B,), L - 1)
    if name == "cycle_navigation":  # every move shifts the final position, the first one too
        assert torch.equal(batch.y, (tokens - 1).sum(1) % task.cycle_length)
        return torch.full((B,), L - 1)
    if name == "modular_arithmetic":  # the value is a function of every symbol, from the first number on
        assert L % 2 == 1 and (tokens[:, 0::2] < task.modulus).all() and (tokens[:, 1::2] >= task.modulus).all()
        return torch.full((B,), L - 1)
    if name == "associative_recall":
        N = task.num_kv_pairs
        query = batch.mask.nonzero()
        rows, at = query[:, 0], query[:, 1]
        keys = tokens[:, 0 : 2 * N : 2]
        pair = (keys[rows] == tokens[rows, at][:, None]).float().argmax(1)  # 0-based pair index
        value_step = 2 * pair + 1
        assert torch.equal(batch.y[rows, at], tokens[rows, value_step])
        return at - value_step
    raise AssertionError(f"no lag extractor for built-in task {name!r}: add one to this test")


def varies_in_length(task) -> bool:
    d = task.describe()
    return d.get("min_sequence_length", d["sequence_length"]) != d.get("max_sequence_length", d["sequence_length"])


def batch_size(name: str, task) -> int:
    """Small batches where the length is drawn per batch (adding 1997, pascanu2013): many draws of the length."""
    return 4 if varies_in_length(task) else 512 if name == "associative_recall" else 2048


def sample_lags(name: str, task, sequences: int, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    chunk = batch_size(name, task)
    out = [measured_lags(name, task, task.sample(min(chunk, sequences - done), g)) for done in
           range(0, sequences, chunk)]
    return torch.cat(out)


# ----------------------------------------------------------------------------------- the cases

SMALL = {"adding": {"hochreiter1997": 22, "pascanu2013": 10, "arjovsky2016": 7, "tcn2018": 6}, "copy": 5,
         "variable_copy": 9, "selective_copy": 13, "temporal_order": 23, "associative_recall": 16, "parity": 5,
         "even_pairs": 5, "modular_arithmetic": 7, "cycle_navigation": 5}
"""Small lengths, where every extreme has a good chance per sequence (odd ones where T//2 rounds)."""


def _small(name: str, variant: str) -> int:
    value = SMALL[name]
    return value[variant] if isinstance(value, dict) else value


CASES = [(name, variant, T) for name in BUILTIN for variant in variants(name) for T in (_small(name, variant), 100)]
EXTRA = [  # non-default settings that the lag depends on
    ("variable_copy", {"dependency_length": 30, "min_delay": 12, "symbols": 3}),
    ("selective_copy", {"dependency_length": 30, "symbols": 3}),
    ("associative_recall", {"dependency_length": 12, "num_kv_pairs": 3, "vocab_size": 16, "power_a": 1.0}),
    ("associative_recall", {"dependency_length": 40, "num_kv_pairs": 2, "vocab_size": 16, "power_a": 0.3}),
    ("adding", {"dependency_length": 35, "variant": "pascanu2013"}),
]
RARE = {
    ("adding", "tcn2018", 100): "min",  # lag 1: both markers on the last two steps, p = 1/4950
    ("adding", "hochreiter1997", 100): "min",  # X1 zeroed at step 0, X2 at step 49, L = T: p = 1/5390
}
"""Extremes too rare to be drawn in the sample: checked as bounds only."""
SEQUENCES = 16384


def test_every_builtin_task_is_covered():
    assert set(BUILTIN) == set(SMALL)
    assert {"adding", "copy", "variable_copy", "selective_copy", "temporal_order", "associative_recall",
            "parity"} <= set(BUILTIN)


@pytest.mark.parametrize(("name", "variant", "T"), CASES, ids=[f"{n}-{v}-T{T}" for n, v, T in CASES])
def test_describe_gives_the_lag(name, variant, T):
    described = build(name, dependency_length=T, variant=variant).describe()
    low, median, high = (described[k] for k in LAG_KEYS)
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in (low, median, high))
    assert 0 <= low <= median <= high
    assert isinstance(described["lag_kind"], str) and described["lag_kind"]
    assert described["lag_method"] == "exact" or described["lag_method"].startswith("monte_carlo")


def check_against_sample(name: str, task, lags: torch.Tensor, sequences: int, rare: str = "") -> None:
    described = task.describe()
    low, median, high = (described[k] for k in LAG_KEYS)
    assert int(lags.min()) >= low and int(lags.max()) <= high, (int(lags.min()), int(lags.max()), low, high)
    if rare != "min":
        assert int(lags.min()) == low
    if rare != "max":
        assert int(lags.max()) == high
    # the lower median m: P(lag <= m) >= 1/2 > P(lag <= m - 1), within 4 standard errors, counting whole
    # sequences (their scored positions are not independent) and, where the length is drawn per batch, batches
    variance = 0.25 / sequences
    if varies_in_length(task):
        variance += 0.25 / (sequences / batch_size(name, task))
    tolerance = 4 * math.sqrt(variance)
    at_median = float((lags <= median).double().mean())
    below = float((lags <= median - 1).double().mean())
    assert at_median >= 0.5 - tolerance and below <= 0.5 + tolerance, (median, at_median, below)


@pytest.mark.parametrize(("name", "variant", "T"), CASES, ids=[f"{n}-{v}-T{T}" for n, v, T in CASES])
def test_lag_matches_sampled_batches(name, variant, T):
    task = build(name, dependency_length=T, variant=variant)
    lags = sample_lags(name, task, SEQUENCES)
    check_against_sample(name, task, lags, SEQUENCES, RARE.get((name, variant, T), ""))


@pytest.mark.parametrize(("name", "kwargs"), EXTRA, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXTRA)])
def test_lag_matches_sampled_batches_other_settings(name, kwargs):
    task = build(name, **kwargs)
    check_against_sample(name, task, sample_lags(name, task, SEQUENCES, seed=1), SEQUENCES)


# ------------------------------------------------ exact: brute-force enumeration of the generator's law


def lower_median(pmf: dict[int, Fraction | float]) -> int:
    total, half = 0, sum(pmf.values()) / 2
    for lag in sorted(pmf):
        total += pmf[lag]
        if total >= half:
            return lag
    raise AssertionError


def enumerate_lags(name: str, task) -> dict[int, Fraction]:
    """The exact law of the lag by enumerating every draw of the generator (tiny lengths only)."""
    pmf: dict[int, Fraction] = {}

    def add(lag: int, p: Fraction) -> None:
        pmf[lag] = pmf.get(lag, Fraction(0)) + p

    T = task.dependency_length
    if name == "adding":
        lengths = range(task.min_length, task.max_length + 1)
        for L in lengths:
            pL = Fraction(1, len(lengths))
            if task.variant == "hochreiter1997":
                pairs = [(f, s, Fraction(1, 10 * (T // 2 - 1))) for f in range(10) for s in range(T // 2) if s != f]
            elif task.variant == "pascanu2013":
                t, w = int(0.1 * L), int(0.4 * L)
                pairs = [(a, b, Fraction(1, t * w)) for a in range(t) for b in range(t, t + w)]
            elif task.variant == "arjovsky2016":
                h = T // 2
                pairs = [(a, b, Fraction(1, h * (T - h))) for a in range(h) for b in range(h, T)]
            else:
                pairs = [(a, b, Fraction(1, T * (T - 1))) for a in range(T) for b in range(T) if a != b]
            for a, b, p in pairs:
                informative = [q for q in (a, b) if q > 0 or task.variant != "hochreiter1997"]
                add(L - 1 - min(informative), pL * p)
    elif name == "copy":
        add(T + task.symbols, Fraction(1))
    elif name == "variable_copy":
        delays = range(task.min_delay, T + 1)
        for d in delays:
            add(d + task.symbols, Fraction(1, len(delays)))
    elif name == "selective_copy":
        K = task.symbols
        subsets = list(itertools.combinations(range(T), K))
        for where in subsets:
            for k, w in enumerate(where):
                add(T + k - w, Fraction(1, K * len(subsets)))
    elif name == "temporal_order":
        start, width = int(0.1 * T), int(0.1 * T)
        for t1 in range(start, start + width):
            add(T - 1 - t1, Fraction(1, width))
    elif name == "parity":
        for t in ([T - 1] if task.variant == "final" else range(T)):
            add(t, Fraction(1, 1 if task.variant == "final" else T))
    elif name in ("even_pairs", "cycle_navigation", "modular_arithmetic"):
        add(task.sequence_length - 1, Fraction(1))
    elif name == "associative_recall":
        N, space, a = task.num_kv_pairs, T // 2, Fraction(task.power_a)
        assert a == 1, "exact enumeration needs rational weights: power_a = 1"
        orders = list(itertools.permutations(range(space), N))
        for gaps in orders:
            for j, g in enumerate(gaps, start=1):
                add(2 * N + 2 * g - 2 * j + 1, Fraction(1, N * len(orders)))
    else:
        raise AssertionError(name)
    assert sum(pmf.values()) == 1
    return pmf


TINY = [("adding", {"variant": v, "dependency_length": T}) for v, Ts in
        [("hochreiter1997", (22, 23, 26)), ("pascanu2013", (10, 20, 21, 33)), ("arjovsky2016", (2, 3, 8, 9)),
         ("tcn2018", (2, 3, 7, 12, 20))] for T in Ts]
TINY += [("copy", {"variant": v, "dependency_length": 4, "symbols": 3}) for v in ("arjovsky2016", "tcn2018")]
TINY += [("variable_copy", {"dependency_length": T, "min_delay": d, "symbols": 2}) for T, d in ((1, 1), (6, 1),
                                                                                               (7, 3), (8, 8))]
TINY += [("selective_copy", {"dependency_length": T, "symbols": K}) for T, K in ((1, 1), (5, 2), (8, 3), (9, 4),
                                                                                 (6, 6))]
TINY += [("temporal_order", {"variant": v, "dependency_length": T}) for v in ("2bit", "3bit") for T in (10, 29, 40)]
TINY += [("parity", {"variant": v, "dependency_length": T}) for v in ("final", "running") for T in (2, 5, 6)]
TINY += [(name, {"dependency_length": T}) for name in ("even_pairs", "cycle_navigation", "modular_arithmetic")
         for T in (1, 2, 3, 6)]
TINY += [("associative_recall", {"dependency_length": T, "num_kv_pairs": N, "vocab_size": 16, "power_a": 1.0})
         for T, N in ((2, 1), (8, 2), (10, 3), (12, 3))]


@pytest.mark.parametrize(("name", "kwargs"), TINY, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TINY)])
def test_lag_equals_the_enumerated_law(name, kwargs):
    task = build(name, **kwargs)
    pmf = enumerate_lags(name, task)
    described = task.describe()
    assert (described["lag_min"], described["lag_median"], described["lag_max"]) == (
        min(pmf), lower_median(pmf), max(pmf))
    assert described["lag_method"] == "exact"


def test_selective_copy_lag_is_uniform_on_k_to_t():
    """The pooled lag of selective copy is exactly uniform on [K, T] (what its docstring and median rest on)."""
    for T, K in ((7, 3), (9, 4), (10, 1)):
        pmf = enumerate_lags("selective_copy", build("selective_copy", dependency_length=T, symbols=K))
        assert pmf == {lag: Fraction(1, T - K + 1) for lag in range(K, T + 1)}


def test_associative_recall_monte_carlo_median_against_the_exact_law():
    """The estimated median agrees with the exact law of successive weighted draws, enumerated at tiny sizes."""
    for T, N, a in ((12, 2, 0.01), (14, 3, 0.01), (14, 2, 0.3), (16, 3, 2.0)):
        task = build("associative_recall", dependency_length=T, num_kv_pairs=N, vocab_size=16, power_a=a)
        space = T // 2
        w = [(g + 1) ** (a - 1) for g in range(space)]
        pmf: dict[int, float] = {}
        for gaps in itertools.permutations(range(space), N):
            p, left = 1.0, sum(w)
            for g in gaps:
                p *= w[g] / left
                left -= w[g]
            for j, g in enumerate(gaps, start=1):
                lag = 2 * N + 2 * g - 2 * j + 1
                pmf[lag] = pmf.get(lag, 0.0) + p / N
        cdf = 0.0
        for lag in sorted(pmf):  # the exact median must not sit on a near-tie the estimate cannot resolve
            cdf += pmf[lag]
            assert abs(cdf - 0.5) > 0.01, (T, N, a, lag, cdf)
        described = task.describe()
        assert described["lag_method"].startswith("monte_carlo")
        assert (described["lag_min"], described["lag_median"], described["lag_max"]) == (
            min(pmf), lower_median(pmf), max(pmf))


@pytest.mark.parametrize("name", BUILTIN)
def test_lag_holds_across_lengths(name):
    """Over a range of lengths: integers in order, and never longer than the (longest) sequence."""
    for variant in variants(name):
        for T in range(_small(name, variant), 400, 29):
            d = build(name, dependency_length=T, variant=variant).describe()
            assert 0 <= d["lag_min"] <= d["lag_median"] <= d["lag_max"] <= d["sequence_length"] - 1, (variant, T, d)


# --------------------------------------------------------------------- a third-party task without lag


@dataclasses.dataclass
class EchoConfig(TaskConfig):
    dependency_length: int = 5


class EchoTask(Task):
    """Echo the first bit at the last step; ``dependency_length`` is the length. Uses the base ``describe()``."""

    input_size = 2
    output_size = 2
    readout = "last"

    def __init__(self, dependency_length: int = 5, variant: str = "") -> None:
        self.dependency_length = self.sequence_length = dependency_length

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        bits = torch.randint(0, 2, (batch_size, self.dependency_length), generator=generator,
                             device=generator.device)
        return Batch(x=torch.nn.functional.one_hot(bits, 2).float(), y=bits[:, 0])

    def loss(self, output, batch):
        return torch.nn.functional.cross_entropy(output, batch.y)

    def metrics(self, output, batch):
        return {"loss": self.loss(output, batch), "accuracy": (output.argmax(-1) == batch.y).float().mean()}

    def baseline(self):
        return {"loss": math.log(2), "accuracy": 0.5}


def test_a_third_party_task_without_lag_still_works():
    from rnnbench.model import build_model
    from rnnbench.testing import check_task

    spec = TaskSpec(name="echo", task=EchoTask, config=EchoConfig, description="echo", source="test")
    check_task(spec, task_kwargs={"dependency_length": 6})
    task = EchoTask(6)
    described = task.describe()
    assert described == {"sequence_length": 6, "dependency_length": 6}  # the base default: no lag keys
    params = {f"task.{k}": str(v) for k, v in described.items()}  # as the runner logs them
    assert not any(k.startswith("task.lag") for k in params)
    torch.manual_seed(0)
    model = build_model(REGISTRY.cell("gru"), {}, task, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = task.sample(16, gen(0))
    for _ in range(3):
        optimizer.zero_grad()
        loss = task.loss(model(batch.x), batch)
        loss.backward()
        optimizer.step()
    assert math.isfinite(float(loss.detach()))
