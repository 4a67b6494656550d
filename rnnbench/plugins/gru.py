"""Gated recurrent units: torch's formulation and Cho et al.'s original."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, RecurrentCell, hookimpl, kernels
from rnnbench.init import recurrent_init_, uniform_default_


@dataclass
class GRUConfig(CellConfig):
    recurrent_init: str = "default"
    """Init of each (H, H) gate block of ``weight_hh``: default (torch's uniform), orthogonal or identity."""


class GRUCell(RecurrentCell):
    r"""GRU, torch's ``nn.GRUCell`` formulation: the reset gate acts AFTER the recurrent matmul.

    .. math::
        r &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n &= \tanh(W_{in} x_t + b_{in} + r \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}

    Shapes: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` and ``bias_hh`` (3H,), gate order r, z, n
    (torch's); state ``h`` (B, H). This is also cuDNN's GRU. Cho et al. 2014 applied r to h BEFORE the matmul:
    see :class:`GRUCho2014Cell` (``gru_cho2014``).
    """

    def __init__(self, input_size: int, hidden_size: int, recurrent_init: str = "default") -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        uniform_default_(self.parameters(), hidden_size)
        recurrent_init_(self.weight_hh, 3, recurrent_init)

    def _step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(h_t, r, z)``."""
        xr, xz, xn = torch.addmm(self.bias_ih, x, self.weight_ih.t()).chunk(3, dim=1)  # 3 x (B, H)
        hr, hz, hn = torch.addmm(self.bias_hh, h, self.weight_hh.t()).chunk(3, dim=1)  # 3 x (B, H)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(torch.addcmul(xn, r, hn))
        return n + z * (h - n), r, z  # (1 - z) * n + z * h

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = self._step(x, h)[0]
        return h, h

    def gate_activations(self, x: Tensor, state: Tensor) -> dict[str, Tensor]:
        """The ``reset`` and ``update`` gates of the step from ``state`` on ``x``, after the sigmoid."""
        _, r, z = self._step(x, state)
        return {"reset": r, "update": z}

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        xp = kernels.input_projection(x, params["weight_ih"], params["bias_ih"])
        return kernels.gru(xp, params["weight_hh"], params["bias_hh"], reverse)


class GRUCho2014Cell(GRUCell):
    r"""GRU as first published (Cho et al. 2014, Sec. 2.3): the reset gate acts on h BEFORE the recurrent matmul.

    .. math::
        r &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n &= \tanh(W_{in} x_t + b_{in} + W_{hn} (r \odot h_{t-1}) + b_{hn}) \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}

    The only difference from ``gru`` (torch, cuDNN) is where r enters n: here r * h feeds the matmul, there r
    scales the matmul's output (including b_hn). Same parameters, shapes and gate order r, z, n; no fused kernel.
    """

    def _step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        H = self.hidden_size
        w_hrz, w_hn = self.weight_hh.split([2 * H, H], dim=0)  # (2H, H), (H, H)
        b_hrz, b_hn = self.bias_hh.split([2 * H, H], dim=0)
        xr, xz, xn = torch.addmm(self.bias_ih, x, self.weight_ih.t()).chunk(3, dim=1)  # 3 x (B, H)
        hr, hz = torch.addmm(b_hrz, h, w_hrz.t()).chunk(2, dim=1)  # 2 x (B, H)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + torch.addmm(b_hn, r * h, w_hn.t()))
        return n + z * (h - n), r, z

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        xp = kernels.input_projection(x, params["weight_ih"], params["bias_ih"] + params["bias_hh"])
        w_rz, w_n = params["weight_hh"].split([2 * self.hidden_size, self.hidden_size], dim=1)
        return kernels.gru_cho(xp, w_rz, w_n, reverse)


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="gru",
            cell=GRUCell,
            config=GRUConfig,
            fused="GRU",
            description="GRU, torch's nn.GRU: reset gate applied after the recurrent matmul",
            source="Cho et al. 2014; torch/cuDNN formulation",
        )
    )
    register(
        CellSpec(
            name="gru_cho2014",
            cell=GRUCho2014Cell,
            config=GRUConfig,
            description="GRU as in Cho et al. 2014: reset gate applied to h before the recurrent matmul",
            source="Cho, van Merriënboer, Gulcehre, Bahdanau, Bougares, Schwenk & Bengio 2014",
        )
    )
