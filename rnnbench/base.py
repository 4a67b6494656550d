"""The two contracts every plugin implements: a recurrent cell (one time step) and a task.

Shapes are batch-first throughout: ``x`` is ``(B, T, I)``; a cell sees one step ``x_t`` of shape ``(B, I)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import torch
from omegaconf import MISSING
from torch import Tensor, nn

State = Union[Tensor, tuple[Tensor, ...]]
"""A cell's recurrent state: ``h`` of shape (B, H), or a tuple such as ``(h, c)`` for the LSTM family."""


@dataclass
class CellConfig:
    """Schema of the ``cell`` config group. Plugins subclass it to add typed hyperparameters.

    Every field except ``name`` is passed to the cell's constructor as a keyword argument.
    """

    name: str = MISSING


@dataclass
class TaskConfig:
    """Schema of the ``task`` config group. Every field except the framework's (:data:`FRAMEWORK_TASK_FIELDS`:
    ``name``, ``train_length``, ``test_lengths``) reaches the task's constructor.

    ``dependency_length`` is the x-axis of every report: the lag, in time steps, that the model must bridge.
    ``train_length`` and ``test_lengths`` are length generalisation, which the framework does for every task
    (:mod:`rnnbench.lengths`): a plugin's config inherits them and its constructor never sees them.
    """

    name: str = MISSING
    dependency_length: int = 50
    variant: str = ""
    train_length: Optional[int] = None
    """Train on every length the task accepts up to this one (a length drawn per batch); null: on
    ``dependency_length`` only. ``dependency_length`` then defaults to it and must not exceed it."""
    test_lengths: list[int] = field(default_factory=list)
    """Lengths the final evaluation also tests (ascending), each on the task built at that length."""


FRAMEWORK_TASK_FIELDS = ("name", "train_length", "test_lengths")
"""Fields of every task config that the framework uses and the task's constructor does not receive."""


class RecurrentCell(nn.Module):
    """One time step of a recurrent network: ``(x_t, state) -> (h_t, new_state)``.

    ``x_t`` is (B, input_size); ``h_t`` is (B, hidden_size), the output passed to the next layer and the readout.
    Depth (stacking) and direction (bidirectional) are framework wrappers, never a cell's concern.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Initial state; zeros of shape (B, H) unless the cell carries more (e.g. ``(h, c)``)."""
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_sequence(self, x: Tensor) -> Tensor | None:
        """Optional whole-sequence path: ``x`` (B, T, I) -> the outputs h_t of every step, (B, T, H); ``None``
        (the default) when the cell has none.

        Contract: the result equals unrolling :meth:`forward` over ``x.unbind(1)`` from
        ``init_state(B, x.device, x.dtype)`` and stacking the h_t (to floating-point rounding; in float64 to
        ~1e-10), in values and in gradients with respect to ``x`` and every parameter; batch rows stay
        independent; it must not depend on anything but ``x`` and the parameters (no state is carried in or out).
        It may compute the steps in any order (a parallel scan, a hoisted input projection followed by a loop).

        :class:`~rnnbench.layers.RecurrentLayer` uses it for training and evaluation whenever it returns a tensor
        and no per-step hook is given (the backward direction runs it on the time-reversed sequence). The step
        path, :meth:`forward`, stays the reference: :meth:`~rnnbench.layers.LoopEncoder.probe`, per-step hooks
        (gate activations) and the gradient-through-time diagnostics always run it.

        The default runs :meth:`stacked_sequence` with K = 1 (and gives None under ``torch.func.vmap``, whose
        batching rules the hand-written kernels do not have).
        """
        if torch._C._functorch.is_batchedtensor(x):
            return None
        params = {name: p.unsqueeze(0) for name, p in self.named_parameters()}
        out = self.stacked_sequence(params, x.transpose(0, 1).unsqueeze(0))
        return None if out is None else out[0].transpose(0, 1)

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor | None:
        """Optional whole-sequence path of K models of this cell's configuration at once: ``params`` the cell's
        parameters by name, each stacked to (K, *shape); ``x`` (K, T, B, I), time before batch; returns the
        outputs h_t (K, T, B, H) from the initial state, read from step T-1 down to 0 when ``reverse``; ``None``
        (the default) when the cell has none. The cell's own parameters are not used, only its structure.

        Seed-parallel training runs K seeds through it, and :meth:`forward_sequence` one model (K = 1). The
        built-in cells implement it with :mod:`rnnbench.kernels`. The contract is
        :meth:`forward_sequence`'s, for every one of the K models."""
        return None

    def gate_activations(self, x: Tensor, state: State) -> dict[str, Tensor]:
        """Optional: the post-sigmoid gate values of the step from ``state`` on ``x`` (B, I), by gate name, each
        (B, H) in [0, 1]; ``{}`` (the default) for a cell without gates. Diagnostics report each gate's
        saturation from it; it must not change the cell's state or parameters."""
        return {}

    def recurrent_weights(self) -> dict[str, Tensor]:
        """The matrices (or, for a diagonal recurrence, vectors) applied to the previous state, by name;
        diagnostics report their spectral norm and radius.

        The default returns the parameters named ``weight_hh*`` when there are any. Otherwise it finds them by
        probing one step (:func:`probe_recurrent_weights`): a parameter, or a block of its input columns, is
        recurrent when it receives a gradient from a step with a zero input and none from a step with a zero
        state; so ``nn.Linear(I + H, H)`` named ``gate`` over ``[x, h]`` gives ``gate.weight_h``, its ``[:, I:]``
        block. A cell whose recurrence this cannot see (e.g. complex or reparameterised weights) overrides it;
        when nothing is found its runs have no spectral diagnostics, and the contract kit says so."""
        named = {name: p for name, p in self.named_parameters() if name.startswith("weight_hh")}
        return named or probe_recurrent_weights(self)


