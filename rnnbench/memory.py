"""How much memory a run needs, estimated before anything is allocated, and the check that it fits.

The estimate builds the model on torch's ``meta`` device (shapes only: nothing is allocated, whatever the sizes)
and adds up, in bytes:

- **parameters**: parameters, their gradients and the optimiser's state (Adam: 2 buffers per parameter), per
  member of a seed-parallel run (``trainer.seeds``);
- **activations**: what autograd keeps for backpropagation through time, measured by running the meta model on
  two short sequences and counting the saved tensors (so a plugin cell gets its own per-step cost: about
  3 x H floats per step for an Elman RNN, 9 for a GRU, 13 for an LSTM), scaled to ``trainer.batch_size`` x
  the task's sequence length x layers x directions, and doubled for the gradients the backward pass holds
  (measured peaks on CPU: 1.9-2.4x the saved tensors; torch's fused Elman kernel keeps 5x (CPU) to 8x (CUDA)
  more); plus the per-step logits of a sequence readout. On an H200 the estimate was 0.57-1.12x the measured
  peak (``torch.cuda.max_memory_allocated``) of a training step for GRU, LSTM (fused and loop), peephole LSTM,
  minGRU, S6 and a 2-layer bidirectional GRU;
- **data**: the training batch as generated (inputs, targets, mask);
- **diagnostics**: the float64 measurement copy and its gradient through time on ``diagnostics.batch_size``
  sequences, when diagnostics are on.

:func:`check_fits` compares the total with the memory available (``MemAvailable`` of ``/proc/meminfo``, within
the cgroup's limit; on CUDA ``torch.cuda.mem_get_info``) and raises :class:`ConfigError` naming the key that
drives the size, the estimate and the limit. Stacks deeper than two layers are extrapolated (layers 2..L are
alike), so a deep model is never built to be measured.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnbench.devices import available_bytes, resolve_device
from rnnbench.errors import ConfigError, PluginError
from rnnbench.meta_sizes import meta_model, hidden_size_for_budget, parameter_count
from rnnbench.model import uses_fused

FLOAT32 = 4
OPTIMISER_STATES = {"adam": 2, "adamw": 2, "rmsprop": 1, "sgd": 0}
"""Buffers per parameter (``momentum > 0`` adds one for SGD and RMSprop)."""
BACKWARD_FACTOR = 2.0
FUSED_ELMAN_FACTOR = {mode: {"cuda": 8.0, "cpu": 5.0} for mode in ("RNN_TANH", "RNN_RELU")}
"""torch's fused Elman kernel (cuDNN, oneDNN) keeps far more per step than the step loop: a training step of
``nn.RNN`` at T=2000, B=512, H=256 peaked at 8.3x the loop's estimate on an H200 and 4.8x on a CPU (GRU and
LSTM kernels stay within 0.6-1.1x)."""
_PROBE_LENGTHS = (2, 4)
_PROBE_BATCHES = (97, 89, 83, 79, 73, 71, 67, 61, 59, 53)


@dataclass(frozen=True)
class Sizes:
    """What the estimate depends on, taken from a config (:meth:`from_config`); :func:`check_fits` varies one
    at a time to find the key that drives the size."""

    batch_size: int
    seeds: int
    hidden_size: int
    param_budget: int | None
    num_layers: int
    bidirectional: bool
    dropout: float
    fused: bool
    optimiser_states: int
    diagnostics_batch: int | None
    """None when diagnostics are off."""
    device_type: str = "cpu"
    evaluation: tuple[int, int, int] | None = None
    """(sequences per chunk, sequence length, dependency length) of the longest test-length evaluation."""

    @classmethod
    def from_config(cls, cfg: Any) -> Sizes:
        optim = cfg.optim
        states = OPTIMISER_STATES.get(str(optim.name), 2) + (1 if optim.name in ("sgd", "rmsprop") and optim.momentum else 0)
        diag = cfg.get("diagnostics")
        diag_batch = None
        if diag is not None and diag.get("enabled", False):  # one member measured at a time
            diag_batch = int(diag.get("batch_size", 32))
        return cls(
            batch_size=int(cfg.trainer.batch_size), seeds=int(cfg.trainer.get("seeds", 1) or 1),
            hidden_size=int(cfg.model.hidden_size), param_budget=cfg.model.param_budget,
            num_layers=int(cfg.model.num_layers), bidirectional=bool(cfg.model.bidirectional),
            dropout=float(cfg.model.dropout), fused=bool(cfg.model.fused), optimiser_states=states,
            diagnostics_batch=diag_batch, device_type=_device_type(str(cfg.trainer.device)),
        )


def _device_type(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


@dataclass
class Estimate:
    """Bytes a run needs, by part; ``total`` is ``inf`` when the sizes cannot even be represented."""

    total: float
    parts: dict[str, float] = field(default_factory=dict)
    hidden_size: int = 0
    num_parameters: int = 0

    def describe(self) -> str:
        if not math.isfinite(self.total):
            return "more memory than can be counted (sizes beyond what torch can represent)"
        parts = ", ".join(f"{name} {human(b)}" for name, b in sorted(self.parts.items(), key=lambda kv: -kv[1]) if b)
        return f"about {human(self.total)}" + (f" ({parts})" if parts else "")


def human(n: float) -> str:
    """``n`` bytes, readable: ``12.3 GB``."""
    if not math.isfinite(n):
        return "more than can be counted"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


# --- activations ------------------------------------------------------------------------------------------------


def _saved_bytes(model: torch.nn.Module, batch: int, length: int, input_size: int) -> int:
    """Bytes of the batch-sized tensors autograd saves for the backward pass of one forward on the meta device."""
    seen: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if batch in tuple(t.shape) and id(t) not in seen:
            seen[id(t)] = t
        return t

    with torch.device("meta"):
        x = torch.empty(batch, length, input_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.random.fork_rng(devices=[]):
        model.train()
        model(x)
    return sum(t.numel() * t.element_size() for t in seen.values())


def _per_sample(cell_spec: Any, cell_kwargs: dict[str, Any], task: Any, hidden: int, layers: int,
                bidirectional: bool, dropout: float, fused: bool) -> tuple[float, float]:
    """Saved bytes per sequence as ``(per step, constant)``, for ``layers`` layers (extrapolated beyond 2)."""
    def measure(n_layers: int) -> tuple[float, float]:
        model = meta_model(cell_spec, cell_kwargs, task, hidden, n_layers, bidirectional,
                            dropout if n_layers > 1 else 0.0, fused)
        dims = {int(d) for p in model.parameters() for d in p.shape} | {int(task.input_size), int(task.output_size)}
        batch = next(b for b in _PROBE_BATCHES if b not in dims)
        short, long = (_saved_bytes(model, batch, n, int(task.input_size)) / batch for n in _PROBE_LENGTHS)
        step = (long - short) / (_PROBE_LENGTHS[1] - _PROBE_LENGTHS[0])
        return step, max(0.0, short - step * _PROBE_LENGTHS[0])

    if layers <= 2:
        return measure(layers)
    (s1, c1), (s2, c2) = measure(1), measure(2)
    return s2 + (layers - 2) * (s2 - s1), c2 + (layers - 2) * (c2 - c1)


def _builds(cell_spec: Any, cell_kwargs: dict[str, Any]) -> bool:
    """Whether the cell's constructor accepts its config (on the meta device, at a tiny size)."""
    try:
        with torch.device("meta"):
            cell_spec.cell(2, 2, **cell_kwargs)
    except TypeError:
        return False
    except Exception:  # noqa: BLE001
        return True
    return True


