r"""minGRU and minLSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?",
arXiv 2410.01201): gates and candidate from the input only, so the state enters linearly and the whole sequence
is one log-space (Heinsen) scan.

Both use the paper's log-space variant (its Sec. 3 and App. B, "log-space" minGRU/minLSTM): the
candidate is :math:`\tilde h_t = g(W_h x_t + b_h)` with the positive

.. math:: g(v) = \begin{cases} v + \tfrac12 & v \ge 0 \\ \sigma(v) & v < 0 \end{cases}

so every term of the recurrence is positive and its logarithm exists. The step (:meth:`forward`, the reference
path) computes the recurrence directly; :meth:`forward_sequence` computes all steps with the scan of
:func:`rnnbench.plugins._common.log_space_scan` (``scan=log``), the chunked scan in linear space, or the time
loop of :func:`rnnbench.kernels.min_rnn` (``scan=sequential``: hand-written backward, compiled on the CPU, and
the path of seed-parallel training); the default ``scan=auto`` is ``log`` on an accelerator and ``sequential``
on the CPU (measured fastest on each; without a C++ compiler, the step loop). The initial state is h_0 = 0 (the
scan then has no h_0 term).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, RecurrentCell, hookimpl, kernels
from rnnbench.plugins._common import chunked_scan, log_space_scan, resolve_scan
from rnnbench.validation import choice

MIN_RNNS = ("Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, Were RNNs All We Needed? (arXiv 2410.01201), "
            "log-space variant")


MIN_SCANS = ("auto", "log", "chunked", "sequential")


@dataclass
class MinGRUConfig(CellConfig):
    scan: str = "auto"
    """The whole-sequence algorithm: log (the paper's log-space Heinsen scan), chunked (two-level scan in linear
    space), sequential (the time loop of rnnbench.kernels, compiled on the CPU), or auto: log on an accelerator,
    sequential on the CPU (measured fastest on each; the step loop where the time loops could not be compiled).
    All compute the same function."""


@dataclass
class MinLSTMConfig(CellConfig):
    scan: str = "auto"
    """The whole-sequence algorithm: log (the paper's log-space Heinsen scan), chunked, sequential, or auto (log on
    an accelerator, sequential on the CPU)."""


def g(v: Tensor) -> Tensor:
    """The paper's positive candidate activation: v + 1/2 for v >= 0, sigmoid(v) below (continuous at 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: Tensor) -> Tensor:
    """log g(v), computed without forming g: log(v + 1/2) for v >= 0, -softplus(-v) below."""
    return torch.where(v >= 0, torch.log(torch.relu(v) + 0.5), -F.softplus(-v))


class _InputOnlyCell(RecurrentCell):
    """A cell whose gates and candidate come from one input projection ``weight_ih`` (G*H, I), ``bias_ih`` (G*H,),
    initialised like ``nn.Linear`` (the paper's code): U(-1/sqrt(I), 1/sqrt(I))."""

    blocks: tuple[str, ...] = ()
    kind = ""
    """The cell's name in :func:`rnnbench.kernels.min_rnn`."""

    def __init__(self, input_size: int, hidden_size: int, scan: str = "auto") -> None:
        super().__init__(input_size, hidden_size)
        choice("cell.scan", scan, MIN_SCANS)
        self.scan = scan
        G = len(self.blocks)
        self.weight_ih = nn.Parameter(torch.empty(G * hidden_size, input_size))
        self.bias_ih = nn.Parameter(torch.empty(G * hidden_size))
        bound = 1.0 / math.sqrt(input_size)
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            self.bias_ih.uniform_(-bound, bound)

    def _pre(self, x: Tensor) -> tuple[Tensor, ...]:
        """The G pre-activation blocks of ``x`` (..., I), each (..., H), in the order of ``blocks``."""
        return F.linear(x, self.weight_ih, self.bias_ih).chunk(len(self.blocks), dim=-1)

    def _log_coefficients(self, *pre: Tensor) -> tuple[Tensor, Tensor]:
        """log a, log b of h_t = a_t h_{t-1} + b_t from the pre-activation blocks, each (B, T, H)."""
        raise NotImplementedError

    def forward_sequence(self, x: Tensor) -> Tensor | None:
        scan = resolve_scan(self.scan, x.device, "log", cpu="sequential" if kernels.compiled_loops(x) else None)
        if scan is None:
            return None
        if scan == "sequential":
            return super().forward_sequence(x)  # stacked_sequence with K = 1
        log_a, log_b = self._log_coefficients(*self._pre(x))
        return log_space_scan(log_a, log_b) if scan == "log" else chunked_scan(log_a, torch.exp(log_b))

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        """:func:`rnnbench.kernels.min_rnn` on the input projections of every step (one GEMM)."""
        return kernels.min_rnn(kernels.input_projection(x, params["weight_ih"], params["bias_ih"]), self.kind, reverse)

    def recurrent_weights(self) -> dict[str, Tensor]:
        """``decay_at_zero_input`` (H,): the factor on h_{t-1} for x_t = 0 (1 - z, or f'). No weight multiplies
        h_{t-1}: its factor depends on x_t alone; at zero input it is a function of the biases, and its largest
        value says how slowly the slowest unit forgets when nothing comes in."""
        return {"decay_at_zero_input": torch.exp(self._log_decay(self.bias_ih.unsqueeze(0))).squeeze(0)}

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, scan={self.scan}"


