"""A training step's forward and backward passes captured in CUDA graphs and replayed (CUDA only; internal).

On a GPU the hand-written kernels' time loops (:mod:`rnnbench.kernels`) launch a dozen small kernels per time
step from Python, so a training step is bound by launch latency rather than arithmetic. :class:`CudaGraphs`
captures a population's forward, and through autograd its backward, once per input signature with
:func:`torch.cuda.make_graphed_callables`, and replays both afterwards: the same kernels on the same tensors,
launched as one graph each. The optimiser, clipping, losses and evaluation stay eager; evaluation (no gradient)
never replays a graph.

A model whose forward cannot be captured (an operation that synchronises with the host, such as
``torch.matrix_exp`` on CUDA) is reported once and runs eagerly. Each captured signature keeps its graph's memory
for the rest of the run, so at most ``limit`` signatures (input shapes) are captured; others run eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("rnnbench")

Signature = tuple[tuple[tuple[int, ...], torch.dtype, bool], ...]


class CudaGraphs:
    """``fn(*inputs)`` through one CUDA graph per input signature (shapes, dtypes, ``requires_grad``).

    ``inputs`` must hold every tensor that needs a gradient (the parameters included): the backward graph
    computes gradients with respect to those alone. Leaf tensors that need a gradient (parameters updated in
    place) are the graph's own inputs; every other input is copied into a placeholder before each replay."""

    device_type = "cuda"
    """Inputs on other devices run eagerly."""

    def __init__(self, fn: Callable[..., Tensor], limit: int = 4) -> None:
        self.fn, self.limit = fn, limit
        self.graphs: dict[Signature, Callable[..., Tensor]] = {}
        self.failed: str | None = None
        """Why capture failed (then every call runs eagerly), or None."""

    def __call__(self, *inputs: Tensor) -> Tensor:
        if self.failed is not None or not torch.is_grad_enabled() or inputs[0].device.type != self.device_type:
            return self.fn(*inputs)
        key: Signature = tuple((tuple(t.shape), t.dtype, t.requires_grad) for t in inputs)
        graphed = self.graphs.get(key)
        if graphed is None:
            if len(self.graphs) >= self.limit:
                return self.fn(*inputs)
            samples = tuple(t if t.is_leaf and t.requires_grad else t.detach().clone().requires_grad_(t.requires_grad)
                            for t in inputs)
            try:
                graphed = torch.cuda.make_graphed_callables(self.fn, samples, allow_unused_input=True)
            except Exception as error:  # noqa: BLE001 - any operation capture refuses: run eagerly instead
                self.failed = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                if inputs[0].is_cuda:
                    torch.cuda.synchronize()
                log.warning("this model's training step cannot be captured in a CUDA graph (%s); it runs eagerly",
                            self.failed)
                return self.fn(*inputs)
            self.graphs[key] = graphed
            log.info("captured the training step for input shape %s in a CUDA graph", tuple(inputs[0].shape))
        return graphed(*inputs)


def graphs_wanted(cfg: Any, device: torch.device) -> bool:
    """Whether a run of ``cfg`` on ``device`` replays its training steps as CUDA graphs: ``trainer.cuda_graphs``
    on a CUDA device, without dropout (whose masks the warm-up before a capture would draw from the run's
    random stream)."""
    return bool(cfg.trainer.cuda_graphs) and device.type == "cuda" and not cfg.model.dropout
