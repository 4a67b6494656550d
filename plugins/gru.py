"""Gated recurrent units."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, RecurrentCell, hookimpl


@dataclass
class GRUConfig(CellConfig):
    pass


class GRUCell(RecurrentCell):
    r"""GRU, torch's ``nn.GRUCell`` formulation: the reset gate acts after the recurrent matmul.

    .. math::
        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}

    Shapes: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), gate order r, z, n (torch's). Cho et al. 2014
    originally applied r to h before the matmul: see ``gru_cho2014``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        xr, xz, xn = torch.addmm(self.bias_ih, x, self.weight_ih.t()).chunk(3, dim=1)
        hr, hz, hn = torch.addmm(self.bias_hh, h, self.weight_hh.t()).chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = n + z * (h - n)  # (1 - z) * n + z * h
        return h, h


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="gru",
            cell=GRUCell,
            config=GRUConfig,
            fused="GRU",
            description="GRU (torch's nn.GRU: reset after the recurrent matmul)",
            source="Cho et al. 2014; torch formulation",
        )
    )
