"""Config schemas of the framework groups, and registration of every cell and task into Hydra's ConfigStore.

Cells and tasks contribute their own dataclass schemas through their specs, so an installed plugin gets
``cell=<name>`` with type-checked overrides without touching ``conf/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from rnnbench.errors import ConfigError
from rnnbench.registry import Registry

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")
CLIP_MODES = ("norm", "value")
PROGRESS = ("auto", "bar", "log", "none")
TRACKING_BACKENDS = ("mlflow", "none")


@dataclass
class ModelConfig:
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    """Dropout between stacked layers."""
    param_budget: Optional[int] = None
    """If set, the hidden size is the largest whose model has at most this many parameters."""
    fused: bool = True
    """Run torch's fused kernel for cells that declare one; false forces the step-by-step loop."""


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    """SGD and RMSprop only."""


@dataclass
class TrainerConfig:
    steps: int = 6000
    batch_size: int = 64
    device: str = "auto"
    grad_clip: Optional[float] = 1.0
    """Clipping threshold; null disables clipping."""
    clip_mode: str = "norm"
    """``norm``: rescale all gradients so their global L2 norm is at most grad_clip; ``value``: clamp each."""
    eval_every: int = 100
    eval_batches: int = 4
    early_stop: bool = True
    """Stop once the held-out accuracy reaches solved_threshold."""
    solved_threshold: float = 0.99
    baseline_margin: float = 0.1
    """A run is ``at_baseline`` when its final loss is above (1 - margin) x the memoryless baseline loss."""
    log_every: int = 50
    checkpoint_every: int = 500
    checkpoint_dir: str = "checkpoints"
    """Relative paths are taken from the directory rnnbench was started in."""
    resume: bool = True
    """Resume an interrupted run with the same config from its checkpoint; skip one that already finished."""
    deterministic: bool = False
    threads: Optional[int] = None
    """torch threads; null: the machine's cores divided by the number of jobs running side by side."""
    progress: str = "auto"
    seeds: int = 1
    """Train runs for seeds seed .. seed + seeds - 1 side by side as one batched model (one MLflow run each)."""


@dataclass
class TrackingConfig:
    backend: str = "mlflow"
    uri: Optional[str] = None
    """null: MLFLOW_TRACKING_URI, else MLflow's default local store (mlflow.db in the working directory)."""
    experiment: str = "rnnbench"


@dataclass
class RootConfig:
    seed: int = 0
    task: Any = MISSING
    cell: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    diagnostics: Any = None


def register_configs(registry: Registry) -> None:
    """Store the root schema and one node per registered cell (group ``cell``) and task (group ``task``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="rnnbench_schema", node=RootConfig)
    for name, spec in registry.cells.items():
        cs.store(group="cell", name=name, node=spec.config(name=name), provider=registry.providers[("cell", name)])
    for name, spec in registry.tasks.items():
        cs.store(group="task", name=name, node=spec.config(name=name), provider=registry.providers[("task", name)])


def constructor_kwargs(node: Any) -> dict[str, Any]:
    """The fields of a composed cell/task node except ``name``: what the plugin's constructor receives."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    values.pop("name", None)
    return values


def _positive(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, value, "a positive integer")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, value, f"one of {', '.join(choices)}")


def validate(cfg: Any) -> None:
    """Check the framework's values before anything is built; each error names key, value and what is allowed."""
    import math

    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError("seed", cfg.seed, "a non-negative integer")
    m, t, o = cfg.model, cfg.trainer, cfg.optim
    if m.param_budget is None:
        _positive("model.hidden_size", m.hidden_size)
    else:
        _positive("model.param_budget", m.param_budget)
    _positive("model.num_layers", m.num_layers)
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError("model.dropout", m.dropout, "a number in [0, 1)")
    for key in ("steps", "batch_size", "eval_every", "eval_batches", "log_every", "checkpoint_every", "seeds"):
        _positive(f"trainer.{key}", getattr(t, key))
    if not (t.device in DEVICES or (isinstance(t.device, str) and t.device.startswith("cuda:")
                                    and t.device[5:].isdigit())):
        raise ConfigError("trainer.device", t.device, f"one of {', '.join(DEVICES)}, or cuda:<index>")
    _choice("trainer.clip_mode", t.clip_mode, CLIP_MODES)
    _choice("trainer.progress", t.progress, PROGRESS)
    if t.grad_clip is not None and not (math.isfinite(t.grad_clip) and t.grad_clip > 0):
        raise ConfigError("trainer.grad_clip", t.grad_clip, "a positive number, or null to disable clipping")
    if not 0.0 < t.solved_threshold <= 1.0:
        raise ConfigError("trainer.solved_threshold", t.solved_threshold, "a number in (0, 1]")
    if not 0.0 <= t.baseline_margin < 1.0:
        raise ConfigError("trainer.baseline_margin", t.baseline_margin, "a number in [0, 1)")
    if t.threads is not None:
        _positive("trainer.threads", t.threads)
    _choice("optim.name", o.name, OPTIMIZERS)
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise ConfigError("optim.lr", o.lr, "a positive number")
    for key in ("weight_decay", "momentum"):
        value = getattr(o, key)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"optim.{key}", value, "a non-negative number")
    _choice("tracking.backend", cfg.tracking.backend, TRACKING_BACKENDS)
