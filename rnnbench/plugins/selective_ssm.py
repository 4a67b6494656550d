r"""A selective state-space cell: Mamba's S6 layer (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", arXiv 2312.00752, Sec. 3, Algorithm 2), as one recurrent cell."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, ConfigError, RecurrentCell, State, hookimpl, kernels
from rnnbench.plugins._common import MAX_SIZE, SCANS, chunked_scan, resolve_scan
from rnnbench.validation import choice, number, positive_int


@dataclass
class S6Config(CellConfig):
    d_state: int = 8
    """N, the state size per channel (Mamba uses 16)."""
    dt_rank: Optional[int] = None
    """R, the rank of the step-size projection; null: ceil(H / 16), Mamba's default."""
    dt_min: float = 0.001
    """Step sizes at init are log-uniform in [dt_min, dt_max] (Mamba's defaults)."""
    dt_max: float = 0.1
    scan: str = "auto"
    """The whole-sequence algorithm: chunked (two-level parallel scan over (B, T, H, N) tensors), sequential
    (the time loop of rnnbench.kernels, compiled on the CPU; projections of all steps hoisted), or auto: chunked
    on an accelerator, sequential on the CPU (the step loop where the time loops could not be compiled: the
    kernel's Python loop streams (B, T, N, H) tensors and measured 3.5x slower than the step loop at hidden 128,
    T = 1000)."""


