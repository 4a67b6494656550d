"""Contract kits for plugin authors: call them from your own tests.

::

    from rnnbench.testing import check_cell, check_task

    def test_my_cell():
        check_cell(MyCell)                # a factory (input_size, hidden_size) -> RecurrentCell, or a CellSpec

    def test_my_task():
        check_task(MyTask(dependency_length=20))   # a Task, or a TaskSpec

Each raises ``AssertionError`` with a message that names the cell or task and says what broke.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnbench.base import Batch, RecurrentCell, State, Task
from rnnbench.layers import FusedEncoder, LoopEncoder, unroll
from rnnbench.registry import CellSpec, TaskSpec

CellFactory = Callable[[int, int], RecurrentCell]


class _Check:
    def __init__(self, kind: str, name: str) -> None:
        self.prefix = f"{kind} {name!r}"

    def fail(self, message: str) -> None:
        raise AssertionError(f"{self.prefix}: {message}")

    def that(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)


def config_defaults(config: type) -> dict[str, Any]:
    """The default values of a cell or task config dataclass, ``name`` (and a task's length generalisation fields,
    which the framework uses) excluded: the constructor's kwargs."""
    from rnnbench.base import FRAMEWORK_TASK_FIELDS

    values: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.name in FRAMEWORK_TASK_FIELDS:
            continue
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def _factory_name(factory: Callable[..., Any]) -> str:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return getattr(factory, "__qualname__", None) or repr(factory)


def _flatten(state: State) -> list[Tensor]:
    return [state] if isinstance(state, Tensor) else list(state)


def _describe(state: object) -> str:
    if isinstance(state, Tensor):
        return f"Tensor{tuple(state.shape)}"
    if isinstance(state, tuple):
        return "(" + ", ".join(_describe(s) for s in state) + ")"
    return type(state).__name__


def _run(cell: RecurrentCell, x: Tensor) -> tuple[Tensor, State]:
    outputs, state = unroll(cell, x)
    return torch.stack(outputs, dim=1), state  # (B, T, H)