def _unknown(sizes: Sizes, task: Any, cell_spec: Any, cell_kwargs: dict[str, Any]) -> Estimate:
    """A cell the meta device cannot run: no estimate (the check passes); the budget's hidden size is found the
    old way, on real (small) models."""
    hidden = sizes.hidden_size
    if sizes.param_budget is not None:
        from rnnbench.model import hidden_size_for_budget as real_search

        hidden = real_search(cell_spec, cell_kwargs, task, sizes.param_budget, num_layers=sizes.num_layers,
                             bidirectional=sizes.bidirectional, dropout=sizes.dropout)
    return Estimate(math.nan, {}, hidden_size=hidden)


# --- the estimate -----------------------------------------------------------------------------------------------


def _meta_works(cell_spec: Any, cell_kwargs: dict[str, Any], readout: str) -> bool:
    """Whether the cell can be built and run on the meta device at all (at a tiny size)."""
    from types import SimpleNamespace

    tiny = SimpleNamespace(input_size=2, output_size=2, readout=readout)
    try:
        _per_sample(cell_spec, cell_kwargs, tiny, 2, 1, False, 0.0, False)
    except Exception:  # noqa: BLE001
        return False
    return True


def _estimate(sizes: Sizes, task: Any, cell_spec: Any, cell_kwargs: dict[str, Any]) -> Estimate:
    model_kwargs = dict(num_layers=sizes.num_layers, bidirectional=sizes.bidirectional, dropout=sizes.dropout)
    fused = uses_fused(cell_spec, sizes.fused, sizes.device_type)
    try:
        hidden = sizes.hidden_size
        if sizes.param_budget is not None:
            hidden = hidden_size_for_budget(cell_spec, cell_kwargs, task, sizes.param_budget, **model_kwargs)
        params = parameter_count(cell_spec, cell_kwargs, task, hidden, **model_kwargs)
        step, const = _per_sample(cell_spec, cell_kwargs, task, hidden, sizes.num_layers, sizes.bidirectional,
                                  sizes.dropout, fused)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        if _meta_works(cell_spec, cell_kwargs, str(getattr(task, "readout", "last"))):
            return Estimate(math.inf, {"model": math.inf})  # sizes that torch cannot even represent
        if isinstance(exc, TypeError) and not _builds(cell_spec, cell_kwargs):
            raise PluginError(
                f"cell {cell_spec.name!r} could not be built with its config: {type(exc).__name__}: {exc}"
            ) from exc
        return _unknown(sizes, task, cell_spec, cell_kwargs)
    members = sizes.seeds
    length = int(task.sequence_length)
    batch = sizes.batch_size * members
    directions = 2 if sizes.bidirectional else 1
    parts: dict[str, float] = {}
    parts["parameters and optimiser state"] = float(params) * FLOAT32 * (2 + sizes.optimiser_states) * members
    # x2: the backward pass holds gradients of the same size while it walks back through time (measured on CPU:
    # the peak of a training step is 1.9-2.4x the saved tensors for the RNN, GRU and LSTM loops and fused GRU)
    activations = BACKWARD_FACTOR * batch * (step * length + const)
    if fused and getattr(cell_spec, "fused", None) in FUSED_ELMAN_FACTOR:
        activations *= FUSED_ELMAN_FACTOR[cell_spec.fused].get(sizes.device_type, 1.0)
    if getattr(task, "readout", "last") == "sequence":
        activations += 2.0 * batch * length * int(task.output_size) * FLOAT32  # logits and log-softmax
    parts["activations for backpropagation through time"] = activations
    parts["data batch"] = float(batch) * length * (2 * int(task.input_size) * FLOAT32 + 17)
    if sizes.evaluation is not None:
        chunk, eval_length, test_length = sizes.evaluation
        # no gradients: each layer's outputs (and the one-hot inputs, the logits of a per-step readout) for the
        # whole chunk, and its data; held after training's activations were freed, so the larger of the two counts
        per_step = 2 * hidden * directions * sizes.num_layers + 2 * int(task.input_size)
        if getattr(task, "readout", "last") == "sequence":
            per_step += 2 * int(task.output_size)
        evaluation = float(chunk) * eval_length * (per_step * FLOAT32 + 17)
        training = parts["activations for backpropagation through time"] + parts["data batch"]
        if evaluation > training:
            del parts["activations for backpropagation through time"], parts["data batch"]
            parts[f"evaluation at test length {test_length} (no gradients)"] = evaluation
    if sizes.diagnostics_batch is not None:
        d = sizes.diagnostics_batch
        parts["diagnostics (float64)"] = (
            2.0 * d * (step * length + const)  # the float64 copy's saved tensors
            + 8.0 * d * length * hidden * directions  # dL/dh_t for every step
            + 3.0 * 8 * params  # the copy, its gradients and the head
            + d * length * (int(task.input_size) + 2) * 8.0
        )
    return Estimate(sum(parts.values()), parts, hidden_size=hidden, num_parameters=params)


