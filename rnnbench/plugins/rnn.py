"""Vanilla (Elman) recurrent cells: tanh, ReLU, sigmoid, and the identity-initialised ReLU RNN (IRNN)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, RecurrentCell, hookimpl
from rnnbench import ConfigError, kernels
from rnnbench.init import check_choice, recurrent_init_, uniform_default_

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


@dataclass
class RNNConfig(CellConfig):
    recurrent_init: str = "default"
    """Init of ``weight_hh``: default (torch's uniform), orthogonal or identity."""


@dataclass
class IRNNConfig(CellConfig):
    recurrent_init: str = "identity"
    """Le et al. 2015: ``weight_hh`` = I."""
    input_std: Optional[float] = 0.001
    """``weight_ih`` ~ N(0, input_std^2) (Le et al. 2015, Sec. 4); null: torch's uniform init."""


class RNNCell(RecurrentCell):
    r"""Elman RNN step (Elman 1990), torch's ``nn.RNNCell`` formulation.

    .. math:: h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \quad \phi \in \{\tanh, \mathrm{ReLU}, \sigma\}

    Shapes: ``weight_ih`` (H, I), ``weight_hh`` (H, H), ``bias_ih`` and ``bias_hh`` (H,); ``x`` (B, I),
    state ``h`` (B, H).

    :param nonlinearity: ``tanh``, ``relu`` or ``sigmoid``.
    :param recurrent_init: ``default`` (U(-1/sqrt(H), 1/sqrt(H))), ``orthogonal`` or ``identity``.
    :param input_std: if set, ``weight_ih`` ~ N(0, input_std^2) instead of torch's uniform init.
    :param zero_bias: start both biases at zero (IRNN).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "tanh",
        recurrent_init: str = "default",
        input_std: float | None = None,
        zero_bias: bool = False,
    ) -> None:
        super().__init__(input_size, hidden_size)
        check_choice("cell.nonlinearity", nonlinearity, ACTIVATIONS)
        if input_std is not None and not input_std > 0:
            raise ConfigError("cell.input_std", input_std, "a positive number, or null for torch's uniform init")
        self.nonlinearity = nonlinearity
        self.activation = ACTIVATIONS[nonlinearity]
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        uniform_default_(self.parameters(), hidden_size)
        recurrent_init_(self.weight_hh, 1, recurrent_init)
        with torch.no_grad():
            if input_std is not None:
                self.weight_ih.normal_(0.0, input_std)
            if zero_bias:
                self.bias_ih.zero_()
                self.bias_hh.zero_()

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        pre = torch.addmm(self.bias_ih, x, self.weight_ih.t()) + torch.addmm(self.bias_hh, h, self.weight_hh.t())
        h = self.activation(pre)  # (B, H)
        return h, h

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        xp = kernels.input_projection(x, params["weight_ih"], params["bias_ih"] + params["bias_hh"])
        return kernels.elman(xp, params["weight_hh"], self.nonlinearity, reverse)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity}"


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="rnn_tanh",
            cell=functools.partial(RNNCell, nonlinearity="tanh"),
            config=RNNConfig,
            fused="RNN_TANH",
            description="Elman RNN, h = tanh(W x + U h + b) (torch's nn.RNN)",
            source="Elman 1990",
        )
    )
    register(
        CellSpec(
            name="rnn_relu",
            cell=functools.partial(RNNCell, nonlinearity="relu"),
            config=RNNConfig,
            fused="RNN_RELU",
            description="Elman RNN with ReLU (torch's nn.RNN nonlinearity='relu')",
            source="Elman 1990",
        )
    )
    register(
        CellSpec(
            name="rnn_sigmoid",
            cell=functools.partial(RNNCell, nonlinearity="sigmoid"),
            config=RNNConfig,
            description="Elman RNN with the logistic sigmoid (the original Elman network)",
            source="Elman 1990",
        )
    )
    register(
        CellSpec(
            name="irnn",
            cell=functools.partial(RNNCell, nonlinearity="relu", zero_bias=True),
            config=IRNNConfig,
            fused="RNN_RELU",
            description="ReLU RNN with identity recurrent init and zero bias",
            source="Le, Jaitly & Hinton 2015, A Simple Way to Initialize Recurrent Networks of Rectified Linear Units",
        )
    )