def check_cell(
    cell: CellFactory | CellSpec,
    input_size: int = 3,
    hidden_size: int = 5,
    *,
    name: str | None = None,
    cell_kwargs: dict[str, Any] | None = None,
    steps: int = 200,
) -> None:
    """Check the :class:`~rnnbench.RecurrentCell` contract.

    :param cell: a factory ``(input_size, hidden_size) -> RecurrentCell`` (e.g. the class), or a
        :class:`~rnnbench.CellSpec`, built with its config's defaults updated by ``cell_kwargs``.
    :param steps: length of the sequence that must stay finite in forward and backward.

    Checks: construction and sizes; ``init_state`` types and shapes; one step returns ``h_t`` (B, H) and a state
    of the same structure as ``init_state`` (it round-trips through the next step); batch rows do not interact;
    float64 works; gradients reach every parameter; no NaN/Inf over ``steps`` steps; ``state_dict`` round trip;
    seeded determinism; wrapped by :class:`~rnnbench.layers.LoopEncoder` stacked (2 layers) and bidirectional;
    ``gate_activations`` (if defined) in [0, 1]; for a spec with ``fused``: the fused kernel equals the loop.
    The caller's global RNG state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        _check_cell(cell, input_size, hidden_size, name, cell_kwargs, steps)


def _check_cell(
    cell: CellFactory | CellSpec,
    input_size: int,
    hidden_size: int,
    name: str | None,
    cell_kwargs: dict[str, Any] | None,
    steps: int,
) -> None:
    spec = cell if isinstance(cell, CellSpec) else None
    if spec is not None:
        kwargs = {**config_defaults(spec.config), **(cell_kwargs or {})}

        def make(i: int, h: int) -> RecurrentCell:
            return spec.cell(i, h, **kwargs)

        label = name or spec.name
    else:
        factory = cell
        make = (lambda i, h: factory(i, h, **cell_kwargs)) if cell_kwargs else factory  # type: ignore[misc]
        label = name or _factory_name(factory)
    check = _Check("cell", label)
    I, H, B, T = input_size, hidden_size, 4, 6
    g = torch.Generator().manual_seed(1234)

    # construction
    try:
        c = make(I, H)
    except Exception as exc:
        check.fail(f"constructing it with (input_size={I}, hidden_size={H}) raised {type(exc).__name__}: {exc}")
    check.that(isinstance(c, RecurrentCell), f"the factory returned {type(c).__name__}, not a RecurrentCell")
    check.that(c.input_size == I and c.hidden_size == H,
               f"input_size, hidden_size = {c.input_size}, {c.hidden_size}; constructed with {I}, {H}")
    params = dict(c.named_parameters())
    check.that(len(params) > 0, "has no parameters")
    c = c.double()

    # state handling
    state0 = c.init_state(B, device=torch.device("cpu"), dtype=torch.float64)
    check.that(isinstance(state0, Tensor) or (isinstance(state0, tuple) and len(state0) > 0
                                              and all(isinstance(s, Tensor) for s in state0)),
               f"init_state returned {_describe(state0)}; expected a Tensor or a tuple of Tensors")
    for k, s in enumerate(_flatten(state0)):
        check.that(s.dtype == torch.float64, f"init_state(dtype=float64) part {k} has dtype {s.dtype}")
        check.that(s.dim() >= 1 and s.shape[0] == B, f"init_state({B}) part {k} has shape {tuple(s.shape)}; "
                   f"the first dimension must be the batch ({B})")
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64)
    try:
        out = c(x[:, 0], state0)
    except Exception as exc:
        check.fail(f"forward(x_t of shape {(B, I)}, init_state({B})) raised {type(exc).__name__}: {exc}")
    check.that(isinstance(out, tuple) and len(out) == 2,
               f"forward returned {_describe(out)}; expected a pair (h_t, new_state)")
    h1, state1 = out
    check.that(isinstance(h1, Tensor) and tuple(h1.shape) == (B, H),
               f"forward returned h_t {_describe(h1)}; expected (B, H) = {(B, H)}")
    check.that(h1.dtype == torch.float64, f"forward on float64 input returned h_t of dtype {h1.dtype}")
    check.that(type(state1) is type(state0) and len(_flatten(state1)) == len(_flatten(state0))
               and all(a.shape == b.shape for a, b in zip(_flatten(state1), _flatten(state0))),
               f"forward returned state {_describe(state1)}; init_state gives {_describe(state0)} (they must match)")
    try:
        outputs, final = _run(c, x)
    except Exception as exc:
        check.fail(f"feeding a returned state back into forward raised {type(exc).__name__}: {exc}")

    # batch rows are independent
    alone, _ = _run(c, x[1:2])
    check.that(torch.allclose(alone, outputs[1:2], rtol=1e-9, atol=1e-12),
               "batch rows interact: row 1 run alone differs from row 1 in a batch of 4")

    # gradients reach every parameter
    c.zero_grad()
    upstream = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    (outputs * upstream).sum().backward()
    missing = [n for n, p in c.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    check.that(not missing, f"no gradient reaches parameter(s) {', '.join(missing)} over {T} steps")

    # gate activations for diagnostics
    gates = c.gate_activations(x[:, 1], state1)  # declared on RecurrentCell: {} for a cell without gates
    check.that(isinstance(gates, dict) and all(isinstance(v, Tensor) for v in gates.values()),
               f"gate_activations returned {type(gates).__name__}; expected dict[str, Tensor]")
    for gname, v in gates.items():
        check.that(tuple(v.shape) == (B, H), f"gate_activations[{gname!r}] has shape {tuple(v.shape)}; "
                   f"expected {(B, H)}")
        check.that(bool(((v >= 0) & (v <= 1)).all()), f"gate_activations[{gname!r}] leaves [0, 1]")

    # recurrent weights are parameters of the cell
    rec = c.recurrent_weights()
    check.that(isinstance(rec, dict) and all(isinstance(v, Tensor) for v in rec.values()),
               f"recurrent_weights returned {type(rec).__name__}; expected dict[str, Tensor]")
    if not rec:
        warnings.warn(f"{check.prefix}: recurrent_weights() finds no parameter (the default looks for names "
                      "starting with 'weight_hh', then for parameters that only the previous state reaches): its runs will have no diag/sigma_max or diag/spectral_radius; "
                      "override recurrent_weights() to return the matrices applied to the previous state",
                      stacklevel=2)

    # a long sequence stays finite (default dtype, default init)
    torch.manual_seed(0)
    c32 = make(I, H)
    long_x = torch.randn(2, steps, I, generator=g)
    long_out, _ = _run(c32, long_x)
    check.that(bool(torch.isfinite(long_out).all()), f"outputs are NaN or Inf on a {steps}-step sequence")
    long_out.sum().backward()
    bad = [n for n, p in c32.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    check.that(not bad, f"gradients of {', '.join(bad)} are NaN or Inf on a {steps}-step sequence")

    # state_dict round trip and seeded determinism
    torch.manual_seed(7)
    first = make(I, H)
    torch.manual_seed(7)
    second = make(I, H)
    differ = [n for n, v in first.state_dict().items() if not torch.equal(v, second.state_dict()[n])]
    check.that(not differ, f"two cells built after torch.manual_seed(7) differ in {', '.join(differ)}")
    torch.manual_seed(8)
    third = make(I, H)
    third.load_state_dict(first.state_dict())
    xs = x[:, :3].float()
    torch.manual_seed(9)
    a = _run(first, xs)[0]
    torch.manual_seed(9)
    b = _run(second, xs)[0]
    torch.manual_seed(9)
    d = _run(third, xs)[0]
    check.that(torch.equal(a, b), "two runs with the same seed give different outputs")
    check.that(torch.equal(a, d), "a cell loaded with another's state_dict gives different outputs")

    # wrapped: stacked and bidirectional
    for layers, bidirectional in ((2, False), (1, True), (2, True)):
        what = f"LoopEncoder(num_layers={layers}, bidirectional={bidirectional})"
        try:
            enc = LoopEncoder(make, I, H, num_layers=layers, bidirectional=bidirectional).double()
            y = enc(x)
        except Exception as exc:
            check.fail(f"{what} raised {type(exc).__name__}: {exc}")
        D = 2 if bidirectional else 1
        check.that(tuple(y.shape) == (B, T, D * H), f"{what} output {tuple(y.shape)}; expected {(B, T, D * H)}")
        (y * torch.randn(y.shape, generator=g, dtype=torch.float64)).sum().backward()
        missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        check.that(not missing, f"{what}: no gradient reaches {', '.join(missing)}")

    if spec is not None and spec.fused:
        _check_fused(check, spec.fused, make, I, H, x)


def _check_fused(check: _Check, mode: str, make: CellFactory, I: int, H: int, x: Tensor) -> None:
    """A spec that declares ``fused`` must own torch's four tensors and compute torch's function."""
    gates = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}[mode]
    cell = make(I, H)
    shapes = {"weight_ih": (gates * H, I), "weight_hh": (gates * H, H), "bias_ih": (gates * H,),
              "bias_hh": (gates * H,)}
    for pname, shape in shapes.items():
        p = getattr(cell, pname, None)
        check.that(isinstance(p, Tensor) and tuple(p.shape) == shape,
                   f"declares fused={mode!r} but {pname} is {_describe(p)}; torch's layout needs {shape}")
    extra = sorted(set(dict(cell.named_parameters())) - set(shapes))
    check.that(not extra, f"declares fused={mode!r} but has parameters torch's module lacks: {', '.join(extra)}")
    loop = LoopEncoder(make, I, H, num_layers=2, bidirectional=True).double()
    fused = FusedEncoder(mode, loop).double()
    fused.load_from(loop)  # again, in float64: the first copy went through torch's float32 module
    with torch.no_grad():
        a, b = loop(x), fused(x)
    check.that(torch.allclose(a, b, rtol=1e-9, atol=1e-12),
               f"declares fused={mode!r} but the loop and torch's kernel differ by {(a - b).abs().max().item():.3g}")


def check_task(
    task: Task | TaskSpec,
    batch_size: int = 4,
    *,
    name: str | None = None,
    task_kwargs: dict[str, Any] | None = None,
) -> None:
    """Check the :class:`~rnnbench.Task` contract.

    :param task: a task, or a :class:`~rnnbench.TaskSpec` built with its config's defaults updated by
        ``task_kwargs``.

    Checks: sizes and readout; ``sample`` shapes and dtypes for the readout; data from the generator only (same
    seed, same batch, whatever the global RNG; a different seed, different data); ``loss`` a finite scalar that
    back-propagates; ``metrics`` contain ``loss`` and ``accuracy`` in [0, 1]; ``baseline`` has ``loss`` and
    ``accuracy``. The caller's global RNG state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        _check_task(task, batch_size, name, task_kwargs)


