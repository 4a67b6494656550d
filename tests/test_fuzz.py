"""Random overrides through the whole config layer: every outcome is a clean run or a clean error."""

from __future__ import annotations

import pytest
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from rnnbench.errors import RnnbenchError
from rnnbench.runner import run_job

NUMBERS = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(["0.5", "-1.5", "1e9", "nan", "inf", "abc", "null", "true", "[1,2]", "''"]),
)
KEYS = {
    "seed": NUMBERS,
    "task": st.sampled_from(["adding", "copy", "parity", "nosuch", "temporal_order", "associative_recall"]),
    "cell": st.sampled_from(["gru", "lstm", "rnn_tanh", "lstm1997", "irnn", "nosuch"]),
    "optim": st.sampled_from(["adam", "sgd", "rmsprop", "adamw", "adagrad"]),
    "task.dependency_length": NUMBERS,
    "task.variant": st.sampled_from(["arjovsky2016", "tcn2018", "hochreiter1997", "nosuch", "''"]),
    "model.hidden_size": NUMBERS,
    "model.num_layers": st.integers(-1, 3).map(str),
    "model.bidirectional": st.sampled_from(["true", "false", "maybe"]),
    "model.dropout": NUMBERS,
    "model.param_budget": st.sampled_from(["null", "0", "50", "400", "x"]),
    "optim.lr": NUMBERS,
    "trainer.steps": st.integers(-1, 3).map(str),
    "trainer.batch_size": st.integers(-1, 5).map(str),
    "trainer.grad_clip": NUMBERS,
    "trainer.clip_mode": st.sampled_from(["norm", "value", "sideways"]),
    "trainer.device": st.sampled_from(["cpu", "auto", "cuda", "tpu", "cuda:9"]),
    "trainer.eval_batches": st.integers(-1, 2).map(str),
}
TINY = {"trainer.steps": "2", "model.hidden_size": "4", "task.dependency_length": "8", "trainer.batch_size": "4"}
SAFE = ["tracking=none", "trainer.eval_every=2", "trainer.log_every=1", "trainer.checkpoint_every=2", "diagnostics=off"]


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(KEYS)), st.none(), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: KEYS[k] for k in keys})
))
def test_random_overrides_run_cleanly_or_fail_with_a_clear_message(compose, tmp_path, overrides):
    values = dict(TINY, **overrides)
    args = [*SAFE, *(f"{k}={v}" for k, v in values.items())]
    try:
        cfg = compose(*args)
    except (HydraException, OmegaConfBaseException) as exc:
        assert str(exc).strip(), args
        return
    try:
        results = run_job(cfg, tmp_path / "out", tmp_path)  # tracking=none: nothing is recorded
    except RnnbenchError as exc:
        message = str(exc)
        assert "=" in message or "Unknown" in message, message
        return
    assert all(r.outcome in {"solved", "learning", "at_baseline", "diverged"} for r in results)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(KEYS)), st.none(), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: KEYS[k] for k in keys})
))
def test_random_overrides_pass_the_preflight_or_are_refused_in_one_line(compose, tmp_path, overrides):
    """The command line's checks (what runs before Hydra writes anything) on random overrides: a pass, or one line
    naming a key; never another exception."""
    from rnnbench.preflight import check_override_types, check_run, error_line

    args = ["tracking=none", "diagnostics=off", *(f"{k}={v}" for k, v in overrides.items())]
    try:
        cfg = compose(*args)
        check_override_types(cfg, args)
        check_run(cfg, tmp_path)
    except (HydraException, OmegaConfBaseException, RnnbenchError) as exc:
        line = error_line(exc, args, lambda ovr: compose(*ovr))
        assert "\n" not in line and line.strip(), (args, line)
        assert "is not allowed" in line or "Unknown" in line, (args, line)
    assert list(tmp_path.iterdir()) == []
