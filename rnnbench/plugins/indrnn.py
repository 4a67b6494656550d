r"""Recurrences built to keep gradients from vanishing or exploding: the independently recurrent IndRNN (Li et al.
2018) and the orthogonal RNN trained on the orthogonal group through the exponential map (expRNN, Lezcano-Casado
& Martínez-Rubio 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from rnnbench import CellConfig, CellSpec, RecurrentCell, hookimpl, kernels
from rnnbench.validation import choice, number, positive_int

INDRNN_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": torch.relu, "tanh": torch.tanh}
INDRNN_INITS = ("uniform", "long")
MAX_HORIZON = 10**8


@dataclass
class IndRNNConfig(CellConfig):
    nonlinearity: str = "relu"
    """relu (the paper's) or tanh."""
    horizon: int = 1000
    """T of the bound |u| <= magnitude^(1/T): the number of steps over which the recurrent factor may grow by at
    most ``magnitude`` (the paper sets it from the sequence length; set it to the task's)."""
    magnitude: float = 2.0
    """The largest growth of a unit's recurrent factor over ``horizon`` steps (> 1)."""
    recurrent_init: str = "uniform"
    """u ~ U(0, u_max) (uniform) or U(u_min, u_max) with u_min = magnitude^(-1/T), every unit keeping >= 1 /
    magnitude of its state over the horizon (long; the authors' init of the last layer)."""
    clip_recurrent: bool = True
    """Use u clipped to [-u_max, u_max] (the paper clips after each update; see the cell)."""


class IndRNNCell(RecurrentCell):
    r"""Independently recurrent neural network (Li, Li, Cook, Zhu & Gao 2018, arXiv 1803.04831, Sec. 3):

    .. math:: h_t = \sigma(W x_t + u \odot h_{t-1} + b), \qquad \sigma = \mathrm{ReLU}

    every unit with its own scalar recurrent weight u_n (the recurrent matrix is diagonal).

    Constraint and init (the paper's gradient analysis and its authors' code): with u_max = magnitude^(1/T) (T =
    ``horizon``, magnitude 2: no unit's factor grows more than 2x over T steps), u ~ U(0, u_max)
    (``recurrent_init=uniform``) or U(magnitude^(-1/T), u_max) (``long``); W ~ U(-1/sqrt(I), 1/sqrt(I)), b = 0.
    The paper clips u to [-u_max, u_max] after every optimiser step; a cell has no hook after the step, so with
    ``clip_recurrent`` the cell uses the clipped value u_c = clip(u) in every step, with a straight-through
    gradient (dL/du = dL/du_c): the recurrence never sees |u| > u_max, and a weight pushed past the bound can
    come back. ``recurrent_weights`` reports u_c.

    Shapes: ``weight_ih`` (H, I), ``bias_ih`` (H,), ``weight_hh`` = u (H,); state h (B, H).
    Whole sequence (:meth:`stacked_sequence`): the input projection of every step in one matmul, then the
    elementwise time loop of :func:`rnnbench.kernels.indrnn` (hand-written backward; compiled on the CPU).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "relu",
        horizon: int = 1000,
        magnitude: float = 2.0,
        recurrent_init: str = "uniform",
        clip_recurrent: bool = True,
    ) -> None:
        super().__init__(input_size, hidden_size)
        choice("cell.nonlinearity", nonlinearity, INDRNN_ACTIVATIONS)
        horizon = positive_int("cell.horizon", horizon, maximum=MAX_HORIZON)
        magnitude = number("cell.magnitude", magnitude, 1.0)
        choice("cell.recurrent_init", recurrent_init, INDRNN_INITS)
        self.nonlinearity, self.horizon, self.magnitude = nonlinearity, horizon, magnitude
        self.recurrent_init, self.clip_recurrent = recurrent_init, bool(clip_recurrent)
        self.activation = INDRNN_ACTIVATIONS[nonlinearity]
        self.u_max = magnitude ** (1.0 / horizon)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size))
        bound = 1.0 / math.sqrt(input_size)
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            self.bias_ih.zero_()
            low = magnitude ** (-1.0 / horizon) if recurrent_init == "long" else 0.0
            self.weight_hh.uniform_(low, self.u_max)

    def recurrent(self, u: Tensor | None = None) -> Tensor:
        """u (``weight_hh`` unless given) as the recurrence uses it: clipped to [-u_max, u_max] (straight-through
        gradient) if clipping."""
        u = self.weight_hh if u is None else u
        if not self.clip_recurrent:
            return u
        return u + (u.clamp(-self.u_max, self.u_max) - u).detach()

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = self.activation(torch.addcmul(torch.addmm(self.bias_ih, x, self.weight_ih.t()), self.recurrent(), h))
        return h, h

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        xp = kernels.input_projection(x, params["weight_ih"], params["bias_ih"])
        return kernels.indrnn(xp, self.recurrent(params["weight_hh"]), self.nonlinearity, reverse)

    def recurrent_weights(self) -> dict[str, Tensor]:
        """``weight_hh``: the diagonal u (H,) as used (clipped)."""
        return {"weight_hh": self.recurrent()}

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity}, "
                f"u_max={self.u_max:.6g}, clip_recurrent={self.clip_recurrent}")


ORTHOGONAL_INITS = ("henaff", "cayley")
ORTHOGONAL_ACTIVATIONS = ("modrelu", "tanh")


@dataclass
class OrthogonalRNNConfig(CellConfig):
    nonlinearity: str = "modrelu"
    """modrelu (expRNN's) or tanh."""
    recurrent_init: str = "henaff"
    """The skew-symmetric A at init (expRNN's two): henaff (angles U(-pi, pi)) or cayley."""


def skew_init(hidden_size: int, scheme: str) -> Tensor:
    """The strictly lower triangle X of expRNN's initial A = X - X^T (hidden_size, hidden_size): 2x2 blocks
    [[0, s_k], [-s_k, 0]] on the diagonal (an odd last unit gets a zero block), so exp(A) is block-diagonal
    with rotations by the angles s_k (henaff: s ~ U(-pi, pi); cayley: s = -sqrt((1 - cos t) / (1 + cos t)),
    t ~ U(0, pi/2))."""
    pairs = hidden_size // 2
    if scheme == "henaff":
        s = torch.empty(pairs).uniform_(-math.pi, math.pi)
    else:
        t = torch.empty(pairs).uniform_(0.0, math.pi / 2)
        s = -torch.sqrt((1.0 - torch.cos(t)) / (1.0 + torch.cos(t)))
    X = torch.zeros(hidden_size, hidden_size)
    idx = torch.arange(pairs) * 2
    X[idx + 1, idx] = -s  # A[2k+1, 2k] = -s_k, A[2k, 2k+1] = s_k
    return X


class OrthogonalRNNCell(RecurrentCell):
    r"""Orthogonal RNN trained on the orthogonal group (expRNN; Lezcano-Casado & Martínez-Rubio 2019, arXiv
    1901.08428):

    .. math::
        W_{hh} &= \exp(A), \qquad A = X - X^\top, \; X \text{ lower triangular (the trained parameter)} \\
        z_t &= W_{ih} x_t + W_{hh} h_{t-1} \\
        h_t &= \mathrm{modReLU}(z_t) = \mathrm{sign}(z_t) \odot \mathrm{ReLU}(|z_t| + b)
            \quad \text{or} \quad h_t = \tanh(z_t + b)

    W_hh is exactly orthogonal for any X: it is ``torch.nn.utils.parametrizations.orthogonal`` with
    ``orthogonal_map="matrix_exp"`` and ``use_trivialization=False`` (the expRNN parametrisation itself, with no
    base change; the diagonal and upper triangle of the stored X are unused and get zero gradient).

    Init (expRNN's code): A block-diagonal with 2x2 rotations (``recurrent_init``, see :func:`skew_init`);
    ``weight_ih`` Kaiming normal (ReLU gain), no input bias; b ~ U(-0.01, 0.01).

    Parameters: ``weight_ih`` (H, I); ``bias`` (H,) (modReLU's b, or the tanh bias);
    ``parametrizations.weight_hh.original`` = X (H, H); ``weight_hh`` (H, H) is computed. State h (B, H).
    :meth:`stacked_sequence`: W_hh computed once per sequence (the step path computes it at every step), then
    :func:`rnnbench.kernels.elman` (modReLU's backward written out: dz = dh where h != 0, db = sum dh sign(h)).
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "modrelu",
                 recurrent_init: str = "henaff") -> None:
        super().__init__(input_size, hidden_size)
        choice("cell.nonlinearity", nonlinearity, ORTHOGONAL_ACTIVATIONS)
        choice("cell.recurrent_init", recurrent_init, ORTHOGONAL_INITS)
        self.nonlinearity, self.recurrent_init = nonlinearity, recurrent_init
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        self.weight_hh = nn.Parameter(torch.zeros(hidden_size, hidden_size))
        orthogonal(self, "weight_hh", orthogonal_map="matrix_exp", use_trivialization=False)
        with torch.no_grad():
            nn.init.kaiming_normal_(self.weight_ih, nonlinearity="relu")
            self.bias.uniform_(-0.01, 0.01)
            self.parametrizations.weight_hh.original.copy_(skew_init(hidden_size, recurrent_init))

    def _activation(self, z: Tensor) -> Tensor:
        if self.nonlinearity == "modrelu":
            return torch.sign(z) * torch.relu(z.abs() + self.bias)
        return torch.tanh(z + self.bias)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = self._activation(F.linear(x, self.weight_ih) + F.linear(h, self.weight_hh))
        return h, h

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        # torch's own parametrisation (exp(tril(X) - tril(X)^T)), batched over the K models, once per sequence
        W = self.parametrizations.weight_hh[0](params["parametrizations.weight_hh.original"])  # (K, H, H)
        if self.nonlinearity == "modrelu":
            xp = kernels.input_projection(x, params["weight_ih"])
            return kernels.elman(xp, W, "modrelu", reverse, bias=params["bias"])
        xp = kernels.input_projection(x, params["weight_ih"], params["bias"])
        return kernels.elman(xp, W, "tanh", reverse)

    def recurrent_weights(self) -> dict[str, Tensor]:
        """``weight_hh``: the orthogonal W_hh = exp(A) (H, H)."""
        return {"weight_hh": self.weight_hh}

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity}"


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="indrnn",
            cell=IndRNNCell,
            config=IndRNNConfig,
            description="IndRNN: h = relu(W x + u * h + b), one recurrent weight per unit, |u| <= 2^(1/T)",
            source="Li, Li, Cook, Zhu & Gao 2018, Independently Recurrent Neural Network (IndRNN): Building a "
                   "Longer and Deeper RNN (arXiv 1803.04831)",
        )
    )
    register(
        CellSpec(
            name="orthogonal_rnn",
            cell=OrthogonalRNNCell,
            config=OrthogonalRNNConfig,
            description="expRNN: h = modrelu(W x + exp(A) h), W_hh orthogonal via the matrix exponential of a "
                        "skew-symmetric A",
            source="Lezcano-Casado & Martínez-Rubio 2019, Cheap Orthogonal Constraints in Neural Networks: A Simple "
                   "Parametrization of the Orthogonal and Unitary Group (arXiv 1901.08428)",
        )
    )
