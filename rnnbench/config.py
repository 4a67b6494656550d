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
    """Run torch's fused module for cells that declare one (all but the LSTM: on a GPU only); false trains the
    loop encoder (the cell's whole-sequence path: for the built-in cells the hand-written kernel)."""


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
    final_eval_sequences: int = 10000
    """Fresh held-out sequences of the final evaluation (and of the confirmation before an early stop)."""
    baseline_z: float = 3.0
    """A run is ``at_baseline`` unless its final loss is below the memoryless baseline loss by more than
    ``baseline_z`` standard errors of the final evaluation."""
    log_every: int = 50
    checkpoint_every: int = 500
    checkpoint_dir: str = "checkpoints"
    """Relative paths are taken from the directory rnnbench was started in."""
    resume: bool = True
    """Resume an interrupted run with the same config from its checkpoint; skip one that already finished."""
    deterministic: bool = False
    cuda_graphs: bool = True
    """On a GPU, replay each training step's forward and backward as CUDA graphs (cells without torch's fused
    module; not with model.dropout > 0); false runs them eagerly."""
    threads: Optional[int] = None
    """torch threads; null: the CPUs this process was given divided by the jobs running side by side."""
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


LENGTH_RESOLVER = "rnnbench.train_length_or"


def _train_length_or(train_length: Any, default: Any) -> Any:
    return default if train_length is None else train_length


def register_resolvers() -> None:
    """``${rnnbench.train_length_or:${.train_length},D}``: ``task.train_length`` when it is set, else ``D``.
    Every task node's ``dependency_length`` defaults to it, so a length-generalisation run (``task.train_length``
    set) is checked and reported at its longest training length unless ``task.dependency_length`` is given.
    (Hydra hands the registered resolvers to a launcher's workers.)"""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(LENGTH_RESOLVER):
        OmegaConf.register_new_resolver(LENGTH_RESOLVER, _train_length_or)


def task_node(spec: Any, name: str) -> Any:
    """The config node of ``task=<name>``: the spec's defaults, ``dependency_length`` following
    ``task.train_length`` when that is set (:func:`register_resolvers`)."""
    node = spec.config(name=name)
    default = getattr(node, "dependency_length", None)
    if isinstance(default, int) and not isinstance(default, bool):
        node.dependency_length = f"${{{LENGTH_RESOLVER}:${{.train_length}},{default}}}"
    return node


def register_configs(registry: Registry) -> None:
    """Store the root schema and one node per registered cell (group ``cell``) and task (group ``task``)."""
    from hydra.core.config_store import ConfigStore

    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="rnnbench_schema", node=RootConfig)
    for name, spec in registry.cells.items():
        cs.store(group="cell", name=name, node=spec.config(name=name), provider=registry.providers[("cell", name)])
    for name, spec in registry.tasks.items():
        cs.store(group="task", name=name, node=task_node(spec, name), provider=registry.providers[("task", name)])


def constructor_kwargs(node: Any) -> dict[str, Any]:
    """The fields of a composed cell/task node except ``name`` (and, of a task, the framework's length fields,
    :data:`rnnbench.base.FRAMEWORK_TASK_FIELDS`): what the plugin's constructor receives."""
    from omegaconf import OmegaConf

    from rnnbench.base import FRAMEWORK_TASK_FIELDS

    values = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    for key in FRAMEWORK_TASK_FIELDS:
        values.pop(key, None)
    return values


DIAGNOSTICS_DTYPES = ("float32", "float64")
DIAGNOSTICS_KEYS = ("enabled", "every", "batch_size", "seed", "saturation", "dtype", "figures", "cell", "task",
                    "dependency_length")
"""The keys of the ``diagnostics`` group (``conf/diagnostics/*.yaml``)."""
MAX_LAYERS = 1000
MAX_SEEDS = 1000
MAX_HIDDEN = 2**31 - 1
MAX_BUDGET = 2**62


