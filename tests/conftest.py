"""Shared fixtures: the registry, Hydra composition, real temporary MLflow stores, the installed CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

RNNBENCH = str(Path(sys.executable).with_name("rnnbench"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """In-process tests use one thread: small tensors gain nothing from two, and CI's two cores are shared."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def registry():
    from rnnbench.manager import get_registry

    return get_registry()


@pytest.fixture(scope="session")
def compose(registry) -> Callable[..., object]:
    """``compose(*overrides)`` -> the composed config, as the CLI would see it (no Hydra run-time)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from rnnbench.config import register_configs

    register_configs(registry)

    def _compose(*overrides: str):
        with initialize_config_module(config_module="rnnbench.conf", version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture(scope="session")
def _template_store(tmp_path_factory) -> Path:
    """One migrated SQLite store per session; each test gets a copy (a fresh migration costs seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path, _template_store) -> str:
    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(_template_store, path)
    return f"sqlite:///{path}"


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    """Run the installed ``rnnbench`` command in a subprocess, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    full_env.update(MLFLOW_DISABLE_TELEMETRY="true", **(env or {}))
    proc = subprocess.run(
        [RNNBENCH, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rnnbench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli(tmp_path) -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """``cli(*args, env=..., check=...)``: the installed CLI run in ``tmp_path``."""

    def _cli(*args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 600):
        return run_cli(list(args), tmp_path, env=env, check=check, timeout=timeout)

    yield _cli


def train_one(cfg, model, task, tracker=None, diagnostics=None):
    """The training loop on one model (a population of one), as a single run trains; returns its result."""
    import torch

    from rnnbench.population import SinglePopulation
    from rnnbench.tracking import NullTracker
    from rnnbench.train import Member, train

    member = Member(cfg.seed, tracker if tracker is not None else NullTracker(), diagnostics=diagnostics)
    (result,) = train(cfg, SinglePopulation(model), task, [member], torch.device("cpu"))
    return result
