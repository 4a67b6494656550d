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