class MinGRUCell(_InputOnlyCell):
    r"""minGRU (Feng et al. 2024, arXiv 2410.01201, Sec. 3.1, log-space variant of App. B):

    .. math::
        z_t &= \sigma(W_z x_t + b_z) \\
        \tilde h_t &= g(W_h x_t + b_h) \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t, \qquad h_0 = 0

    Whole sequence (:meth:`forward_sequence`), the log-space scan with :math:`\log(1 - z_t) = -\mathrm{softplus}(k_t)`,
    :math:`\log z_t = -\mathrm{softplus}(-k_t)` for :math:`k_t = W_z x_t + b_z`:

    .. math::
        h_t = \exp\Big(a^*_t + \operatorname{logcumsumexp}_{s \le t}\big(\log z_s + \log \tilde h_s - a^*_s\big)\Big),
        \quad a^*_t = \sum_{s \le t} \log(1 - z_s)

    ``scan=chunked`` computes the same recurrence with a_t = 1 - z_t, b_t = z_t h~_t in linear space
    (:mod:`rnnbench.plugins._common`), ``scan=sequential`` with :func:`rnnbench.kernels.min_rnn`.

    Shapes: ``weight_ih`` (2H, I) and ``bias_ih`` (2H,), blocks z, h; ``x_t`` (B, I), state ``h`` (B, H).
    """

    blocks = ("z", "h")
    kind = "mingru"

    def _log_decay(self, pre: Tensor) -> Tensor:
        """log(1 - z) from the pre-activations ``pre`` (..., 2H)."""
        return -F.softplus(pre.chunk(2, dim=-1)[0])

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        k_z, k_h = self._pre(x)
        h = h + torch.sigmoid(k_z) * (g(k_h) - h)  # (1 - z) h + z g
        return h, h

    def _log_coefficients(self, k_z: Tensor, k_h: Tensor) -> tuple[Tensor, Tensor]:
        return -F.softplus(k_z), -F.softplus(-k_z) + log_g(k_h)

    def gate_activations(self, x: Tensor, state: Tensor) -> dict[str, Tensor]:
        """The ``update`` gate z_t of the step on ``x``."""
        return {"update": torch.sigmoid(self._pre(x)[0])}


class MinLSTMCell(_InputOnlyCell):
    r"""minLSTM (Feng et al. 2024, arXiv 2410.01201, Sec. 3.2, with its time-independent normalisation
    of f and i, and the log-space variant of App. B):

    .. math::
        f_t &= \sigma(W_f x_t + b_f), \qquad i_t = \sigma(W_i x_t + b_i) \\
        f'_t &= \frac{f_t}{f_t + i_t}, \qquad i'_t = \frac{i_t}{f_t + i_t} \\
        \tilde h_t &= g(W_h x_t + b_h) \\
        h_t &= f'_t \odot h_{t-1} + i'_t \odot \tilde h_t, \qquad h_0 = 0

    Whole sequence: the log-space scan with :math:`d_t = \mathrm{softplus}(-k^f_t) - \mathrm{softplus}(-k^i_t)`,
    :math:`\log f'_t = -\mathrm{softplus}(d_t)`, :math:`\log i'_t = -\mathrm{softplus}(-d_t)` (k the
    pre-activations); ``scan=chunked`` in linear space; ``scan=sequential``: :func:`rnnbench.kernels.min_rnn`.

    Shapes: ``weight_ih`` (3H, I) and ``bias_ih`` (3H,), blocks f, i, h; ``x_t`` (B, I), state ``h`` (B, H).
    """

    blocks = ("f", "i", "h")
    kind = "minlstm"

    def _log_decay(self, pre: Tensor) -> Tensor:
        """log f' = -softplus(softplus(-k_f) - softplus(-k_i)) from the pre-activations ``pre`` (..., 3H)."""
        k_f, k_i, _ = pre.chunk(3, dim=-1)
        return -F.softplus(F.softplus(-k_f) - F.softplus(-k_i))

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        k_f, k_i, k_h = self._pre(x)
        f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
        total = f + i
        h = (f / total) * h + (i / total) * g(k_h)
        return h, h

    def _log_coefficients(self, k_f: Tensor, k_i: Tensor, k_h: Tensor) -> tuple[Tensor, Tensor]:
        d = F.softplus(-k_f) - F.softplus(-k_i)
        return -F.softplus(d), -F.softplus(-d) + log_g(k_h)

    def gate_activations(self, x: Tensor, state: Tensor) -> dict[str, Tensor]:
        """The ``forget`` and ``input`` gates f_t, i_t of the step on ``x`` (after the sigmoid, before the
        normalisation f' = f / (f + i))."""
        k_f, k_i, _ = self._pre(x)
        return {"forget": torch.sigmoid(k_f), "input": torch.sigmoid(k_i)}


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="mingru",
            cell=MinGRUCell,
            config=MinGRUConfig,
            description="minGRU: h = (1-z) h + z g(W x), gate and candidate from x only; log-space parallel scan",
            source=MIN_RNNS,
        )
    )
    register(
        CellSpec(
            name="minlstm",
            cell=MinLSTMCell,
            config=MinLSTMConfig,
            description="minLSTM: h = f' h + i' g(W x) with f', i' = f, i / (f + i); log-space parallel scan",
            source=MIN_RNNS,
        )
    )
