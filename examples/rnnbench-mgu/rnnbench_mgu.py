"""The minimal gated unit (Zhou, Wu, Zhang & Zhou 2016) as an rnnbench cell plugin."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, RecurrentCell, hookimpl


@dataclass
class MGUConfig(CellConfig):
    forget_bias: float = 1.0  # becomes `cell.forget_bias=...` on the command line


class MGUCell(RecurrentCell):
    r"""Minimal gated unit: one forget gate. Shapes: ``x`` (B, I), ``h`` (B, H).

    .. math::
        f_t &= \sigma(W_f [x_t, h_{t-1}] + b_f) \\
        \tilde h_t &= \tanh(W_h [x_t, f_t \odot h_{t-1}] + b_h) \\
        h_t &= (1 - f_t) \odot h_{t-1} + f_t \odot \tilde h_t
    """

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0) -> None:
        super().__init__(input_size, hidden_size)
        self.forget = nn.Linear(input_size + hidden_size, hidden_size)
        self.candidate = nn.Linear(input_size + hidden_size, hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        nn.init.constant_(self.forget.bias, forget_bias)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One time step: (x_t, state) -> (h_t, new state)."""
        f = self.gate_activations(x, h)["forget"]
        candidate = torch.tanh(self.candidate(torch.cat([x, f * h], dim=-1)))
        h = (1 - f) * h + f * candidate
        return h, h

    def gate_activations(self, x: Tensor, h: Tensor) -> dict[str, Tensor]:
        """The forget gate, for the gate-saturation diagnostics."""
        return {"forget": torch.sigmoid(self.forget(torch.cat([x, h], dim=-1)))}


@hookimpl
def register_cells(register) -> None:
    register(CellSpec(name="mgu", cell=MGUCell, config=MGUConfig, description="minimal gated unit",
                      source="Zhou et al. 2016"))