class S6Cell(RecurrentCell):
    r"""Selective SSM (S6; Gu & Dao 2023, arXiv 2312.00752, Algorithm 2), with an input projection to
    H = ``hidden_size`` channels.

    For x_t (B, I), per channel d = 1..H, each with a state s_{t,d} in R^N:

    .. math::
        u_t &= W_{in} x_t + b_{in} \in \mathbb{R}^H \\
        [\delta_t, B_t, C_t] &= W_x u_t, \qquad \delta_t \in \mathbb{R}^R,\; B_t, C_t \in \mathbb{R}^N \\
        \Delta_t &= \mathrm{softplus}(W_\Delta \delta_t + b_\Delta) \in \mathbb{R}^H \\
        A &= -\exp(A^{\log}) \in \mathbb{R}^{H \times N} \quad \text{(diagonal per channel)} \\
        \bar A_t &= \exp(\Delta_t A), \qquad \bar B_t u_t = (\Delta_t \odot u_t) \otimes B_t
            \quad \text{(zero-order hold for } A \text{, Euler for } B\text{, as Mamba)} \\
        s_t &= \bar A_t \odot s_{t-1} + \bar B_t u_t, \qquad s_0 = 0 \\
        y_t &= s_t C_t + D \odot u_t

    (``s_t C_t``: for each channel d, the dot product of s_{t,d} with C_t.) The output h_t = y_t (B, H).

    Initialisation (Mamba's): S4D-real A = -(1, 2, ..., N) in every channel (``A_log`` = log n); D = 1; step size
    dt = exp(U(log dt_min, log dt_max)) per channel (at least 1e-4) with b_Delta = softplus^{-1}(dt);
    W_Delta ~ U(-R^{-1/2}, R^{-1/2}); W_in, b_in, W_x as ``nn.Linear``. Left out of the cell (they belong to
    the Mamba block): the causal convolution, the SiLU, the gate branch and the output projection.

    Diagnostics: h_t = y_t is an output, not the state the next step reads (s_t), so the gradient through time
    that ``rnnbench.diagnostics`` measures, dL/dh_t, holds only the readout's direct path for this cell.

    Parameters: ``weight_in`` (H, I), ``bias_in`` (H,), ``weight_x`` (R + 2N, H) (rows: delta, B, C),
    ``weight_dt`` (H, R), ``bias_dt`` (H,), ``A_log`` (H, N), ``D`` (H,). State ``(s,)``, s (B, H, N).
    :meth:`forward_sequence`: every projection for all steps at once, then the recurrence by
    :func:`rnnbench.plugins._common.chunked_scan` on (B, T, H, N) (``scan=chunked``) or by the time loop of
    :func:`rnnbench.kernels.s6_scan` (``scan=sequential``, also :meth:`stacked_sequence`); ``scan=auto``:
    chunked on an accelerator, sequential on the CPU.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        d_state: int = 8,
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        scan: str = "auto",
    ) -> None:
        super().__init__(input_size, hidden_size)
        N = positive_int("cell.d_state", d_state, maximum=1024)
        R = math.ceil(hidden_size / 16) if dt_rank is None else positive_int("cell.dt_rank", dt_rank, MAX_SIZE)
        dt_min = number("cell.dt_min", dt_min, 0.0)
        dt_max = number("cell.dt_max", dt_max, 0.0)
        if not dt_max >= dt_min:
            raise ConfigError("cell.dt_max", dt_max, f"a number >= dt_min = {dt_min:g}")
        choice("cell.scan", scan, SCANS)
        self.d_state, self.dt_rank, self.dt_min, self.dt_max, self.scan = N, R, dt_min, dt_max, scan
        H, I = hidden_size, input_size
        self.weight_in = nn.Parameter(torch.empty(H, I))
        self.bias_in = nn.Parameter(torch.empty(H))
        self.weight_x = nn.Parameter(torch.empty(R + 2 * N, H))
        self.weight_dt = nn.Parameter(torch.empty(H, R))
        self.bias_dt = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H, N))
        self.D = nn.Parameter(torch.empty(H))
        with torch.no_grad():
            for weight, fan_in in ((self.weight_in, I), (self.bias_in, I), (self.weight_x, H)):
                weight.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
            self.weight_dt.uniform_(-(R**-0.5), R**-0.5)
            dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
            self.bias_dt.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt)
            self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(H, N))
            self.D.fill_(1.0)

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        return (torch.zeros(batch_size, self.hidden_size, self.d_state, device=device, dtype=dtype),)

    def _inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """For x (..., I): u (..., H); Delta (..., H); B, C (..., N); A (H, N)."""
        u = F.linear(x, self.weight_in, self.bias_in)
        delta, B, C = F.linear(u, self.weight_x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(delta, self.weight_dt, self.bias_dt))
        return u, dt, B, C, -torch.exp(self.A_log)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        (s,) = state
        u, dt, B, C, A = self._inputs(x)  # (B, H), (B, H), (B, N), (B, N), (H, N)
        s = torch.exp(dt.unsqueeze(-1) * A) * s + (dt * u).unsqueeze(-1) * B.unsqueeze(-2)  # (B, H, N)
        y = (s * C.unsqueeze(-2)).sum(-1) + self.D * u
        return y, (s,)

    def forward_sequence(self, x: Tensor) -> Tensor | None:
        scan = resolve_scan(self.scan, x.device, "chunked", cpu="sequential" if kernels.compiled_loops(x) else None)
        if scan is None:
            return None
        if scan == "sequential":
            return super().forward_sequence(x)  # stacked_sequence with K = 1
        u, dt, B, C, A = self._inputs(x)  # (B, T, H), (B, T, H), (B, T, N), (B, T, N), (H, N)
        log_a = dt.unsqueeze(-1) * A  # (B, T, H, N): log of exp(Delta A)
        b = (dt * u).unsqueeze(-1) * B.unsqueeze(-2)  # (B, T, H, N)
        s = chunked_scan(log_a, b)
        return (s * C.unsqueeze(-2)).sum(-1) + self.D * u

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        """Every projection of every step at once (batched GEMMs), then :func:`rnnbench.kernels.s6_scan`."""
        u = kernels.input_projection(x, params["weight_in"], params["bias_in"])  # (K, T, B, H)
        delta, B, C = kernels.input_projection(u, params["weight_x"]).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(kernels.input_projection(delta, params["weight_dt"], params["bias_dt"]))
        y = kernels.s6_scan(u, dt, -torch.exp(params["A_log"]), B, C, reverse)
        return y + params["D"].unsqueeze(1).unsqueeze(1) * u

    def recurrent_weights(self) -> dict[str, Tensor]:
        """``decay_at_zero_input`` (H*N,): exp(Delta A) for x_t = 0, the factor on s_{t-1} then. It depends on x_t
        through Delta (no fixed weight multiplies s_{t-1}; A alone is a continuous-time rate); its largest value
        says how slowly the slowest state forgets when nothing comes in."""
        _, dt, _, _, A = self._inputs(self.weight_in.new_zeros(1, self.input_size))
        return {"decay_at_zero_input": torch.exp(dt.reshape(-1, 1) * A).reshape(-1)}

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, d_state={self.d_state}, dt_rank={self.dt_rank}"


@hookimpl
def register_cells(register) -> None:
    register(
        CellSpec(
            name="s6",
            cell=S6Cell,
            config=S6Config,
            description="Mamba's selective SSM (S6): input-dependent Delta, B, C; diagonal A; chunked scan",
            source="Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces (arXiv 2312.00752)",
        )
    )
