"""Vanilla (Elman) recurrent cells."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, RecurrentCell, hookimpl


@dataclass
class RNNConfig(CellConfig):
    pass


class RNNCell(RecurrentCell):
    r"""Elman RNN step (Elman 1990), torch's ``nn.RNNCell`` formulation.

    .. math:: h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

    Shapes: ``weight_ih`` (H, I), ``weight_hh`` (H, H), biases (H,); ``x`` (B, I), ``h`` (B, H).
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh") -> None:
        super().__init__(input_size, hidden_size)
        self.activation = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = self.activation(torch.addmm(self.bias_ih, x, self.weight_ih.t()) + torch.addmm(self.bias_hh, h, self.weight_hh.t()))
        return h, h


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="rnn_tanh",
            cell=lambda i, h: RNNCell(i, h, "tanh"),
            config=RNNConfig,
            fused="RNN_TANH",
            description="Elman RNN with tanh",
            source="Elman 1990",
        )
    )