def _plain(node: Any) -> Any:
    """``node`` as plain Python data (interpolations resolved); plain data is returned as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _schema_keys(schema: Any) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(schema)]


def _present(node: Any, key: str) -> bool:
    return key in node


def check_resolvable(node: Any, prefix: str = "") -> None:
    """Every value resolves: an interpolation that does not (``trainer.steps=${oops}``) is a :class:`ConfigError`."""
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(node, DictConfig):
        return
    for key in node.keys():
        if not prefix and key == "hydra":
            continue
        full = f"{prefix}.{key}" if prefix else str(key)
        try:
            value = node[key]
        except OmegaConfBaseException as exc:
            raw = node._get_node(key)
            raw = raw._value() if raw is not None else None
            reason = str(getattr(exc, "msg", exc)).strip().splitlines()[0]
            raise ConfigError(full, raw, f"a value that resolves ({reason})") from exc
        check_resolvable(value, full)


def check_known_keys(cfg: Any, registry: Registry | None = None) -> None:
    """Refuse keys that no schema declares (``+model.hiden_size=64``, ``+foo=1``, ``+cell.forget_bias=2`` on a
    cell without one), naming the key, a close match and the allowed keys."""
    from rnnbench import validation as v

    root = {k: cfg.get(k) for k in cfg.keys() if k != "hydra"}
    v.known_keys("", root, _schema_keys(RootConfig))
    for key, schema in (("model", ModelConfig), ("optim", OptimConfig), ("trainer", TrainerConfig),
                        ("tracking", TrackingConfig)):
        node = cfg.get(key)
        if node is not None and hasattr(node, "keys"):
            v.known_keys(key, {k: node.get(k) for k in node.keys()}, _schema_keys(schema))
    if registry is None:
        from rnnbench.manager import get_registry

        registry = get_registry()
    for group in ("cell", "task"):
        node = cfg.get(group)
        if node is None or not hasattr(node, "keys"):
            continue
        name = node.get("name")
        specs = registry.cells if group == "cell" else registry.tasks
        if name in specs:
            v.known_keys(group, {k: node.get(k) for k in node.keys()}, _schema_keys(specs[name].config))


def _diagnostics_keys() -> set[str]:
    """The diagnostics group's keys: :data:`DIAGNOSTICS_KEYS`, and any field the diagnostics module adds."""
    keys = set(DIAGNOSTICS_KEYS)
    try:
        import dataclasses

        from rnnbench.diagnostics import DiagnosticsSettings

        keys |= {f.name for f in dataclasses.fields(DiagnosticsSettings)}
    except (ImportError, TypeError):
        pass
    return keys


def validate_diagnostics(node: Any) -> None:
    """The ``diagnostics`` group: what :class:`rnnbench.diagnostics.DiagnosticsSettings` accepts."""
    from rnnbench import validation as v

    d = _plain(node)
    if d is None:
        return
    if not isinstance(d, dict):
        raise ConfigError("diagnostics", d, "a diagnostics option: diagnostics=default or diagnostics=off")
    v.known_keys("diagnostics", d, _diagnostics_keys())
    for key in ("enabled", "figures"):
        if key in d:
            v.boolean(f"diagnostics.{key}", d[key])
    for key in ("every", "batch_size"):
        if key in d:
            v.positive_int(f"diagnostics.{key}", d[key])
    if "seed" in d:
        v.seed("diagnostics.seed", d["seed"])
    if "saturation" in d:
        v.number("diagnostics.saturation", d["saturation"], 0.0, 0.5)
    if "dtype" in d:
        v.choice("diagnostics.dtype", d["dtype"], DIAGNOSTICS_DTYPES)
    for key in ("cell", "task"):
        if key in d and not isinstance(d[key], str):
            raise ConfigError(f"diagnostics.{key}", d[key], "a name (a string)")
    if d.get("dependency_length") is not None:  # a label (the task checks its own), so only its type
        v.integer("diagnostics.dependency_length", d["dependency_length"])


def _plugin_values(group: str, node: Any) -> None:
    """A cell's or task's own values: no float may be NaN or infinite (each plugin checks its ranges)."""
    import math

    values = _plain(node)
    if not isinstance(values, dict):
        return
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{group}.{key}", value, "a finite number")


