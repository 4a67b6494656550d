r"""The Linear Recurrent Unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De 2023, "Resurrecting Recurrent
Neural Networks for Long Sequences", ICML 2023, arXiv 2303.06349)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, ConfigError, RecurrentCell, State, hookimpl, kernels
from rnnbench.plugins._common import MAX_SIZE, SCANS, chunked_scan, resolve_scan
from rnnbench.validation import choice, number, positive_int


def _identity(v: Tensor) -> Tensor:
    return v


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"identity": _identity, "gelu": F.gelu, "tanh": torch.tanh}


@dataclass
class LRUConfig(CellConfig):
    state_size: Optional[int] = None
    """N, the number of complex state units; null: the hidden size H."""
    r_min: float = 0.9
    """Smallest eigenvalue modulus at init (ring initialisation; the paper's setting for long-range tasks)."""
    r_max: float = 0.999
    """Largest eigenvalue modulus at init (< 1)."""
    max_phase: float = 6.283185307179586
    """Eigenvalue phases at init are U(0, max_phase) (2 pi: the whole ring; the paper uses pi/10 on PathX)."""
    output_activation: str = "identity"
    """Applied to y: identity (the paper's LRU layer, linear), gelu or tanh (a minimal nonlinear block)."""
    scan: str = "auto"
    """The whole-sequence algorithm: chunked (two-level parallel scan), sequential (the time loop of
    rnnbench.kernels, compiled on the CPU), or auto: chunked on an accelerator, sequential on the CPU (measured
    faster there than the step loop, with or without the compiled loops)."""


class LRUCell(RecurrentCell):
    r"""Linear Recurrent Unit (Orvieto et al. 2023, arXiv 2303.06349, Sec. 3), a diagonal complex
    linear recurrence:

    .. math::
        \lambda &= \exp(-\exp(\nu^{\log}) + i \exp(\theta^{\log})) \in \mathbb{C}^N, \quad |\lambda| < 1 \\
        \gamma &= \exp(\gamma^{\log}), \quad \gamma^{\log} \text{ initialised to } \log\sqrt{1 - |\lambda|^2} \\
        s_t &= \lambda \odot s_{t-1} + \gamma \odot (B x_t), \quad s_0 = 0, \; s_t \in \mathbb{C}^N \\
        y_t &= \phi(\mathrm{Re}(C s_t) + D x_t)

    with B = B_re + i B_im (N, I), C = C_re + i C_im (H, N), D real (H, I), and phi the ``output_activation``
    (identity in the paper: the LRU layer is linear; its deep model puts an MLP/GLU after each layer).

    Initialisation (the paper's): ring init of lambda, |lambda|^2 ~ U(r_min^2, r_max^2) (uniform on the ring's
    area), phase ~ U(0, max_phase); B_re, B_im ~ N(0, 1/(2I)); C_re, C_im ~ N(0, 1/N). D: the paper's D is
    elementwise (input size = model size), D ~ N(0, 1); here input and hidden sizes differ, so D is a dense
    (H, I) matrix ~ N(0, 1/I).

    Diagnostics: h_t = y_t is an output, not the state the next step reads (s_t), so the gradient through time
    that ``rnnbench.diagnostics`` measures, dL/dh_t, holds only the readout's direct path for this cell.

    State: the complex s_t carried as the real pair ``(s_re, s_im)``, each (B, N); output h_t = y_t (B, H).
    Parameters: ``nu_log``, ``theta_log``, ``gamma_log`` (N,); ``B_re``, ``B_im`` (N, I); ``C_re``, ``C_im`` (H, N);
    ``D`` (H, I). :meth:`forward_sequence`: the input projections of every step in one matmul, the recurrence by
    :func:`rnnbench.plugins._common.chunked_scan` in complex arithmetic (``scan=chunked``; lambda constant in
    time) or by :func:`rnnbench.kernels.lru_scan` (``scan=sequential``, also :meth:`stacked_sequence`), then one
    matmul for all y_t; ``scan=auto``: chunked on an accelerator, sequential on the CPU.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        state_size: int | None = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = 2 * math.pi,
        output_activation: str = "identity",
        scan: str = "auto",
    ) -> None:
        super().__init__(input_size, hidden_size)
        N = hidden_size if state_size is None else positive_int("cell.state_size", state_size, MAX_SIZE)
        r_min = number("cell.r_min", r_min, 0.0, 1.0, low_open=False)
        r_max = number("cell.r_max", r_max, 0.0, 1.0)
        if not r_max > r_min:
            raise ConfigError("cell.r_max", r_max, f"a number in (r_min, 1) = ({r_min:g}, 1)")
        max_phase = number("cell.max_phase", max_phase, 0.0, 2 * math.pi, high_open=False)
        choice("cell.output_activation", output_activation, ACTIVATIONS)
        choice("cell.scan", scan, SCANS)
        self.scan = scan
        self.state_size, self.r_min, self.r_max, self.max_phase = N, r_min, r_max, max_phase
        self.output_activation = output_activation
        self.activation = ACTIVATIONS[output_activation]
        I, H = input_size, hidden_size
        self.nu_log = nn.Parameter(torch.empty(N))
        self.theta_log = nn.Parameter(torch.empty(N))
        self.gamma_log = nn.Parameter(torch.empty(N))
        self.B_re = nn.Parameter(torch.empty(N, I))
        self.B_im = nn.Parameter(torch.empty(N, I))
        self.C_re = nn.Parameter(torch.empty(H, N))
        self.C_im = nn.Parameter(torch.empty(H, N))
        self.D = nn.Parameter(torch.empty(H, I))
        with torch.no_grad():
            u1 = torch.rand(N).clamp_(min=1e-7)
            u2 = torch.rand(N).clamp_(min=1e-7)
            modulus_sq = u1 * (r_max**2 - r_min**2) + r_min**2  # |lambda|^2
            self.nu_log.copy_(torch.log(-0.5 * torch.log(modulus_sq)))
            self.theta_log.copy_(torch.log(max_phase * u2))
            self.gamma_log.copy_(0.5 * torch.log1p(-modulus_sq))
            self.B_re.normal_(0.0, 1.0 / math.sqrt(2 * I))
            self.B_im.normal_(0.0, 1.0 / math.sqrt(2 * I))
            self.C_re.normal_(0.0, 1.0 / math.sqrt(N))
            self.C_im.normal_(0.0, 1.0 / math.sqrt(N))
            self.D.normal_(0.0, 1.0 / math.sqrt(I))

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        zeros = torch.zeros(batch_size, self.state_size, device=device, dtype=dtype)
        return zeros, zeros

    def _lambda(self) -> tuple[Tensor, Tensor]:
        """(|lambda|, arg lambda), each (N,)."""
        return torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        s_re, s_im = state
        modulus, phase = self._lambda()
        lam_re, lam_im = modulus * torch.cos(phase), modulus * torch.sin(phase)
        gamma = torch.exp(self.gamma_log)
        bx_re = gamma * F.linear(x, self.B_re)  # (B, N)
        bx_im = gamma * F.linear(x, self.B_im)
        s_re, s_im = lam_re * s_re - lam_im * s_im + bx_re, lam_re * s_im + lam_im * s_re + bx_im
        y = F.linear(s_re, self.C_re) - F.linear(s_im, self.C_im) + F.linear(x, self.D)  # Re(C s) + D x
        return self.activation(y), (s_re, s_im)

    def forward_sequence(self, x: Tensor) -> Tensor | None:
        scan = resolve_scan(self.scan, x.device, "chunked", cpu="sequential")
        if scan == "sequential":
            return super().forward_sequence(x)  # stacked_sequence with K = 1
        log_lam = torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))  # (N,): log lambda
        gamma = torch.exp(self.gamma_log)
        bx = torch.complex(F.linear(x, self.B_re), F.linear(x, self.B_im)) * gamma  # (B, T, N)
        s = chunked_scan(log_lam.view(1, 1, -1), bx)  # (B, T, N)
        y = F.linear(s.real, self.C_re) - F.linear(s.imag, self.C_im) + F.linear(x, self.D)
        return self.activation(y)

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        """:func:`rnnbench.kernels.lru_scan` between the input and output projections (each one GEMM)."""
        modulus, phase = torch.exp(-torch.exp(params["nu_log"])), torch.exp(params["theta_log"])  # (K, N)
        gamma = torch.exp(params["gamma_log"]).unsqueeze(1).unsqueeze(1)
        b_re = kernels.input_projection(x, params["B_re"]) * gamma
        b_im = kernels.input_projection(x, params["B_im"]) * gamma
        s_re, s_im = kernels.lru_scan(modulus * torch.cos(phase), modulus * torch.sin(phase), b_re, b_im, reverse)
        y = (kernels.input_projection(s_re, params["C_re"]) - kernels.input_projection(s_im, params["C_im"])
             + kernels.input_projection(x, params["D"]))
        return self.activation(y)

    def recurrent_weights(self) -> dict[str, Tensor]:
        """``lambda_modulus``: |lambda| (N,), the diagonal applied to the previous state (its moduli)."""
        return {"lambda_modulus": self._lambda()[0]}

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, state_size={self.state_size}, r_min={self.r_min:g}, "
                f"r_max={self.r_max:g}, max_phase={self.max_phase:g}, output_activation={self.output_activation}")


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="lru",
            cell=LRUCell,
            config=LRUConfig,
            description="Linear Recurrent Unit: diagonal complex s = lambda s + gamma B x, y = Re(C s) + D x; "
                        "chunked parallel scan",
            source="Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De 2023, Resurrecting Recurrent Neural "
                   "Networks for Long Sequences (arXiv 2303.06349)",
        )
    )