def _check_task(task: Task | TaskSpec, batch_size: int, name: str | None, task_kwargs: dict[str, Any] | None) -> None:
    if isinstance(task, TaskSpec):
        label = name or task.name
        kwargs = {**config_defaults(task.config), **(task_kwargs or {})}
        try:
            task = task.task(**kwargs)
        except Exception as exc:
            raise AssertionError(f"task {label!r}: constructing it with {kwargs} raised {type(exc).__name__}: {exc}")
    else:
        label = name or task.name or type(task).__name__
    check = _Check("task", label)
    B = batch_size

    for attr in ("input_size", "output_size", "sequence_length", "dependency_length"):
        value = getattr(task, attr, None)
        check.that(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                   f"{attr} = {value!r}; expected a positive integer")
    check.that(task.readout in ("last", "sequence"), f"readout = {task.readout!r}; expected 'last' or 'sequence'")
    I, O, T = task.input_size, task.output_size, task.sequence_length

    def sample(seed: int, global_seed: int) -> Batch:
        torch.manual_seed(global_seed)
        return task.sample(B, torch.Generator().manual_seed(seed))

    batch = sample(0, 0)
    check.that(isinstance(batch, Batch), f"sample returned {type(batch).__name__}; expected rnnbench.Batch")
    x, y = batch.x, batch.y
    # A task whose length varies per batch (e.g. adding, hochreiter1997) describes its min_sequence_length.
    shortest = int(task.describe().get("min_sequence_length", T))
    L = x.shape[1] if isinstance(x, Tensor) and x.dim() == 3 else -1
    check.that(isinstance(x, Tensor) and x.dim() == 3 and (x.shape[0], x.shape[2]) == (B, I) and shortest <= L <= T,
               f"sample x has shape {_describe(x)}; expected (B, length, input_size) = {(B, T, I)} with length in "
               f"[min_sequence_length, sequence_length] = [{shortest}, {T}]")
    check.that(x.is_floating_point(), f"sample x has dtype {x.dtype}; expected a float dtype")
    check.that(isinstance(y, Tensor) and y.dim() >= 1 and y.shape[0] == B,
               f"sample y is {_describe(y)}; the first dimension must be the batch ({B})")
    if task.readout == "sequence":
        check.that(y.dim() >= 2 and y.shape[1] == L, f"readout 'sequence' but y has shape {tuple(y.shape)}; "
                   f"expected (B, T) class indices or (B, T, O) with T = {L}, the length of x")
    if batch.mask is not None:
        check.that(batch.mask.dtype == torch.bool and tuple(batch.mask.shape) == (B, L),
                   f"mask is {batch.mask.dtype} {tuple(batch.mask.shape)}; expected bool {(B, L)}")

    again = sample(0, 12345)
    for field_name in ("x", "y", "mask"):
        a, b = getattr(batch, field_name), getattr(again, field_name)
        same = (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        check.that(same, f"sample({B}, generator seeded 0) gave different {field_name} under a different global "
                   "seed: draw every random number from the generator passed in")
    for key, value in batch.extras.items():
        check.that(key in again.extras and torch.equal(value, again.extras[key]),
                   f"sample extras[{key!r}] is not reproducible from the generator seed")
    other = sample(1, 0)
    check.that(not (torch.equal(batch.x, other.x) and torch.equal(batch.y, other.y)),
               "generators seeded 0 and 1 gave the same batch")

    shape = (B, O) if task.readout == "last" else (B, L, O)
    output = torch.randn(shape, generator=torch.Generator().manual_seed(2), requires_grad=True)
    loss = task.loss(output, batch)
    check.that(isinstance(loss, Tensor) and loss.dim() == 0, f"loss on an output of shape {shape} is "
               f"{_describe(loss)}; expected a scalar tensor")
    check.that(bool(torch.isfinite(loss)), f"loss is {loss.item()}")
    loss.backward()
    check.that(output.grad is not None and bool(torch.isfinite(output.grad).all()),
               "loss does not back-propagate a finite gradient to the model output")

    with torch.no_grad():
        metrics = task.metrics(output, batch)
    check.that(isinstance(metrics, dict) and {"loss", "accuracy"} <= set(metrics),
               f"metrics keys are {sorted(metrics) if isinstance(metrics, dict) else metrics!r}; "
               "they must include 'loss' and 'accuracy'")
    for key, value in metrics.items():
        check.that(isinstance(value, Tensor) and value.numel() == 1 and bool(torch.isfinite(value)),
                   f"metrics[{key!r}] = {value!r}; expected a finite scalar tensor")
    accuracy = float(metrics["accuracy"])
    check.that(0.0 <= accuracy <= 1.0, f"metrics['accuracy'] = {accuracy}; expected a value in [0, 1]")

    baseline = task.baseline()
    check.that(isinstance(baseline, dict) and {"loss", "accuracy"} <= set(baseline),
               f"baseline() keys are {sorted(baseline) if isinstance(baseline, dict) else baseline!r}; "
               "they must include 'loss' and 'accuracy'")
    check.that(all(isinstance(v, (int, float)) and math.isfinite(v) for v in baseline.values()),
               f"baseline() = {baseline}; expected finite numbers")
    check.that(0.0 <= baseline["accuracy"] <= 1.0, f"baseline accuracy {baseline['accuracy']} is not in [0, 1]")
    check.that(isinstance(task.describe(), dict), "describe() must return a dict")
