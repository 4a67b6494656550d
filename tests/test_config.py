"""Config composition: every group option composes, overrides are type-checked, values are validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from rnnbench.config import OPTIMIZERS, constructor_kwargs, validate
from rnnbench.errors import ConfigError

CONF = Path(__import__("rnnbench.conf", fromlist=["_"]).__file__).parent


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group", ["model", "optim", "trainer", "tracking", "launcher", "diagnostics", "experiment"]
)
def test_every_yaml_option_composes(compose, group):
    for option in group_options(group):
        cfg = compose(f"{group}={option}")
        validate(cfg)


def test_every_cell_and_task_composes_and_builds(compose, registry):
    for cell in registry.cells:
        cfg = compose(f"cell={cell}")
        assert cfg.cell.name == cell
        registry.cell(cell).cell(3, 4, **constructor_kwargs(cfg.cell))
    for task in registry.tasks:
        cfg = compose(f"task={task}")
        assert cfg.task.name == task
        registry.task(task).task(**constructor_kwargs(cfg.task))


def test_defaults_are_the_main_job(compose):
    cfg = compose()
    assert (cfg.task.name, cfg.cell.name, cfg.optim.name, cfg.tracking.backend) == ("adding", "gru", "adam", "mlflow")


def test_optimizer_group_matches_the_supported_optimizers():
    assert set(group_options("optim")) == set(OPTIMIZERS)


def test_optimizers_instantiate(compose):
    import torch

    from rnnbench.train import make_optimizer

    for name in OPTIMIZERS:
        cfg = compose(f"optim={name}")
        opt = make_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(2))])
        assert opt.param_groups[0]["lr"] == cfg.optim.lr


def test_unknown_group_option_lists_choices(compose, registry):
    with pytest.raises(ConfigCompositionException, match="Could not find 'cell/lstmm'") as info:
        compose("cell=lstmm")
    assert "gru" in str(info.value.__cause__ or info.value) or "gru" in str(info.value)


@pytest.mark.parametrize(
    "override, key",
    [("task.dependency_length=abc", "dependency_length"), ("optim.lr=fast", "lr"), ("model.hidden_size=1.5", "hidden_size")],
)
def test_overrides_are_type_checked(compose, override, key):
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose(override)
    assert key in str(info.value) + str(info.value.__cause__)


def test_unknown_key_is_rejected(compose):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose("trainer.stepz=3")


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.steps=0", "trainer.steps"),
        ("trainer.batch_size=-1", "trainer.batch_size"),
        ("model.hidden_size=0", "model.hidden_size"),
        ("model.num_layers=0", "model.num_layers"),
        ("model.dropout=1.0", "model.dropout"),
        ("trainer.device=tpu", "trainer.device"),
        ("trainer.grad_clip=-1", "trainer.grad_clip"),
        ("trainer.clip_mode=sideways", "trainer.clip_mode"),
        ("optim.lr=0", "optim.lr"),
        ("optim.name=adagrad", "optim.name"),
        ("seed=-3", "seed"),
    ],
)
def test_validate_names_key_value_and_allowed(compose, override, key):
    cfg = compose(override)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert message.startswith(f"{key}=")
    assert override.split("=", 1)[1].strip("'") in message
    assert "allowed" in message


def test_no_yaml_option_shadows_a_registered_cell_or_task(registry):
    assert not set(group_options("cell")) & set(registry.cells)
    assert not set(group_options("task")) & set(registry.tasks)


def test_resolved_config_is_plain_data(compose):
    container = OmegaConf.to_container(compose(), resolve=True)
    assert container["task"]["dependency_length"] > 0


# --- rnnbench.validation: the one set of validators ------------------------------------------------------------


def test_validators_return_the_value_and_refuse_with_key_value_and_allowed(tmp_path):
    import math

    from rnnbench import validation as v

    assert v.positive_int("k", 3) == 3 and v.non_negative_int("k", 0) == 0
    assert v.number("k", 1, 0.0, 1.0, high_open=False) == 1.0 and v.choice("k", "a", ("a", "b")) == "a"
    assert v.boolean("k", False) is False and v.string("k", "x") == "x" and v.seed("k", 2**63 - 1) == 2**63 - 1
    cases = [
        (lambda: v.positive_int("trainer.steps", 0), "trainer.steps=0 is not allowed: a positive integer"),
        (lambda: v.positive_int("k", True), "k=true is not allowed: a positive integer"),
        (lambda: v.positive_int("k", 9, maximum=8), "k=9 is not allowed: a positive integer up to 8"),
        (lambda: v.non_negative_int("k", -1), "k=-1 is not allowed: a non-negative integer"),
        (lambda: v.integer("k", 1, minimum=2, why="w"), "k=1 is not allowed: an integer >= 2 (w)"),
        (lambda: v.number("k", math.nan, 0.0, 1.0), "k=nan is not allowed: a number in (0, 1)"),
        (lambda: v.number("k", math.inf, 0.0), "k=inf is not allowed: a finite number > 0"),
        (lambda: v.finite("k", -math.inf), "k=-inf is not allowed: a finite number"),
        (lambda: v.positive_number("k", 0), "k=0 is not allowed: a positive finite number"),
        (lambda: v.non_negative_number("k", math.nan), "k=nan is not allowed: a non-negative finite number"),
        (lambda: v.boolean("k", 2), "k=2 is not allowed: true or false"),
        (lambda: v.choice("optim.name", "adamm", ("adam", "sgd")),
         "optim.name='adamm' is not allowed: one of adam, sgd (did you mean adam?)"),
        (lambda: v.string("k", "  "), "k='  ' is not allowed: a non-empty string"),
        (lambda: v.seed("seed", 2**63 - 1, count=2), "seed=9223372036854775807 is not allowed: an integer in [0, 9223372036854775806]"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value).startswith(message), (str(info.value), message)


def test_known_keys_suggests_a_close_match_and_lists_the_keys():
    from rnnbench.validation import known_keys

    known_keys("model", {"hidden_size": 3}, ["hidden_size", "num_layers"])
    with pytest.raises(ConfigError) as info:
        known_keys("model", {"hiden_size": 64}, ["hidden_size", "num_layers"])
    assert str(info.value) == ("model.hiden_size=64 is not allowed: model has no key 'hiden_size'; did you mean "
                               "model.hidden_size? allowed keys: hidden_size, num_layers")


def test_path_validators_refuse_unwritable_places_and_leave_nothing(tmp_path):
    from rnnbench.validation import writable_dir, writable_file

    assert writable_dir("k", "a/b", base=tmp_path) == tmp_path / "a" / "b"
    assert writable_file("k", tmp_path / "x.db") == tmp_path / "x.db"
    assert list(tmp_path.iterdir()) == []  # probes are removed, nothing is created
    (tmp_path / "file").write_text("")
    for call, fragment in [
        (lambda: writable_dir("trainer.checkpoint_dir", "/proc/forbidden"), "cannot create anything in /proc"),
        (lambda: writable_dir("k", tmp_path / "file"), "is a file"),
        (lambda: writable_dir("k", tmp_path / "file" / "below"), "is not a directory"),
        (lambda: writable_file("k", tmp_path), "is a directory"),
        (lambda: writable_dir("k", ""), "a directory path"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            call()


# --- config.validate: everything, before anything is built ----------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["+model.hiden_size=64"], "model.hiden_size"),
        (["+trainer.step=100"], "trainer.step"),
        (["+foo=1"], "foo"),
        (["+task.dependancy_length=100"], "task.dependancy_length"),
        (["cell=gru", "+cell.forget_bias=2.0"], "cell.forget_bias"),
        (["+diagnostics.evry=3"], "diagnostics.evry"),
        (["cell=lstm", "cell.forget_bias=nan"], "cell.forget_bias"),
        (["cell=irnn", "cell.input_std=inf"], "cell.input_std"),
        (["task.tolerance=inf"], "task.tolerance"),
        (["model.param_budget=500", "model.hidden_size=-3"], "model.hidden_size"),
        (["seed=99999999999999999999"], "seed"),
        (["trainer.seeds=2", "seed=9223372036854775807"], "seed"),
        (["tracking.experiment=''"], "tracking.experiment"),
        (["diagnostics.batch_size=abc"], "diagnostics.batch_size"),
        (["diagnostics.every=0"], "diagnostics.every"),
        (["diagnostics.seed=-1"], "diagnostics.seed"),
        (["diagnostics.saturation=0.5"], "diagnostics.saturation"),
        (["diagnostics.dtype=float16"], "diagnostics.dtype"),
        (["diagnostics.enabled=2"], "diagnostics.enabled"),
        (["model.num_layers=100000"], "model.num_layers"),
        (["trainer.grad_clip=nan"], "trainer.grad_clip"),
        (["optim.lr=inf"], "optim.lr"),
        (["trainer.steps=${oops}"], "trainer.steps"),
    ],
)
def test_validate_refuses_with_the_key(compose, overrides, key):
    cfg = compose(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value).startswith(f"{key}="), str(info.value)
    assert "\n" not in str(info.value)


def test_diagnostics_rules_match_the_diagnostics_module(compose):
    """config.validate accepts what DiagnosticsSettings accepts for every diagnostics option."""
    from rnnbench.diagnostics import DiagnosticsSettings

    for option in group_options("diagnostics"):
        cfg = compose(f"diagnostics={option}")
        validate(cfg)
        DiagnosticsSettings.from_node(cfg.diagnostics)


# --- memory: estimates on the meta device ----------------------------------------------------------------------


def test_budget_search_on_the_meta_device_matches_the_real_one_for_every_builtin_cell(compose, registry):
    from rnnbench.meta_sizes import hidden_size_for_budget, parameter_count
    from rnnbench.model import build_model, count_parameters
    from rnnbench.model import hidden_size_for_budget as real_search

    task = registry.task("copy").task()
    for name in sorted(registry.cells):
        if not registry.provenance("cell", name).startswith("rnnbench=="):
            continue
        spec = registry.cell(name)
        kwargs = constructor_kwargs(compose(f"cell={name}").cell)
        for budget, model_kwargs in ((3000, {}), (20000, {"num_layers": 3, "bidirectional": True})):
            expected = real_search(spec, kwargs, task, budget, **model_kwargs)
            assert hidden_size_for_budget(spec, kwargs, task, budget, **model_kwargs) == expected, (name, budget)
        real = count_parameters(build_model(spec, kwargs, task, 5, num_layers=4, bidirectional=True))
        assert parameter_count(spec, kwargs, task, 5, num_layers=4, bidirectional=True) == real, name


def test_check_fits_names_the_key_that_drives_the_size(compose, registry):
    from rnnbench.memory import check_fits, estimate_bytes

    for overrides, key in [
        (["trainer.batch_size=1000000000"], "trainer.batch_size"),
        (["model.hidden_size=1000000"], "model.hidden_size"),
        (["model.param_budget=1000000000000"], "model.param_budget"),
        (["task=copy", "task.alphabet=1000000000"], "task.alphabet"),
        (["diagnostics.batch_size=1000000000"], "diagnostics.batch_size"),
        (["task.dependency_length=100000000"], "task.dependency_length"),
        (["trainer.seeds=100", "model.hidden_size=2048"], "trainer.seeds"),
    ]:
        cfg = compose(*overrides)
        task = registry.task(cfg.task.name).task(**constructor_kwargs(cfg.task))
        spec, kwargs = registry.cell(cfg.cell.name), constructor_kwargs(cfg.cell)
        with pytest.raises(ConfigError) as info:
            check_fits(cfg, task, spec, kwargs, available=16 * 2**30)
        message = str(info.value)
        assert message.startswith(f"{key}=") and "16.0 GB" not in message and "17.2 GB available" in message, message
    cfg = compose()
    task = registry.task("adding").task()
    estimate = estimate_bytes(cfg, task, registry.cell("gru"), constructor_kwargs(cfg.cell))
    assert 1e6 < estimate.total < 1e8 and estimate.hidden_size == 64