def estimate_bytes(cfg: Any, task: Any, cell_spec: Any, cell_kwargs: dict[str, Any]) -> Estimate:
    """The memory a run of ``cfg`` needs (see the module docstring); allocates nothing.

    ``task`` is the built task, ``cell_spec`` the registry's spec and ``cell_kwargs`` the cell's constructor
    arguments (``config.constructor_kwargs(cfg.cell)``). With ``model.param_budget`` the hidden size is found
    on the meta device; it is returned as ``Estimate.hidden_size``."""
    return _estimate(Sizes.from_config(cfg), task, cell_spec, cell_kwargs)


# --- the check --------------------------------------------------------------------------------------------------


def _defaults(schema: Any) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(schema) if f.default is not dataclasses.MISSING}


def _candidates(cfg: Any, sizes: Sizes, task_spec: Any, cell_spec: Any, task_kwargs: dict[str, Any],
                cell_kwargs: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, value, smaller value)`` of every setting that could make a run too big."""
    from rnnbench.config import ModelConfig, TrainerConfig

    trainer, model = _defaults(TrainerConfig), _defaults(ModelConfig)
    out: list[tuple[str, Any, Any]] = [
        ("trainer.batch_size", sizes.batch_size, trainer.get("batch_size", 64)),
        ("trainer.seeds", sizes.seeds, 1),
        ("model.num_layers", sizes.num_layers, 1),
    ]
    if sizes.param_budget is not None:
        out.append(("model.param_budget", sizes.param_budget, 10_000))
    else:
        out.append(("model.hidden_size", sizes.hidden_size, model.get("hidden_size", 64)))
    if sizes.diagnostics_batch is not None:
        out.append(("diagnostics.batch_size", sizes.diagnostics_batch, 32))
    for prefix, spec, kwargs in (("task", task_spec, task_kwargs), ("cell", cell_spec, cell_kwargs)):
        if spec is None:
            continue
        for key, default in _defaults(spec.config).items():
            value = kwargs.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and isinstance(default, int):
                out.append((f"{prefix}.{key}", value, default))
    return [(k, v, small) for k, v, small in out if isinstance(v, int) and isinstance(small, int) and v > small]


def _smaller(key: str, small: Any, sizes: Sizes, task: Any, task_spec: Any, task_kwargs: dict[str, Any],
             cell_spec: Any, cell_kwargs: dict[str, Any]) -> Estimate:
    group, _, name = key.partition(".")
    if group == "task":
        task = task_spec.task(**dict(task_kwargs, **{name: small}))
    elif group == "cell":
        cell_kwargs = dict(cell_kwargs, **{name: small})
    else:
        field_name = {"trainer.batch_size": "batch_size", "trainer.seeds": "seeds", "model.num_layers": "num_layers",
                      "model.param_budget": "param_budget", "model.hidden_size": "hidden_size",
                      "diagnostics.batch_size": "diagnostics_batch"}[key]
        sizes = dataclasses.replace(sizes, **{field_name: small})
    return _estimate(sizes, task, cell_spec, cell_kwargs)


def check_fits(cfg: Any, task: Any, cell_spec: Any, cell_kwargs: dict[str, Any], device: torch.device | None = None,
               available: int | None = None, task_spec: Any = None, lengths: Any = None) -> Estimate:
    """Refuse a run that cannot fit in memory, before anything is allocated; returns the estimate (whose
    ``hidden_size`` is the hidden size to build: ``model.param_budget`` resolved).

    With ``lengths`` (:class:`rnnbench.lengths.Lengths`) training is estimated at the longest training length
    (``task.train_length``), and the evaluation at the longest test length (``task.test_lengths``) counts when it
    needs more than training.

    The :class:`ConfigError` names the key that drives the size (found by trying each size-setting key at its
    default: ``trainer.batch_size``, ``trainer.seeds``, ``model.hidden_size`` / ``model.param_budget``,
    ``model.num_layers``, ``diagnostics.batch_size``, and every integer of the task's and the cell's config), the
    estimate and the memory available. ``available`` overrides the measured free memory (tests)."""
    sizes = Sizes.from_config(cfg)
    if lengths is not None and lengths.active:
        task = lengths.longest_training_task
        longest = lengths.longest_test_task
        if longest is not None:
            chunk = lengths.chunk_at(longest.dependency_length, max(1, min(4 * sizes.batch_size,
                                                                         int(cfg.trainer.final_eval_sequences))))
            sizes = dataclasses.replace(sizes, evaluation=(chunk, int(longest.sequence_length),
                                                           int(longest.dependency_length)))
    estimate = _estimate(sizes, task, cell_spec, cell_kwargs)
    device = device if device is not None else resolve_device(str(cfg.trainer.device))
    limit = available if available is not None else available_bytes(device)
    if limit is None or math.isnan(estimate.total) or estimate.total <= limit:
        return estimate
    if task_spec is None:
        from rnnbench.manager import get_registry

        task_spec = get_registry().tasks.get(str(cfg.task.name))
    from rnnbench.config import constructor_kwargs

    task_kwargs = constructor_kwargs(cfg.task)
    tried: list[tuple[float, str, Any]] = []
    for key, value, small in _candidates(cfg, sizes, task_spec, cell_spec, task_kwargs, cell_kwargs):
        try:
            smaller = _smaller(key, small, sizes, task, task_spec, task_kwargs, cell_spec, cell_kwargs)
        except Exception:  # noqa: BLE001 - that value is not valid with the others: not a candidate
            continue
        if smaller.total < estimate.total:
            tried.append((smaller.total, key, value))
    tried.sort(key=lambda t: t[0])
    if tried:
        key, value = tried[0][1], tried[0][2]
        also = [k for total, k, _ in tried[1:] if total <= limit or total * 2 < estimate.total]
    else:
        biggest = max(estimate.parts.items(), key=lambda kv: kv[1])[0] if estimate.parts else "model"
        key = ("diagnostics.batch_size" if biggest.startswith("diagnostics") else
               "model.param_budget" if sizes.param_budget is not None and biggest.startswith(("parameters", "model"))
               else "model.hidden_size" if biggest.startswith(("parameters", "model")) else "trainer.batch_size")
        value = {"diagnostics.batch_size": sizes.diagnostics_batch, "model.param_budget": sizes.param_budget,
                 "model.hidden_size": sizes.hidden_size, "trainer.batch_size": sizes.batch_size}[key]
        also = []
    lower = " or ".join([key, *also[:2]])
    raise ConfigError(
        key, value,
        f"a size that fits in memory: this run needs {estimate.describe()}, but {device} has {human(limit)} "
        f"available; lower {lower}"
    )
