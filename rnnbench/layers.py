"""Depth and direction for any cell: the time loop, bidirectional layers, stacks, and the fused torch path.

Every encoder maps ``x`` (B, T, I) to outputs (B, T, D*H), D = 2 if bidirectional else 1, where the last H
features of a bidirectional output belong to the backward direction (torch's layout).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from rnnbench.base import RecurrentCell, State

CellFactory = Callable[[int, int], RecurrentCell]


def unroll(cell: RecurrentCell, x: Tensor, reverse: bool = False) -> tuple[list[Tensor], State]:
    """Run ``cell`` over time; returns the per-step outputs h_t (in input order) and the final state.

    The steps come from ``x.unbind(1)``: indexing ``x[:, t]`` of a tensor that needs gradients inside the
    loop would make backward O(T^2).
    """
    state = cell.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    steps = x.unbind(1)  # T tensors of (B, I)
    outputs: list[Tensor] = []
    for x_t in reversed(steps) if reverse else steps:
        h_t, state = cell(x_t, state)
        outputs.append(h_t)
    if reverse:
        outputs.reverse()
    return outputs, state


class RecurrentLayer(nn.Module):
    """One layer: a forward cell and, if bidirectional, a second cell reading the sequence backwards."""

    def __init__(self, make_cell: CellFactory, input_size: int, hidden_size: int, bidirectional: bool) -> None:
        super().__init__()
        self.fwd = make_cell(input_size, hidden_size)
        self.bwd = make_cell(input_size, hidden_size) if bidirectional else None

    def cells(self) -> list[RecurrentCell]:
        return [self.fwd] if self.bwd is None else [self.fwd, self.bwd]

    def forward(self, x: Tensor) -> Tensor:
        out = torch.stack(unroll(self.fwd, x)[0], dim=1)  # (B, T, H)
        if self.bwd is None:
            return out
        back = torch.stack(unroll(self.bwd, x, reverse=True)[0], dim=1)  # (B, T, H)
        return torch.cat([out, back], dim=-1)  # (B, T, 2H)


class LoopEncoder(nn.Module):
    """``num_layers`` recurrent layers with dropout between them, run step by step in Python."""

    def __init__(
        self,
        make_cell: CellFactory,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        directions = 2 if bidirectional else 1
        self.hidden_size, self.num_layers, self.bidirectional = hidden_size, num_layers, bidirectional
        self.layers = nn.ModuleList(
            RecurrentLayer(make_cell, input_size if i == 0 else directions * hidden_size, hidden_size, bidirectional)
            for i in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x = layer(x)
        return x

    def cells(self) -> list[RecurrentCell]:
        """All cells, layer by layer, forward direction before backward (torch's order)."""
        return [cell for layer in self.layers for cell in layer.cells()]


_FUSED_MODULES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class FusedEncoder(nn.Module):
    """torch's fused ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (oneDNN on CPU, cuDNN on GPU) with a loop encoder's weights.

    Only for cells whose spec declares ``fused``: their math equals torch's module, so the two paths compute
    the same function (tested to float64 precision).
    """

    def __init__(self, mode: str, loop: LoopEncoder, dropout: float = 0.0) -> None:
        super().__init__()
        first = loop.cells()[0]
        kwargs = {"nonlinearity": "tanh" if mode == "RNN_TANH" else "relu"} if mode.startswith("RNN") else {}
        self.rnn = _FUSED_MODULES[mode](
            first.input_size,
            loop.hidden_size,
            num_layers=loop.num_layers,
            bidirectional=loop.bidirectional,
            dropout=dropout if loop.num_layers > 1 else 0.0,
            batch_first=True,
            **kwargs,
        ).to(device=first.weight_ih.device, dtype=first.weight_ih.dtype)
        self.load_from(loop)

    def load_from(self, loop: LoopEncoder) -> None:
        """Copy the weights of ``loop`` (same sizes) into the fused module."""
        directions = 2 if loop.bidirectional else 1
        with torch.no_grad():
            for index, cell in enumerate(loop.cells()):
                layer, direction = divmod(index, directions)
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                for name in _WEIGHT_NAMES:
                    getattr(self.rnn, name + suffix).copy_(getattr(cell, name))

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]  # (B, T, D*H)

    def recurrent_weights(self) -> dict[str, Tensor]:
        return {name: p for name, p in self.rnn.named_parameters() if name.startswith("weight_hh")}
