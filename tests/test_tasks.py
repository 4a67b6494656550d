"""Property tests of the built-in tasks: shapes, ranges of the definition, distributions, config reaching the
generator, seeding, rejection of impossible settings, and a few training steps of every task."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnbench.base import FRAMEWORK_TASK_FIELDS
from rnnbench.errors import ConfigError
from rnnbench.tasks.adding import AddingTask
from rnnbench.tasks.associative_recall import AssociativeRecallTask
from rnnbench.tasks.copy import CopyTask
from rnnbench.tasks.cycle_navigation import CycleNavigationTask
from rnnbench.tasks.modular_arithmetic import ModularArithmeticTask
from rnnbench.tasks.parity import ParityTask
from rnnbench.tasks.selective_copy import SelectiveCopyTask
from rnnbench.tasks.temporal_order import END, START, X, Y, TemporalOrderTask
from rnnbench.tasks.variable_copy import VariableCopyTask

CASES: list[tuple[str, dict]] = [
    ("adding", {"variant": "hochreiter1997", "dependency_length": 30}),
    ("adding", {"variant": "pascanu2013", "dependency_length": 30}),
    ("adding", {"variant": "arjovsky2016", "dependency_length": 30}),
    ("adding", {"variant": "tcn2018", "dependency_length": 30}),
    ("copy", {"variant": "arjovsky2016", "dependency_length": 20}),
    ("copy", {"variant": "tcn2018", "dependency_length": 20}),
    ("variable_copy", {"dependency_length": 20}),
    ("selective_copy", {"dependency_length": 20}),
    ("temporal_order", {"variant": "2bit", "dependency_length": 30}),
    ("temporal_order", {"variant": "3bit", "dependency_length": 30}),
    ("associative_recall", {"dependency_length": 20}),
    ("parity", {"variant": "final", "dependency_length": 20}),
    ("parity", {"variant": "running", "dependency_length": 20}),
    ("even_pairs", {"dependency_length": 20}),
    ("modular_arithmetic", {"dependency_length": 21}),
    ("modular_arithmetic", {"dependency_length": 20, "modulus": 3}),
    ("cycle_navigation", {"dependency_length": 20}),
]
IDS = [f"{name}-{kw.get('variant', 'default')}" for name, kw in CASES]



def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(registry, name: str, **kwargs):
    return registry.task(name).task(**kwargs)


def tokens_of(batch) -> torch.Tensor:
    return batch.x.argmax(-1)


def same_batch(a, b) -> bool:
    if a.x.shape != b.x.shape or a.y.shape != b.y.shape:
        return False
    same = torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    if a.mask is not None or b.mask is not None:
        same = same and a.mask is not None and b.mask is not None and torch.equal(a.mask, b.mask)
    return same


# ---------------------------------------------------------------------------------------------- the contract


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_contract_shapes_and_dtypes(registry, name, kwargs):
    spec = registry.task(name)
    task = spec.task(**kwargs)
    batch = task.sample(5, gen(0))
    B, L, input_size = batch.x.shape
    assert B == 5 and input_size == task.input_size and batch.x.dtype == torch.float32
    assert task.dependency_length == kwargs["dependency_length"]
    assert L <= task.sequence_length
    assert task.readout in ("last", "sequence")
    if task.readout == "last":
        output = torch.zeros(5, task.output_size)
        assert batch.y.shape[0] == 5 and batch.y.dim() in (1, 2)
    else:
        output = torch.zeros(5, L, task.output_size)
        assert batch.y.shape == (5, L) and batch.y.dtype == torch.long
        assert int(batch.y.max()) < task.output_size
    if batch.mask is not None:
        assert batch.mask.shape == (5, L) and batch.mask.dtype == torch.bool and bool(batch.mask.any())
    metrics = task.metrics(output, batch)
    assert {"loss", "accuracy"} <= set(metrics)
    assert all(v.dim() == 0 and math.isfinite(float(v)) for v in metrics.values())
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    assert task.loss(output, batch).dim() == 0
    base = task.baseline()
    assert {"loss", "accuracy"} <= set(base) and base["loss"] > 0 and 0 < base["accuracy"] < 1
    described = task.describe()
    assert described["dependency_length"] == task.dependency_length
    assert described["sequence_length"] == task.sequence_length
    assert spec.description and spec.source and spec.task.__doc__ and "dependency_length" in spec.task.__doc__


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_config_schema_matches_constructor(registry, name, kwargs):
    spec = registry.task(name)
    fields = {f.name: f.default for f in dataclasses.fields(spec.config) if f.name not in FRAMEWORK_TASK_FIELDS}
    task = spec.task(**fields)  # every schema field is accepted as a keyword, defaults included
    assert task.dependency_length == fields["dependency_length"]


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_seed_determinism_and_independence_from_global_rng(registry, name, kwargs):
    task = make(registry, name, **kwargs)
    torch.manual_seed(1)
    a = task.sample(8, gen(123))
    torch.manual_seed(2)
    torch.rand(10)
    b = task.sample(8, gen(123))
    c = task.sample(8, gen(124))
    assert same_batch(a, b)
    assert not same_batch(a, c)
    g = gen(5)
    first, second = task.sample(8, g), task.sample(8, g)
    assert not same_batch(first, second)  # the stream advances


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_contract_kit(registry, name, kwargs):
    from rnnbench.testing import check_task

    check_task(registry.task(name), task_kwargs=kwargs)


# ---------------------------------------------------------------------------------------- every config field

ALTERNATIVES: dict[str, dict[str, object]] = {
    "adding": {"dependency_length": 40, "variant": "tcn2018", "tolerance": 0.2},
    "copy": {"dependency_length": 25, "variant": "tcn2018", "alphabet": 4, "symbols": 3},
    "variable_copy": {"dependency_length": 25, "min_delay": 15, "alphabet": 4, "symbols": 3},
    "selective_copy": {"dependency_length": 25, "alphabet": 4, "symbols": 3},
    "temporal_order": {"dependency_length": 40, "variant": "3bit"},
    "associative_recall": {"dependency_length": 30, "vocab_size": 32, "num_kv_pairs": 3, "power_a": 1.0,
                           "random_non_queries": False},
    "parity": {"dependency_length": 25, "variant": "running"},
    "even_pairs": {"dependency_length": 25},
    "modular_arithmetic": {"dependency_length": 31, "modulus": 7},
    "cycle_navigation": {"dependency_length": 25, "cycle_length": 3},
}
BASE: dict[str, dict[str, object]] = {
    "adding": {"dependency_length": 30, "variant": "arjovsky2016", "tolerance": 0.04},
    "copy": {"dependency_length": 20, "variant": "arjovsky2016", "alphabet": 8, "symbols": 10},
    "variable_copy": {"dependency_length": 20, "variant": "henaff2016", "min_delay": 1, "alphabet": 8,
                      "symbols": 10},
    "selective_copy": {"dependency_length": 20, "variant": "gu2023", "alphabet": 8, "symbols": 10},
    "temporal_order": {"dependency_length": 30, "variant": "2bit"},
    "associative_recall": {"dependency_length": 20, "variant": "zoology", "vocab_size": 64, "num_kv_pairs": 8,
                           "power_a": 0.01, "random_non_queries": True},
    "parity": {"dependency_length": 20, "variant": "final"},
    "even_pairs": {"dependency_length": 20, "variant": "deletang2023"},
    "modular_arithmetic": {"dependency_length": 21, "variant": "simple", "modulus": 5},
    "cycle_navigation": {"dependency_length": 20, "variant": "deletang2023", "cycle_length": 5},
}
FIELD_CASES = [(task, key) for task, alts in ALTERNATIVES.items() for key in alts]


def test_every_schema_field_has_an_alternative(registry):
    for name in BASE:
        schema = {f.name for f in dataclasses.fields(registry.task(name).config)} - set(FRAMEWORK_TASK_FIELDS)
        assert schema == set(BASE[name]), name
        single_variant = name in ("variable_copy", "selective_copy", "associative_recall", "even_pairs",
                                  "modular_arithmetic", "cycle_navigation")
        assert set(ALTERNATIVES[name]) == schema - ({"variant"} if single_variant else set()), name
    builtin = {n for n in registry.tasks if registry.providers[("task", n)].startswith("rnnbench.tasks.")}
    assert set(BASE) == builtin


def _observed(task, batch) -> dict[str, object]:
    """What a config field should visibly change in the data."""
    out: dict[str, object] = {"length": batch.x.shape[1]}
    if isinstance(task, (CopyTask, VariableCopyTask, SelectiveCopyTask)):
        tok = tokens_of(batch)
        data_tokens = tok[(tok > 0) & (tok <= task.alphabet)]
        out["max_symbol"] = int(data_tokens.max())
        out["recall"] = int(batch.mask[0].sum())
        out["delimiters"] = int((tok == task.alphabet + 1).sum(1)[0])
        if isinstance(task, VariableCopyTask):
            out["min_delay"] = int(batch.extras["delay"].min())
    if isinstance(task, AssociativeRecallTask):
        tok = tokens_of(batch)
        out["max_token"] = int(tok.max())
        out["queries"] = int(batch.mask[0].sum())
        region = batch.mask[:, 2 * task.num_kv_pairs :].float()
        offsets = torch.arange(region.shape[1]).float()
        out["mean_query_offset"] = round(float((region * offsets).sum() / region.sum()), 1)
        out["zeros"] = int((tok[:, 2 * task.num_kv_pairs :] == 0).sum())
    if isinstance(task, TemporalOrderTask):
        out["relevant"] = int(((tokens_of(batch) == X) | (tokens_of(batch) == Y)).sum(1)[0])
        out["max_class"] = int(batch.y.max())
    if isinstance(task, ParityTask):
        out["y_shape"] = tuple(batch.y.shape)
    if isinstance(task, (ModularArithmeticTask, CycleNavigationTask)):
        out["max_class"] = int(batch.y.max())
        out["input_size"] = batch.x.shape[-1]
    if isinstance(task, AddingTask):
        markers = batch.x[..., 1]
        positions = (markers == 1).nonzero()[:, 1].view(-1, 2)
        half = task.dependency_length // 2
        out["same_half"] = int(((positions[:, 0] < half) == (positions[:, 1] < half)).sum())
    return out


@pytest.mark.parametrize(("name", "key"), FIELD_CASES, ids=[f"{n}.{k}" for n, k in FIELD_CASES])
def test_every_config_field_reaches_the_generator(registry, name, key):
    """Changing one field changes the data (or, for the tolerance, the score) accordingly: the mad-lab bug."""
    spec = registry.task(name)
    base = spec.task(**BASE[name])
    changed = spec.task(**{**BASE[name], key: ALTERNATIVES[name][key]})
    a, b = base.sample(256, gen(0)), changed.sample(256, gen(0))
    if key == "tolerance":
        output = torch.full((256, 1), 1.0)
        assert float(changed.metrics(output, b)["accuracy"]) > float(base.metrics(output, a)["accuracy"]) + 0.2
        assert same_batch(a, b)
        return
    assert not same_batch(a, b)
    obs_a, obs_b = _observed(base, a), _observed(changed, b)
    value = ALTERNATIVES[name][key]
    expected_change = {
        "dependency_length": ("length", None),
        "alphabet": ("max_symbol", value),
        "symbols": ("recall", value),
        "min_delay": ("min_delay", None),
        "vocab_size": ("max_token", int(value) - 1 if key == "vocab_size" else None),
        "num_kv_pairs": ("queries", value),
        "power_a": ("mean_query_offset", None),
        "random_non_queries": ("zeros", None),
        "modulus": ("max_class", int(value) - 1 if key == "modulus" else None),
        "cycle_length": ("max_class", int(value) - 1 if key == "cycle_length" else None),
    }
    if key == "variant":
        expected_change["variant"] = {
            "adding": ("same_half", None),
            "copy": ("delimiters", 1 + int(BASE["copy"]["symbols"])),
            "temporal_order": ("relevant", 3),
            "parity": ("y_shape", (256, BASE["parity"]["dependency_length"])),
        }[name]
    observed_key, target = expected_change[key]
    assert obs_a[observed_key] != obs_b[observed_key], (key, obs_a, obs_b)
    if target is not None:
        assert obs_b[observed_key] == target
    if key == "min_delay":
        assert obs_b["min_delay"] >= value
    if key == "power_a":  # uniform gaps (a = 1) lie later on average than zoology's power law (a = 0.01)
        assert obs_b["mean_query_offset"] > obs_a["mean_query_offset"]


# ---------------------------------------------------------------------------------------- rejected settings

REJECTED = [
    ("adding", {"variant": "zaremba"}, "task.variant"),
    ("adding", {"variant": "hochreiter1997", "dependency_length": 21}, "task.dependency_length"),
    ("adding", {"variant": "pascanu2013", "dependency_length": 9}, "task.dependency_length"),
    ("adding", {"dependency_length": 1}, "task.dependency_length"),
    ("adding", {"tolerance": 0.0}, "task.tolerance"),
    ("adding", {"tolerance": 1.5}, "task.tolerance"),
    ("copy", {"variant": "s4"}, "task.variant"),
    ("copy", {"dependency_length": 0}, "task.dependency_length"),
    ("copy", {"alphabet": 1}, "task.alphabet"),
    ("copy", {"symbols": 0}, "task.symbols"),
    ("copy", {"symbols": True}, "task.symbols"),
    ("variable_copy", {"dependency_length": 5, "min_delay": 6}, "task.min_delay"),
    ("variable_copy", {"min_delay": 0}, "task.min_delay"),
    ("selective_copy", {"dependency_length": 5, "symbols": 6}, "task.symbols"),
    ("selective_copy", {"alphabet": 1}, "task.alphabet"),
    ("selective_copy", {"variant": "mad"}, "task.variant"),
    ("variable_copy", {"variant": ""}, "task.variant"),
    ("associative_recall", {"variant": "safari"}, "task.variant"),
    ("temporal_order", {"variant": "4bit"}, "task.variant"),
    ("temporal_order", {"dependency_length": 9}, "task.dependency_length"),
    ("associative_recall", {"num_kv_pairs": 8, "dependency_length": 15}, "task.dependency_length"),
    ("associative_recall", {"vocab_size": 16, "num_kv_pairs": 8}, "task.num_kv_pairs"),
    ("associative_recall", {"vocab_size": 3}, "task.vocab_size"),
    ("associative_recall", {"power_a": 0.0}, "task.power_a"),
    ("parity", {"variant": "majority"}, "task.variant"),
    ("parity", {"dependency_length": 1}, "task.dependency_length"),
    ("even_pairs", {"dependency_length": 0}, "task.dependency_length"),
    ("even_pairs", {"variant": "final"}, "task.variant"),
    ("modular_arithmetic", {"dependency_length": 0}, "task.dependency_length"),
    ("modular_arithmetic", {"modulus": 1}, "task.modulus"),
    ("modular_arithmetic", {"modulus": 21}, "task.modulus"),
    ("modular_arithmetic", {"variant": "brackets"}, "task.variant"),
    ("cycle_navigation", {"dependency_length": 0}, "task.dependency_length"),
    ("cycle_navigation", {"cycle_length": 1}, "task.cycle_length"),
]


@pytest.mark.parametrize(("name", "kwargs", "key"), REJECTED, ids=[f"{n}-{k}" for n, _, k in REJECTED])
def test_impossible_settings_are_rejected_naming_the_key(registry, name, kwargs, key):
    with pytest.raises(ConfigError) as info:
        make(registry, name, **kwargs)
    assert info.value.key == key
    assert key in str(info.value)


@pytest.mark.parametrize(("name", "variants"), [("adding", "hochreiter1997, pascanu2013, arjovsky2016, tcn2018"),
                                                ("copy", "arjovsky2016, tcn2018"), ("temporal_order", "2bit, 3bit"),
                                                ("parity", "final, running")])
def test_unknown_variant_lists_the_allowed_ones(registry, name, variants):
    with pytest.raises(ConfigError, match=variants):
        make(registry, name, variant="nope")


# -------------------------------------------------------------------------------- the definitions, per task

ADDING_VARIANTS = ["hochreiter1997", "pascanu2013", "arjovsky2016", "tcn2018"]


@pytest.mark.parametrize("variant", ADDING_VARIANTS)
def test_adding_markers_values_lengths_and_target(variant):
    T = 40
    task = AddingTask(T, variant)
    g = gen(1)
    lengths = set()
    for _ in range(40):
        batch = task.sample(64, g)
        L = batch.x.shape[1]
        lengths.add(L)
        values, markers = batch.x[..., 0], batch.x[..., 1]
        marked = markers == 1
        assert (marked.sum(1) == 2).all()
        pos = marked.nonzero()[:, 1].view(64, 2)  # ascending per row
        low, high = pos[:, 0], pos[:, 1]
        if variant == "hochreiter1997":
            assert ((markers == 0) | marked | (markers == -1)).all()
            assert (markers[:, -1] == -1).all()
            assert torch.equal(markers[:, 0] == -1, ~marked[:, 0])
            assert (values[marked[:, 0], 0] == 0).all()
            assert (high < T // 2).all() and (low < 10).all()
            assert values.min() >= -1 and values.max() <= 1
            expected = 0.5 + (values * marked).sum(1) / 4
        else:
            assert ((markers == 0) | marked).all()
            assert values.min() >= 0 and values.max() <= 1
            if variant == "pascanu2013":
                assert (low < int(0.1 * L)).all() and (high >= int(0.1 * L)).all() and (high < int(0.5 * L)).all()
                expected = (values * marked).sum(1) / 2
            elif variant == "arjovsky2016":
                assert (low < T // 2).all() and (high >= T // 2).all() and (high < T).all()
                expected = (values * marked).sum(1)
            else:
                assert (high < T).all()
                expected = (values * marked).sum(1)
        torch.testing.assert_close(batch.y.squeeze(1), expected)
    assert lengths == set(range(task.min_length, task.max_length + 1))
    expected_lengths = {"hochreiter1997": (40, 44), "pascanu2013": (40, 43)}.get(variant, (40, 40))
    assert (task.min_length, task.max_length) == expected_lengths


@pytest.mark.parametrize("variant", ADDING_VARIANTS)
def test_adding_value_and_position_distributions(variant):
    task = AddingTask(60, variant)
    batch = task.sample(4096, gen(2))
    values, markers = batch.x[..., 0], batch.x[..., 1]
    unmarked = values[:, 1:-1]
    if variant == "hochreiter1997":
        assert abs(float(unmarked.mean())) < 0.01 and abs(float(unmarked.var()) - 1 / 3) < 0.01
    else:
        assert abs(float(unmarked.mean()) - 0.5) < 0.01 and abs(float(unmarked.var()) - 1 / 12) < 0.005
    pos = (markers == 1).nonzero()[:, 1].view(-1, 2).float()
    first_mean = float(pos[:, 0].mean())
    h = 60 // 2
    pairs_1997 = [min(p1, p2) for p1 in range(10) for p2 in range(h) if p2 != p1]  # X2: first h - 1 unmarked
    expected_first = {"hochreiter1997": sum(pairs_1997) / len(pairs_1997), "pascanu2013": 2.5,
                      "arjovsky2016": 14.5, "tcn2018": 58 / 3}[variant]  # tcn: min of two distinct in [0, 60)
    assert abs(first_mean - expected_first) < 0.5, (first_mean, expected_first)


def test_copy_structure():
    T, K, A = 12, 4, 5
    for variant in ("arjovsky2016", "tcn2018"):
        task = CopyTask(T, variant, A, K)
        batch = task.sample(512, gen(3))
        tok = tokens_of(batch)
        assert tok.shape == (512, T + 2 * K)
        data = tok[:, :K]
        assert data.min() >= 1 and data.max() <= A
        assert set(data.unique().tolist()) == set(range(1, A + 1))
        assert abs(float(data.float().mean()) - (A + 1) / 2) < 0.1
        assert (tok[:, K : T + K - 1] == 0).all()
        assert (tok[:, T + K - 1] == A + 1).all()
        recall_inputs = tok[:, T + K :]
        assert (recall_inputs == (A + 1 if variant == "tcn2018" else 0)).all()
        assert (batch.y[:, : T + K] == 0).all() and torch.equal(batch.y[:, T + K :], data)
        assert torch.equal(batch.mask, batch.y > 0)
        assert task.output_size == (A + 2 if variant == "tcn2018" else A + 1)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 30), K=st.integers(1, 6), A=st.integers(2, 9), seed=st.integers(0, 2**31))
def test_copy_target_is_the_data_after_the_lag(T, K, A, seed):
    task = CopyTask(T, "arjovsky2016", A, K)
    batch = task.sample(3, gen(seed))
    tok = tokens_of(batch)
    assert torch.equal(batch.y[:, -K:], tok[:, :K])
    assert (tok[:, K:] <= A + 1).all() and int((tok == A + 1).sum()) == 3
    assert batch.x.sum(-1).eq(1).all()  # one-hot


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 30), K=st.integers(1, 6), lo=st.integers(1, 30), seed=st.integers(0, 2**31))
def test_variable_copy_structure(T, K, lo, seed):
    lo = min(lo, T)
    task = VariableCopyTask(dependency_length=T, min_delay=lo, alphabet=4, symbols=K)
    batch = task.sample(16, gen(seed))
    tok, delay = tokens_of(batch), batch.extras["delay"]
    assert ((delay >= lo) & (delay <= T)).all()
    delim = (tok == 5).nonzero()
    assert delim.shape[0] == 16  # exactly one delimiter per sequence
    assert torch.equal(delim[:, 1], K - 1 + delay)
    for b in range(16):
        start = K + int(delay[b])
        assert torch.equal(batch.y[b, start : start + K], tok[b, :K])
        assert batch.mask[b].nonzero().squeeze(1).tolist() == list(range(start, start + K))
    assert (batch.y[~batch.mask] == 0).all()
    assert ((tok[:, K:] == 0) | (tok[:, K:] == 5)).all()


def test_variable_copy_delay_is_uniform_per_sequence():
    task = VariableCopyTask(dependency_length=10, min_delay=3, alphabet=4, symbols=2)
    delay = task.sample(8000, gen(4)).extras["delay"]
    counts = torch.bincount(delay, minlength=11)[3:].float()
    assert (counts > 0).all() and float(counts.max() / counts.min()) < 1.25
    assert delay.unique().numel() == 8  # per sequence, not per batch


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 30), K=st.integers(1, 8), A=st.integers(2, 9), seed=st.integers(0, 2**31))
def test_selective_copy_structure(T, K, A, seed):
    if K > T:
        with pytest.raises(ConfigError):
            SelectiveCopyTask(dependency_length=T, alphabet=A, symbols=K)
        return
    task = SelectiveCopyTask(dependency_length=T, alphabet=A, symbols=K)
    batch = task.sample(8, gen(seed))
    tok = tokens_of(batch)
    region = tok[:, :T]
    assert ((region >= 0) & (region <= A)).all()
    assert ((region > 0).sum(1) == K).all()
    assert (tok[:, T:] == A + 1).all()
    for b in range(8):
        assert batch.y[b, T:].tolist() == region[b][region[b] > 0].tolist()  # in order of appearance
    assert (batch.y[:, :T] == 0).all() and batch.mask[:, T:].all() and not batch.mask[:, :T].any()


def test_selective_copy_positions_are_uniform():
    task = SelectiveCopyTask(dependency_length=20, alphabet=4, symbols=5)
    batch = task.sample(4000, gen(5))
    occupied = (tokens_of(batch)[:, :20] > 0).float().mean(0)
    assert torch.allclose(occupied, torch.full((20,), 5 / 20), atol=0.03)


@pytest.mark.parametrize("variant", ["2bit", "3bit"])
def test_temporal_order_structure(variant):
    T = 50
    task = TemporalOrderTask(T, variant)
    batch = task.sample(2000, gen(6))
    tok = tokens_of(batch)
    assert (tok[:, 0] == START).all() and (tok[:, -1] == END).all()
    relevant = (tok == X) | (tok == Y)
    windows = [(5, 10), (25, 30)] if variant == "2bit" else [(5, 10), (15, 20), (30, 35)]
    assert (relevant.sum(1) == len(windows)).all()
    allowed = torch.zeros(T, dtype=torch.bool)
    for lo, hi in windows:
        allowed[lo:hi] = True
        assert (relevant[:, lo:hi].sum(1) == 1).all()
    assert not relevant[:, ~allowed].any()
    middle = tok[:, 1:-1][~relevant[:, 1:-1]]
    assert set(middle.unique().tolist()) == {2, 3, 4, 5}
    bits = tok[relevant].view(-1, len(windows)) - X
    expected = sum(bits[:, i] * 2 ** (len(windows) - 1 - i) for i in range(len(windows)))
    assert torch.equal(batch.y, expected)
    counts = torch.bincount(batch.y, minlength=task.output_size).float()
    assert float(counts.min()) > 0.8 * 2000 / task.output_size


def test_associative_recall_structure():
    N, V, T = 5, 32, 24
    task = AssociativeRecallTask(dependency_length=T, vocab_size=V, num_kv_pairs=N)
    batch = task.sample(300, gen(7))
    tok = tokens_of(batch)
    keys, values = tok[:, 0 : 2 * N : 2], tok[:, 1 : 2 * N : 2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
    assert (keys.sort(1).values.diff(dim=1) > 0).all() and (values.sort(1).values.diff(dim=1) > 0).all()
    assert (batch.mask.sum(1) == N).all() and not batch.mask[:, : 2 * N].any()
    query_offsets = batch.mask[:, 2 * N :].nonzero()[:, 1]
    assert (query_offsets % 2 == 0).all() and (query_offsets < T).all()
    for b in range(300):
        pairs = dict(zip(keys[b].tolist(), values[b].tolist()))
        where = batch.mask[b].nonzero().squeeze(1)
        queried = tok[b, where].tolist()
        assert sorted(queried) == sorted(pairs)  # every key queried once
        assert batch.y[b, where].tolist() == [pairs[k] for k in queried]
    assert (batch.y[~batch.mask] == 0).all()
    noise = tok[:, 2 * N :][~batch.mask[:, 2 * N :]]
    assert noise.unique().numel() == V  # random non-query tokens over the whole vocabulary


def test_associative_recall_power_law_gaps():
    task = AssociativeRecallTask(dependency_length=200, vocab_size=64, num_kv_pairs=1, power_a=0.01)
    mask = task.sample(4000, gen(8)).mask[:, 2:]
    gaps = mask.nonzero()[:, 1] // 2
    weights = torch.arange(1, 101, dtype=torch.float64) ** -0.99  # zoology: a * g^(a - 1), g = 1..T/2
    expected = weights / weights.sum()
    observed = torch.bincount(gaps, minlength=100).double() / 4000
    assert torch.allclose(observed[:3], expected[:3], atol=0.025), (observed[:3], expected[:3])
    assert abs(float((observed * torch.arange(100)).sum() - (expected * torch.arange(100)).sum())) < 2.0


@pytest.mark.parametrize("variant", ["final", "running"])
def test_parity_target(variant):
    task = ParityTask(30, variant)
    batch = task.sample(2000, gen(9))
    bits = tokens_of(batch)
    assert abs(float(bits.float().mean()) - 0.5) < 0.01
    running = torch.stack([bits[:, : t + 1].sum(1) % 2 for t in range(30)], dim=1)
    assert torch.equal(batch.y, running[:, -1] if variant == "final" else running)
    assert task.readout == ("last" if variant == "final" else "sequence")


# ------------------------------------------------------------------------------------- a few training steps


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_every_task_trains_a_few_steps(registry, compose, name, kwargs):
    from rnnbench.config import constructor_kwargs
    from rnnbench.model import build_model
    from conftest import train_one

    small = {**kwargs, "dependency_length": {"adding": 22, "temporal_order": 10}.get(name, 6)}
    overrides = [f"task={name}", "cell=gru", "trainer=smoke", "tracking=none", "model.hidden_size=8",
                 "trainer.steps=3", "trainer.batch_size=4", "trainer.eval_every=3", "trainer.device=cpu",
                 "trainer.progress=none", "optim.lr=0.01", "trainer.final_eval_sequences=16"]
    if name == "associative_recall":
        small.update(num_kv_pairs=2, vocab_size=8)
    if name in ("copy", "variable_copy", "selective_copy"):
        small.update(symbols=3, alphabet=4)
    overrides += [f"task.{k}={v}" for k, v in small.items()]
    cfg = compose(*overrides)
    task = registry.task(name).task(**constructor_kwargs(cfg.task))
    assert all(getattr(task, k, v) == v for k, v in small.items())
    torch.manual_seed(0)
    model = build_model(registry.cell("gru"), {}, task, 8)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_one(cfg, model, task)
    assert result.step == 3 and result.outcome in ("solved", "learning", "at_baseline")
    assert math.isfinite(result.metrics["loss"]) and 0 <= result.metrics["accuracy"] <= 1
    assert result.baseline == task.baseline()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
