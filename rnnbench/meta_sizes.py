"""Parameter counts and the hidden size of a parameter budget, computed on torch's ``meta`` device: no
allocation, whatever the sizes. Layers beyond the second are extrapolated (layers 2..L are alike)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rnnbench.errors import ConfigError
from rnnbench.model import largest_within


def meta_model(cell_spec: Any, cell_kwargs: dict[str, Any], task: Any, hidden: int, layers: int, bidirectional: bool,
                dropout: float, fused: bool) -> torch.nn.Module:
    from rnnbench.model import build_model

    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        return build_model(cell_spec, cell_kwargs, task, hidden, num_layers=layers, bidirectional=bidirectional,
                           dropout=dropout, fused=fused)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_count(cell_spec: Any, cell_kwargs: dict[str, Any], task: Any, hidden: int, num_layers: int = 1,
                    bidirectional: bool = False, dropout: float = 0.0) -> int:
    """The model's parameter count (readout head included), as ``model.count_parameters`` of the real model would
    say, without allocating; layers beyond the second are extrapolated."""
    build = lambda layers: _count(meta_model(cell_spec, cell_kwargs, task, hidden, layers, bidirectional,  # noqa: E731
                                              dropout if layers > 1 else 0.0, False))
    if num_layers <= 2:
        return build(num_layers)
    one, two = build(1), build(2)
    return two + (num_layers - 2) * (two - one)


def _size_function(cell_spec: Any, cell_kwargs: dict[str, Any], task: Any, model_kwargs: dict[str, Any]
                   ) -> Callable[[int], int]:
    """Parameters as a function of the hidden size: a quadratic fitted on three meta builds and checked on two
    more (exact for every cell whose weights are matrices and vectors), else meta builds each time."""
    def direct(h: int) -> int:
        return parameter_count(cell_spec, cell_kwargs, task, h, **model_kwargs)

    try:
        p1, p2, p3 = direct(1), direct(2), direct(3)
        d1, d2 = p2 - p1, p3 - 2 * p2 + p1

        def poly(h: int) -> int:
            return p1 + (h - 1) * d1 + (h - 1) * (h - 2) // 2 * d2

        if all(poly(h) == direct(h) for h in (5, 8)):
            return poly
    except ConfigError:
        pass
    return direct


def hidden_size_for_budget(cell_spec: Any, cell_kwargs: dict[str, Any], task: Any, budget: int,
                           **model_kwargs: Any) -> int:
    """The largest hidden size whose model has at most ``budget`` parameters: the same answer as
    :func:`rnnbench.model.hidden_size_for_budget`, computed on the meta device (no allocation, any budget).

    A quadratic fitted on a few builds finds it fast; the answer is then checked on real (meta) builds, and a cell
    whose count is not quadratic in the hidden size (e.g. a rank that grows in steps) is searched build by build."""
    def direct(h: int) -> int:
        return parameter_count(cell_spec, cell_kwargs, task, h, **model_kwargs)

    size = _size_function(cell_spec, cell_kwargs, task, model_kwargs)
    hidden = largest_within(size, budget, cell_spec.name)
    if size is not direct and not (direct(hidden) <= budget < direct(hidden + 1)):
        hidden = largest_within(direct, budget, cell_spec.name)
    return hidden
