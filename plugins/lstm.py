"""The LSTM family."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, RecurrentCell, hookimpl
from rnnbench.base import State


@dataclass
class LSTMConfig(CellConfig):
    forget_bias: float = 1.0
    """Effective forget-gate bias at initialisation (b_ih + b_hh of the f gate); Jozefowicz et al. 2015."""


class LSTMCell(RecurrentCell):
    r"""LSTM with forget gate (Gers, Schmidhuber & Cummins 2000), torch's ``nn.LSTMCell`` formulation.

    .. math::
        i, f, g, o &= \mathrm{split}(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}) \\
        c_t &= \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) \\
        h_t &= \sigma(o) \odot \tanh(c_t)

    Shapes: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), gate order i, f, g, o (torch's); state ``(h, c)``.
    """

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():  # effective bias = b_ih + b_hh: put it all in b_ih
            self.bias_ih[hidden_size : 2 * hidden_size].fill_(forget_bias)
            self.bias_hh[hidden_size : 2 * hidden_size].zero_()

    def init_state(self, batch_size, device=None, dtype=None) -> State:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return zeros, zeros

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        gates = torch.addmm(self.bias_ih, x, self.weight_ih.t()) + torch.addmm(self.bias_hh, h, self.weight_hh.t())
        i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="lstm",
            cell=LSTMCell,
            config=LSTMConfig,
            fused="LSTM",
            description="LSTM with forget gate (torch's nn.LSTM)",
            source="Gers, Schmidhuber & Cummins 2000",
        )
    )
