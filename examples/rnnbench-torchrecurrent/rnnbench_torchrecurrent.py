"""Cells of the ``torchrecurrent`` package as rnnbench cells, through one adapter.

``torchrecurrent`` cells take ``(x, h)`` and return the new ``h`` (single state), or take ``(x, (h, c))`` and
return ``(h, c)`` (double state). rnnbench's contract is ``forward(x, state) -> (h, new_state)`` with
``init_state`` giving the zero state, which the adapter provides; the cell's own weights, initialisation and
equations are untouched. Cells whose output is not their state (torchrecurrent's "decoupled" cells) are left out.
Spectral diagnostics find the wrapped ``weight_hh`` matrices by the default ``recurrent_weights()`` probe.
"""

from __future__ import annotations

import torch
import torchrecurrent as tr
from torch import Tensor

from rnnbench import CellSpec, RecurrentCell, State, hookimpl

# rnnbench name -> (torchrecurrent cell class, description, source)
CELLS = {
    "tr_janet": (tr.JANETCell, "JANET: forget gate only, h = c (torchrecurrent)", "van der Westhuizen & Lasenby 2018"),
    "tr_mgu": (tr.MGUCell, "minimal gated unit (torchrecurrent)", "Zhou et al. 2016"),
    "tr_ugrnn": (tr.UGRNNCell, "update-gate RNN (torchrecurrent)", "Collins et al. 2017"),
    "tr_minimalrnn": (tr.MinimalRNNCell, "MinimalRNN (torchrecurrent)", "Chen 2017"),
    "tr_ran": (tr.RANCell, "recurrent additive network (torchrecurrent)", "Lee et al. 2017"),
    "tr_atr": (tr.ATRCell, "addition-subtraction twin-gated RNN (torchrecurrent)", "Zhang et al. 2018"),
    "tr_ligru": (tr.LiGRUCell, "light GRU: no reset gate, ReLU candidate (torchrecurrent)", "Ravanelli et al. 2018"),
}


class TorchRecurrentCell(RecurrentCell):
    """Adapter: ``wrapped`` (a torchrecurrent cell class) as an rnnbench cell. Shapes: ``x`` (B, I), ``h`` (B, H);
    the state is ``h``, or ``(h, c)`` for a double-state cell."""

    wrapped: type

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.inner = self.wrapped(input_size, hidden_size)
        self.two_states = bool(self.inner.uses_double_state())

    def init_state(self, batch_size: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> State:
        h = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (h, torch.zeros_like(h)) if self.two_states else h

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if self.two_states:
            h, c = self.inner(x, state)
            return h, (h, c)
        h = self.inner(x, state)
        return h, h


def adapter(cls: type) -> type:
    """A :class:`TorchRecurrentCell` subclass for one torchrecurrent cell class."""
    return type(f"TR_{cls.__name__}", (TorchRecurrentCell,), {"wrapped": cls, "__doc__": cls.__doc__})


@hookimpl
def register_cells(register) -> None:
    for name, (cls, description, source) in CELLS.items():
        register(CellSpec(name=name, cell=adapter(cls), description=description, source=source))
