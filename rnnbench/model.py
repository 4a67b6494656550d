"""SequenceModel: a cell encoder (loop or fused) plus a linear readout, sized from the task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from rnnbench.base import Task
from rnnbench.errors import ConfigError
from rnnbench.layers import FusedEncoder, LoopEncoder
from rnnbench.registry import CellSpec


class SequenceModel(nn.Module):
    """``encoder`` then a linear head, read out at the last step or at every step (``task.readout``).

    For a last-step readout of a bidirectional encoder the head sees the forward direction's output at the last
    step and the backward direction's output at the first step: both have read the whole sequence.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, bidirectional: bool, output_size: int, readout: str):
        super().__init__()
        self.encoder = encoder
        self.hidden_size, self.bidirectional, self.readout = hidden_size, bidirectional, readout
        self.head = nn.Linear((2 if bidirectional else 1) * hidden_size, output_size)

    def features(self, x: Tensor) -> Tensor:
        return self.read(self.encoder(x))

    def read(self, out: Tensor) -> Tensor:
        """The head's input from encoder outputs ``out`` (B, T, D*H): every step, or the last step."""
        if self.readout == "sequence":
            return out
        if self.bidirectional:
            return torch.cat([out[:, -1, : self.hidden_size], out[:, 0, self.hidden_size :]], dim=-1)  # (B, 2H)
        return out[:, -1]  # (B, H)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, O) or (B, T, O)


def loop_named_parameters(model: SequenceModel) -> dict[str, nn.Parameter]:
    """The model's parameters under the names of its step-by-step twin (``encoder.layers.0.fwd.weight_hh``,
    ``head.weight``), whichever encoder it has: names that checkpoints and batched members share."""
    encoder = model.encoder
    if isinstance(encoder, FusedEncoder):
        named = {f"encoder.{n}": p for n, p in encoder.loop_named_parameters().items()}
        named.update({f"head.{n}": p for n, p in model.head.named_parameters()})
        return named
    return dict(model.named_parameters())


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


SLOWER_ON_CPU = ("GRU", "RNN_TANH", "RNN_RELU")
"""Fused modes that torch runs slower on the CPU than the cell's own hand-written kernel (rnnbench.kernels):
a training step of ``nn.GRU`` measured 1.25-1.43x the GRU kernel's time and ``nn.RNN`` 1.16-1.6x the Elman
kernel's, at hidden 32-512 and T = 100-1000 (``benchmarks/results/cells-kernels.md``)."""


def uses_fused(spec: CellSpec, fused: bool, device_type: str) -> bool:
    """Whether a model of ``spec`` runs torch's fused module: the spec declares one, ``model.fused`` is true, and
    it is the fast path on this device (cuDNN on a GPU; on the CPU only ``nn.LSTM``, see :data:`SLOWER_ON_CPU`)."""
    return bool(fused and spec.fused) and not (device_type != "cuda" and spec.fused in SLOWER_ON_CPU)


def build_model(
    spec: CellSpec,
    cell_kwargs: dict[str, Any],
    task: Task,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    fused: bool = True,
) -> SequenceModel:
    """The model for ``spec`` on ``task``; torch's fused kernel when the spec declares one and ``fused``."""

    def make_cell(input_size: int, hidden: int):
        return spec.cell(input_size, hidden, **cell_kwargs)

    loop = LoopEncoder(make_cell, task.input_size, hidden_size, num_layers, bidirectional, dropout)
    encoder: nn.Module = FusedEncoder(spec.fused, loop, dropout) if (fused and spec.fused) else loop
    return SequenceModel(encoder, hidden_size, bidirectional, task.output_size, task.readout)


def hidden_size_for_budget(
    spec: CellSpec, cell_kwargs: dict[str, Any], task: Task, budget: int, **model_kwargs: Any
) -> int:
    """The largest hidden size whose model has at most ``budget`` parameters (readout head included), counted on
    real (CPU) models; :func:`rnnbench.meta_sizes.hidden_size_for_budget` finds the same on the meta device."""

    def size(hidden: int) -> int:
        with torch.random.fork_rng(devices=[]):
            return count_parameters(build_model(spec, cell_kwargs, task, hidden, fused=False, **model_kwargs))

    return largest_within(size, budget, spec.name)


def largest_within(size: Callable[[int], int], budget: int, cell_name: str) -> int:
    """The largest hidden size h with ``size(h) <= budget`` (``size`` increasing), by doubling then bisection."""
    if size(1) > budget:
        raise ConfigError("model.param_budget", budget, f"at least {size(1)} for cell {cell_name!r} on this task")
    lo, hi = 1, 2
    while size(hi) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # size(lo) <= budget < size(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid)
    return lo