def validate(cfg: Any, registry: Registry | None = None) -> None:
    """Check every value before anything is built or written: unknown keys, types, ranges, NaN and infinity, the
    ``diagnostics`` group, and the cell's and task's floats; each error names key, value and what is allowed.

    The plugins' own rules (``task.variant``, ``cell.recurrent_init``...) are checked by their constructors, and
    sizes by :func:`rnnbench.memory.check_fits`."""
    from rnnbench import validation as v

    check_resolvable(cfg)
    check_known_keys(cfg, registry)
    m, t, o, tr = cfg.model, cfg.trainer, cfg.optim, cfg.tracking
    seeds = v.positive_int("trainer.seeds", t.seeds, maximum=MAX_SEEDS)
    v.seed("seed", cfg.seed, count=seeds)
    v.positive_int("model.hidden_size", m.hidden_size, maximum=MAX_HIDDEN)  # also with a budget, which ignores it
    if m.param_budget is not None:
        v.positive_int("model.param_budget", m.param_budget, maximum=MAX_BUDGET)
    v.positive_int("model.num_layers", m.num_layers, maximum=MAX_LAYERS)
    v.number("model.dropout", m.dropout, 0.0, 1.0, low_open=False)
    for key in ("bidirectional", "fused"):
        v.boolean(f"model.{key}", m[key])
    for key in ("steps", "batch_size", "eval_every", "eval_batches", "log_every", "checkpoint_every",
                "final_eval_sequences"):
        if _present(t, key):
            v.positive_int(f"trainer.{key}", t[key])
    if not (t.device in DEVICES or (isinstance(t.device, str) and t.device.startswith("cuda:")
                                    and t.device[5:].isdigit())):
        raise ConfigError("trainer.device", t.device, f"one of {', '.join(DEVICES)}, or cuda:<index>")
    v.choice("trainer.clip_mode", t.clip_mode, CLIP_MODES)
    v.choice("trainer.progress", t.progress, PROGRESS)
    if t.grad_clip is not None:
        v.positive_number("trainer.grad_clip", t.grad_clip, why="or null to disable clipping")
    v.number("trainer.solved_threshold", t.solved_threshold, 0.0, 1.0, high_open=False)
    if _present(t, "baseline_margin"):
        v.number("trainer.baseline_margin", t.baseline_margin, 0.0, 1.0, low_open=False)
    if _present(t, "baseline_z"):
        v.non_negative_number("trainer.baseline_z", t.baseline_z)
    if t.threads is not None:
        v.positive_int("trainer.threads", t.threads, maximum=4096)
    for key in ("early_stop", "resume", "deterministic"):
        if _present(t, key):
            v.boolean(f"trainer.{key}", t[key])
    v.string("trainer.checkpoint_dir", t.checkpoint_dir)
    v.choice("optim.name", o.name, OPTIMIZERS)
    v.positive_number("optim.lr", o.lr)
    for key in ("weight_decay", "momentum"):
        v.non_negative_number(f"optim.{key}", o[key])
    v.choice("tracking.backend", tr.backend, TRACKING_BACKENDS)
    if tr.backend == "mlflow":
        v.string("tracking.experiment", tr.experiment, max_length=500)
        if tr.uri is not None:
            v.string("tracking.uri", tr.uri)
    validate_diagnostics(cfg.get("diagnostics"))
    _plugin_values("cell", cfg.cell)
    _plugin_values("task", cfg.task)
    validate_lengths(cfg.task)


MAX_TEST_LENGTHS = 100
MAX_TRAIN_LENGTH = 1_000_000
"""Every length up to ``task.train_length`` is built once to check that the task accepts it."""


def validate_lengths(node: Any) -> None:
    """The framework's length generalisation fields of a task node (``task.train_length``,
    ``task.test_lengths``), before any task is built; what depends on the task (its shortest length, a model
    whose size changes with the length) is checked by :func:`rnnbench.lengths.Lengths.build`."""
    from rnnbench import validation as v

    task = _plain(node)
    if not isinstance(task, dict):
        return
    train, tests = task.get("train_length"), task.get("test_lengths")
    if train is not None:
        v.positive_int("task.train_length", train, maximum=MAX_TRAIN_LENGTH)
        length = task.get("dependency_length")
        if isinstance(length, int) and not isinstance(length, bool) and length > train:
            raise ConfigError("task.dependency_length", length,
                              f"at most task.train_length ({train}): it is the trained length the periodic checks and "
                              "the outcome use (leave it out to use task.train_length)")
    if tests is None:
        return
    if not isinstance(tests, list):
        raise ConfigError("task.test_lengths", tests, "a list of lengths, e.g. [40,100,250,500]")
    if len(tests) > MAX_TEST_LENGTHS:
        raise ConfigError("task.test_lengths", tests, f"at most {MAX_TEST_LENGTHS} lengths")
    for value in tests:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ConfigError("task.test_lengths", tests, f"positive integers ({value!r} is not one)")
    if any(b <= a for a, b in zip(tests, tests[1:])):
        raise ConfigError("task.test_lengths", tests, "lengths in ascending order, each once")
