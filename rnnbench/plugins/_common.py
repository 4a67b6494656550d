r"""Shared by the modern cells (internal): scans for diagonal linear recurrences.

Scans: the whole-sequence paths of the cells whose state enters linearly (minGRU, minLSTM, LRU, S6), chosen by
their ``scan`` hyperparameter. All solve, along dim 1 (time) of (B, T, ...) tensors and from a zero initial state,

.. math:: h_t = a_t \odot h_{t-1} + b_t, \qquad h_{-1} = 0,

with plain torch operations (autograd, ``torch.func.vmap`` and the meta device all work):

- :func:`log_space_scan`: the log-space (Heinsen 2023) scan of minGRU/minLSTM (Feng et al. 2024, Sec. 3 and
  App. B) for positive ``a`` and ``b`` given as logarithms:
  :math:`\log h_t = a^*_t + \operatorname{logcumsumexp}_{s \le t}(\log b_s - a^*_s)`, :math:`a^*_t = \sum_{s \le t}
  \log a_s`. Fully parallel (two cumulative ops). In float32 its error grows with :math:`|a^*_t|` (the sum of
  log-decays up to t), about 1e-7 x :math:`|a^*_t|` relative.
- :func:`chunked_scan`: any ``b`` and ``a = exp(log_a)`` (real or complex; ``a`` may be constant in time), as a
  two-level scan: the T steps are cut into C chunks of L ~ sqrt(T) steps; (1) all chunks at once, L sequential
  steps, scan from a zero state; (2) C sequential steps carry the state across chunk ends; (3) h = local scan +
  (running product of ``a`` within the chunk, exp of a cumulative sum) x carried state, in one operation.
  About 2 sqrt(T) sequential elementwise steps instead of T, exact to rounding in any dtype (no division; the
  cumulative sums of ``log a`` stay within one chunk).

The parallel scans pay off where per-operation overhead dominates (a GPU); on a CPU, where every operation on a
whole (B, T, ...) tensor streams it through memory, a time loop (its (B, ...) slices stay in cache) measured
faster (``benchmarks/results/modern_cells.md``): the compiled time loops of :mod:`rnnbench.kernels` where a cell
has one, else the step loop. Hence ``scan=auto`` (:func:`resolve_scan`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_SIZE = 2**16
"""The largest value of a size-like integer hyperparameter (state size, rank)."""


def log_space_scan(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``h`` (B, T, ...) of ``h_t = a_t h_{t-1} + b_t``, ``h_{-1} = 0``, from ``log a`` and ``log b`` (same shape)."""
    a_star = torch.cumsum(log_a, dim=1)
    return torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=1))


SCANS = ("auto", "chunked", "sequential")
"""The whole-sequence algorithms of the linear-in-state cells (``cell.scan``); minGRU/minLSTM add ``log``."""


def resolve_scan(scan: str, device: torch.device, parallel: str, cpu: str | None = None) -> str | None:
    """The algorithm ``scan`` means on ``device``: ``auto`` is ``parallel`` (the cell's parallel scan) on an
    accelerator and ``cpu`` on the CPU (None: no whole-sequence path, the layer runs the step loop; the cells
    without a compiled loop measured fastest so, see ``benchmarks/results/modern_cells.md``); any other value is
    itself."""
    if scan != "auto":
        return scan
    return cpu if device.type in ("cpu", "meta") else parallel


def chunk_length(steps: int) -> int:
    """The chunk length L of :func:`chunked_scan` for T steps: a divisor of T in [sqrt(T), 2 sqrt(T)] when there
    is one (no padding), else ceil(sqrt(T)). Either balances the two sequential levels (L and T / L steps)."""
    root = max(1, math.isqrt(max(steps - 1, 0)) + 1)  # ceil(sqrt(T))
    for length in range(root, min(2 * root, steps) + 1):
        if steps % length == 0:
            return length
    return root


def chunked_scan(log_a: Tensor, b: Tensor, chunk: int | None = None) -> Tensor:
    """``h`` (shape of ``b``: (B, T, ...)) of ``h_t = a_t h_{t-1} + b_t``, ``h_{-1} = 0``, from ``log a``.

    ``log_a`` (real, or complex for a complex ``a``) broadcasts against ``b``; a size-1 time dimension (shape
    (B or 1, 1, ...)) is a recurrence constant in time (the LRU). The running products of ``a`` within a chunk
    are ``exp`` of cumulative sums of ``log a`` (no division, no logarithm of the data). ``chunk``: the chunk
    length L (default :func:`chunk_length`)."""
    Bsz, T = b.shape[0], b.shape[1]
    rest = tuple(b.shape[2:])
    constant = log_a.shape[1] == 1
    L = chunk or chunk_length(T)
    C = -(-T // L)
    pad = C * L - T
    if pad:  # steps after T only feed steps after T, which are dropped
        b = torch.cat([b, b.new_zeros((Bsz, pad) + rest)], dim=1)
        if not constant:
            log_a = torch.cat([log_a, log_a.new_zeros((log_a.shape[0], pad) + tuple(log_a.shape[2:]))], dim=1)
    if constant:
        steps = torch.arange(1, L + 1, device=b.device).view((1, 1, L) + (1,) * len(rest))
        log_prod = log_a.unsqueeze(2) * steps.to(log_a.dtype)  # (B|1, 1, L, ...): log(a^(l+1))
        a_steps: list[Tensor] | tuple[Tensor, ...] = [torch.exp(log_a)] * L
    else:
        log_a = log_a.reshape((log_a.shape[0], C, L) + tuple(log_a.shape[2:]))  # (B, C, L, ...)
        log_prod = torch.cumsum(log_a, dim=2)
        a_steps = torch.exp(log_a).unbind(2)
    # (1) every chunk from a zero state, L steps on (B, C, ...): local_l = a_l * local_{l-1} + b_l
    local: list[Tensor] = []
    for a_l, b_l in zip(a_steps, b.reshape((Bsz, C, L) + rest).unbind(2)):
        local.append(b_l if not local else torch.addcmul(b_l, a_l, local[-1]))
    prod = torch.exp(log_prod)  # (B|1, C|1, L, ...): a_0 ... a_l within the chunk
    # (2) the state entering chunk c, C steps on (B, ...): s_c = local_end_{c-1} + prod_end_{c-1} * s_{c-1}
    ends = local[-1].unbind(1)
    p_end = prod[:, :, -1]
    p_ends = p_end.expand((p_end.shape[0], C) + tuple(p_end.shape[2:])).unbind(1)
    carries = [torch.zeros_like(ends[0])]
    for c in range(C - 1):
        carries.append(torch.addcmul(ends[c], p_ends[c], carries[-1]))
    # (3) h = local + prod * s, every step of every chunk at once
    h = torch.addcmul(torch.stack(local, dim=2), prod, torch.stack(carries, dim=1).unsqueeze(2))
    return h.reshape((Bsz, C * L) + rest)[:, :T]