def _map_state(state: State, fn) -> State:
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


def _step_gradients(cell: RecurrentCell, x: Tensor, state: State) -> dict[str, Tensor | None]:
    params = dict(cell.named_parameters())
    h, new_state = cell(x, state)
    outputs = [h, *(new_state if isinstance(new_state, tuple) else (new_state,))]
    total = sum((o.float() * torch.linspace(0.5, 1.5, o.numel(), device=o.device).view_as(o)).sum() for o in outputs)
    grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    return dict(zip(params, grads))


def probe_recurrent_weights(cell: RecurrentCell, batch_size: int = 4) -> dict[str, Tensor]:
    """The parameters (or input-column blocks of a 2-D parameter) a step applies to the previous state: those
    with a gradient from ``(x = 0, random state)`` and none from ``(random x, state = 0)``. Biases and
    parameters applied to both are excluded. Uses a private generator: the global RNG is not advanced."""
    try:
        ref = next(cell.parameters())
    except StopIteration:
        return {}
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(shape) -> Tensor:
        return (torch.rand(shape, generator=g) * 2 - 1).to(ref.device, ref.dtype)

    zero = cell.init_state(batch_size, device=ref.device, dtype=ref.dtype)
    state = _map_state(zero, lambda s: rand(s.shape))
    with torch.enable_grad():
        from_state = _step_gradients(cell, torch.zeros(batch_size, cell.input_size, device=ref.device,
                                                       dtype=ref.dtype), state)
        from_input = _step_gradients(cell, rand((batch_size, cell.input_size)), zero)
    out: dict[str, Tensor] = {}
    for name, p in cell.named_parameters():
        a, b = from_state[name], from_input[name]
        if a is None or p.dim() not in (1, 2) or not bool((a != 0).any()):
            continue
        if b is None or not bool((b != 0).any()):
            out[name] = p
        elif p.dim() == 2:
            columns = ((a != 0).any(0) & ~(b != 0).any(0)).nonzero().flatten().tolist()
            if len(columns) >= 2 and columns == list(range(columns[0], columns[-1] + 1)):
                out[f"{name}_h"] = p[:, columns[0]:columns[-1] + 1]
    return out


@dataclass
class Batch:
    """One batch of a task.

    ``x``: (B, T, I) float inputs. ``y``: targets: for a last-step readout (B, O) values or (B,) class indices;
    for a per-step readout (B, T) class indices or (B, T, O). ``mask``: optional (B, T) bool, the positions
    that are scored. A task whose length varies draws one length per batch, between the
    ``min_sequence_length`` of its :meth:`Task.describe` and its ``sequence_length``.
    """

    x: Tensor
    y: Tensor
    mask: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


class Task:
    """A synthetic long-dependency task.

    Subclasses set the sizes in ``__init__`` and implement :meth:`sample`, :meth:`loss`, :meth:`metrics` and
    :meth:`baseline`. Data are generated on the fly, vectorised, from the ``torch.Generator`` passed in (never
    the global RNG), so the same seed gives the same data in any process.
    """

    name: str = ""
    input_size: int
    output_size: int
    readout: Literal["last", "sequence"] = "last"
    dependency_length: int
    sequence_length: int

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:  # pragma: no cover - abstract
        """A fresh batch, generated on ``generator.device``."""
        raise NotImplementedError

    def loss(self, output: Tensor, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        """Scalar training loss of ``output`` (the model's readout) on ``batch``."""
        raise NotImplementedError

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """Scalar tensors; must contain ``loss`` and ``accuracy`` (the headline metric, in [0, 1])."""
        raise NotImplementedError

    def baseline(self) -> dict[str, float]:  # pragma: no cover - abstract
        """The analytic score of the best memoryless strategy: ``{"loss": ..., "accuracy": ...}``."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """Facts logged with every run beside the config, as MLflow params ``task.<key>`` (e.g. the total
        sequence length). Override it with ``super().describe() | {...}``.

        The default gives ``sequence_length`` and ``dependency_length`` only. Every built-in task adds the lag it
        asks for, which ``dependency_length`` alone does not say (its meaning differs from task to task):
        ``lag_min``, ``lag_median`` (the lower median) and ``lag_max``, integers: the distance in steps, for a
        model reading forward, from the information to the step where it is needed (last-step readout: from
        the earliest needed input to the readout; per-step readout: per scored position, from the input it
        must recall); ``lag_kind``, what "the information" is; ``lag_method``, ``"exact"`` or how the values
        were estimated (e.g. ``"monte_carlo ..."``). Each task's docstring defines its lag. These keys are
        optional for third-party tasks: a task without them runs, logs and reports as before.
        """
        return {"sequence_length": self.sequence_length, "dependency_length": self.dependency_length}
