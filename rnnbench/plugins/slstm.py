r"""sLSTM, the scalar-memory cell of xLSTM (Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer,
Brandstetter & Hochreiter 2024, "xLSTM: Extended Long Short-Term Memory", NeurIPS 2024, arXiv 2405.04517)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, RecurrentCell, State, hookimpl, kernels
from rnnbench.init import gate_bias_, recurrent_init_, uniform_default_
from rnnbench.validation import choice, number

FORGET_GATES = ("sigmoid", "exp")


@dataclass
class SLSTMConfig(CellConfig):
    forget_gate: str = "sigmoid"
    """sigmoid: f = sigma(f~); exp: f = exp(f~) (the paper allows both)."""
    forget_bias: Optional[float] = 1.0
    """Effective forget-gate pre-activation bias at init (``bias_ih + bias_hh`` of the f block); null keeps
    torch's uniform init."""
    recurrent_init: str = "default"
    """Init of each (H, H) gate block of ``weight_hh``: default (torch's uniform), orthogonal or identity."""


class SLSTMCell(RecurrentCell):
    r"""sLSTM (Beck et al. 2024, arXiv 2405.04517, Sec. 2.2, with its stabiliser state m), one head.

    .. math::
        [\tilde i, \tilde f, \tilde z, \tilde o] &= W x_t + b_{ih} + R h_{t-1} + b_{hh} \\
        \log f_t &= \log\sigma(\tilde f) \;\text{(sigmoid forget gate) or }\; \tilde f \;\text{(exponential)},
            \qquad \log i_t = \tilde i \;\text{(exponential input gate)} \\
        m_t &= \max(\log f_t + m_{t-1},\; \log i_t) \\
        i'_t &= \exp(\log i_t - m_t), \qquad f'_t = \exp(\log f_t + m_{t-1} - m_t) \\
        c_t &= f'_t \odot c_{t-1} + i'_t \odot \tanh(\tilde z), \qquad n_t = f'_t \odot n_{t-1} + i'_t \\
        h_t &= \sigma(\tilde o) \odot c_t / n_t

    c_t and n_t are the paper's cell and normaliser states scaled by exp(-m_t): the stabiliser m_t leaves h_t
    unchanged (exactly, in exact arithmetic) and keeps every exponential <= 1. The initial state is
    h = c = n = 0 and m = -inf (the logarithm of the zero normaliser), so the first step has f' = 0, i' = 1 and
    n_t >= 1 at every step (no division by zero).

    One head: R is a full (4H, H) matrix (the paper's sLSTM uses several heads, a block-diagonal R); the
    block's group norm, convolution and up/down projections are not part of the cell.

    Parameters in torch's LSTM layout with the paper's gate order i, f, z, o: ``weight_ih`` (4H, I),
    ``weight_hh`` (4H, H), ``bias_ih`` and ``bias_hh`` (4H,), initialised U(-1/sqrt(H), 1/sqrt(H)) as torch's
    LSTM, with ``forget_bias`` the effective f bias. State ``(h, c, n, m)``, each (B, H).
    Whole sequence (:meth:`stacked_sequence`): the input projection of every step in one matmul, then the time
    loop of :func:`rnnbench.kernels.slstm` (hand-written backward; compiled on the CPU).
    """

    blocks = ("i", "f", "z", "o")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        forget_gate: str = "sigmoid",
        forget_bias: float | None = 1.0,
        recurrent_init: str = "default",
    ) -> None:
        super().__init__(input_size, hidden_size)
        choice("cell.forget_gate", forget_gate, FORGET_GATES)
        if forget_bias is not None:
            forget_bias = number("cell.forget_bias", forget_bias)
        self.forget_gate = forget_gate
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))
        self.bias_ih = nn.Parameter(torch.empty(4 * H))
        self.bias_hh = nn.Parameter(torch.empty(4 * H))
        uniform_default_(self.parameters(), H)
        recurrent_init_(self.weight_hh, 4, recurrent_init)
        if forget_bias is not None:
            gate_bias_(self.bias_ih, self.bias_hh, 1, H, forget_bias)

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return zeros, zeros, zeros, torch.full_like(zeros, -torch.inf)

    def _pointwise(self, pre: Tensor, state: State) -> tuple[Tensor, State]:
        """The step from the full pre-activations ``pre`` (B, 4H) and the previous state."""
        _, c, n, m = state
        i_raw, f_raw, z_raw, o_raw = pre.chunk(4, dim=-1)
        log_f = F.logsigmoid(f_raw) if self.forget_gate == "sigmoid" else f_raw
        log_f_m = log_f + m
        m_new = torch.maximum(log_f_m, i_raw)
        i = torch.exp(i_raw - m_new)
        f = torch.exp(log_f_m - m_new)
        c = f * c + i * torch.tanh(z_raw)
        n = f * n + i
        h = torch.sigmoid(o_raw) * c / n
        return h, (h, c, n, m_new)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        pre = torch.addmm(self.bias_ih, x, self.weight_ih.t()) + torch.addmm(self.bias_hh, state[0], self.weight_hh.t())
        return self._pointwise(pre, state)

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        xp = kernels.input_projection(x, params["weight_ih"], params["bias_ih"] + params["bias_hh"])
        return kernels.slstm(xp, params["weight_hh"], self.forget_gate == "exp", reverse)

    def gate_activations(self, x: Tensor, state: State) -> dict[str, Tensor]:
        """The sigmoid gates of the step from ``state`` on ``x``: ``output``, and ``forget`` when it is a sigmoid
        (the input gate, and an exponential forget gate, are not in [0, 1])."""
        pre = torch.addmm(self.bias_ih, x, self.weight_ih.t()) + torch.addmm(self.bias_hh, state[0], self.weight_hh.t())
        _, f_raw, _, o_raw = pre.chunk(4, dim=-1)
        gates = {"output": torch.sigmoid(o_raw)}
        if self.forget_gate == "sigmoid":
            gates["forget"] = torch.sigmoid(f_raw)
        return gates

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, forget_gate={self.forget_gate}, heads=1"


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="slstm",
            cell=SLSTMCell,
            config=SLSTMConfig,
            description="sLSTM (xLSTM): exponential input gate, normaliser and stabiliser states, one head",
            source="Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter & Hochreiter 2024, "
                   "xLSTM: Extended Long Short-Term Memory (arXiv 2405.04517)",
        )
    )
