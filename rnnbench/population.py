"""A population: K >= 1 members of one configuration, trained in lockstep by the one training loop (internal).

The loop sees only this interface; how the forward pass is computed is the population's business:

- :class:`SinglePopulation` (K = 1): the run's own :class:`~rnnbench.model.SequenceModel`, torch's fused kernel
  where the cell has one.
- :class:`StackedPopulation` (K > 1): the members' parameters stacked ``(K, ...)`` under the step-by-step
  model's names, computed by the hand-batched kernel or ``vmap`` (:mod:`rnnbench.batched`).

Each member is exactly the run that a single run with its seed makes, up to float rounding: its own initial
weights (built by the runner as a single run builds them), its own data streams, its gradient clipped on its own
norm. One optimiser over stacked tensors applies K separate optimisers' updates (Adam, AdamW, RMSprop and SGD
update every element from that element's gradient and state only; their shared step count is equal because
members step in lockstep). A finished member is frozen: it leaves the forward pass and its weights are restored
after every optimiser step. With ``model.dropout > 0`` every member draws its own masks, not those a single
run would draw.

Per-member state (weights and optimiser state) is exchanged under the step-by-step names, so checkpoints do not
depend on K.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnbench.batched import KernelModel, Params, VmapModel
from rnnbench.base import Task
from rnnbench.graphs import CudaGraphs
from rnnbench.layers import FusedEncoder
from rnnbench.model import SequenceModel, loop_named_parameters
from rnnbench.registry import CellSpec


def own_gradients(params: list[Tensor]) -> None:
    """Give every parameter's gradient storage of its own. Autograd can hand two parameters views of one tensor
    (two biases added inside a kernel, each reached through a view such as ``unsqueeze``; the aliases that a
    CUDA-graphed step returns), and an in-place clip would then scale that memory once per parameter."""
    seen: set[int] = set()
    for p in params:
        if p.grad is None:
            continue
        storage = p.grad.untyped_storage().data_ptr()
        if storage in seen:
            p.grad = p.grad.clone()
        else:
            seen.add(storage)


class Population:
    """The interface the training loop uses; see the module docstring."""

    size: int
    path: str
    names: list[str]
    graphs: CudaGraphs | None = None
    """The training forward's CUDA graphs, once :meth:`capture_graphs` turned them on."""

    def parameters(self) -> list[Tensor]:
        raise NotImplementedError

    def capture_graphs(self) -> None:
        """Run training forwards (and their backward) through CUDA graphs from now on (:mod:`rnnbench.graphs`);
        for populations on a CUDA device whose forward launches many small kernels (not torch's fused module)."""

    def forward(self, xs: list[Tensor], members: list[int]) -> list[Tensor]:
        """Outputs of ``members`` on their inputs ``xs`` (one (B, T, I) tensor each)."""
        raise NotImplementedError

    def clip_(self, clip: float | None, mode: str) -> Tensor:
        """Clip every member's gradient on its own (global L2 ``norm``, or per-element ``value``), each
        parameter's gradient once (:func:`own_gradients` first); returns the (K,) gradient norms before
        clipping."""
        raise NotImplementedError

    def train(self, mode: bool) -> None:
        raise NotImplementedError

    def model_of(self, k: int) -> SequenceModel:
        """Member ``k`` as a model holding its current weights."""
        raise NotImplementedError

    def freeze(self, k: int) -> None:
        """Keep member ``k``'s weights as they are now, whatever the optimiser does."""

    def after_step(self) -> None:
        """Called after every optimiser step."""

    # Per-member state under the step-by-step names ----------------------------------------------------------

    def _member_slice(self, value: Tensor, param: Tensor, k: int) -> Tensor:
        return value

    def member_weights(self, k: int) -> dict[str, Tensor]:
        return {n: self._member_slice(p.detach(), p, k).clone().cpu() for n, p in zip(self.names, self.parameters())}

    def member_optimizer_state(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, p in zip(self.names, self.parameters()):
            out[name] = {
                key: (self._member_slice(v, p, k).clone().cpu() if torch.is_tensor(v) else v)
                for key, v in optimizer.state.get(p, {}).items()
            }
        return out

    def load_members(self, optimizer: torch.optim.Optimizer, weights: list[dict[str, Tensor]],
                     optim_states: list[dict[str, dict[str, Any]]]) -> None:
        """Set every member's weights and optimiser state (lists in member order)."""
        params = self.parameters()
        with torch.no_grad():
            for i, (name, p) in enumerate(zip(self.names, params)):
                p.copy_(self._combine([w[name] for w in weights], p))
        state: dict[int, dict[str, Any]] = {}
        for i, (name, p) in enumerate(zip(self.names, params)):
            per_member = [s.get(name, {}) for s in optim_states]
            if not per_member[0]:
                continue
            state[i] = {key: (self._combine([m[key] for m in per_member], p) if torch.is_tensor(v) else v)
                        for key, v in per_member[0].items()}
        if state:
            optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})

    def _combine(self, values: list[Tensor], param: Tensor) -> Tensor:
        return values[0]


class SinglePopulation(Population):
    """One member: the run's own model."""

    def __init__(self, model: SequenceModel) -> None:
        self.model = model
        named = loop_named_parameters(model)
        self.names, self._params = list(named), list(named.values())
        self.size = 1
        self.path = "fused" if isinstance(model.encoder, FusedEncoder) else "loop"

    def parameters(self) -> list[Tensor]:
        return self._params

    def capture_graphs(self) -> None:
        if self.path != "fused":
            self.graphs = CudaGraphs(lambda x, *params: self.model(x))

    def forward(self, xs: list[Tensor], members: list[int]) -> list[Tensor]:
        if self.graphs is not None:
            return [self.graphs(xs[0], *self._params)]
        return [self.model(xs[0])]

    def clip_(self, clip: float | None, mode: str) -> Tensor:
        own_gradients(self._params)
        params = [p for p in self._params if p.grad is not None]
        if clip is not None and mode == "norm":
            return torch.nn.utils.clip_grad_norm_(params, clip).reshape(1)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if clip is not None:
            torch.nn.utils.clip_grad_value_(params, clip)
        return norm.reshape(1)

    def train(self, mode: bool) -> None:
        self.model.train(mode)

    def model_of(self, k: int) -> SequenceModel:
        return self.model


class StackedPopulation(Population):
    """K > 1 members as stacked parameters; ``models`` are the members' initial models (fused or loop), which
    :meth:`model_of` keeps in sync."""

    def __init__(self, spec: CellSpec, cell_kwargs: dict[str, Any], task: Task, models: list[SequenceModel],
                 hidden_size: int, num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 path: str = "auto") -> None:
        self.models, self.size = models, len(models)
        states = [loop_named_parameters(m) for m in models]
        self.names = list(states[0])
        self.params: Params = {
            n: torch.stack([s[n].detach() for s in states]).requires_grad_(True) for n in self.names
        }
        kernel = None if path == "vmap" else KernelModel.create(
            spec, cell_kwargs, task, hidden_size, num_layers=num_layers, bidirectional=bidirectional, dropout=dropout)
        if path == "kernel" and kernel is None:
            raise ValueError(f"cell {spec.name!r} has no stacked whole-sequence path; use 'vmap'")
        self.path = "kernel" if kernel is not None else "vmap"
        self.compute: Any = kernel or VmapModel(spec, cell_kwargs, task, hidden_size, num_layers=num_layers,
                                                bidirectional=bidirectional, dropout=dropout)
        self._frozen: dict[int, dict[str, Tensor]] = {}

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def capture_graphs(self) -> None:
        names = list(self.params)
        self.graphs = CudaGraphs(lambda x, *params: self.compute(dict(zip(names, params)), x))

    def forward(self, xs: list[Tensor], members: list[int]) -> list[Tensor]:
        """One batched forward per distinct input shape (variable-length tasks), the whole stack without
        gathering when every member runs on one shape."""
        outputs: list[Tensor | None] = [None] * len(xs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for j, x in enumerate(xs):
            groups.setdefault(tuple(x.shape), []).append(j)
        for rows in groups.values():
            idx = [members[j] for j in rows]
            if idx == list(range(self.size)):
                sub = self.params
            else:
                index = torch.tensor(idx, device=xs[0].device)
                sub = {n: p.index_select(0, index) for n, p in self.params.items()}
            x = torch.stack([xs[j] for j in rows])
            out = self.graphs(x, *sub.values()) if self.graphs is not None else self.compute(sub, x)
            for pos, j in enumerate(rows):
                outputs[j] = out[pos]
        return outputs  # type: ignore[return-value]

    def clip_(self, clip: float | None, mode: str) -> Tensor:
        K = self.size
        own_gradients(self.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params.values()]
        norm = torch.stack([g.reshape(K, -1).square().sum(dim=1) for g in grads]).sum(dim=0).sqrt()
        if clip is not None:
            if mode == "norm":
                coef = (clip / (norm + 1e-6)).clamp(max=1.0)
                for g in grads:
                    g.mul_(coef.view(K, *([1] * (g.dim() - 1))))
            else:
                for g in grads:
                    g.clamp_(-clip, clip)
        return norm

    def train(self, mode: bool) -> None:
        self.compute.training = mode

    def model_of(self, k: int) -> SequenceModel:
        model = self.models[k]
        target = loop_named_parameters(model)
        with torch.no_grad():
            for name, p in self.params.items():
                target[name].copy_(p[k])
        return model

    def freeze(self, k: int) -> None:
        self._frozen[k] = {n: p.detach()[k].clone() for n, p in self.params.items()}

    def after_step(self) -> None:
        if self._frozen:
            with torch.no_grad():
                for k, saved in self._frozen.items():
                    for name, p in self.params.items():
                        p[k] = saved[name]

    def _member_slice(self, value: Tensor, param: Tensor, k: int) -> Tensor:
        return value[k] if value.shape == param.shape else value

    def _combine(self, values: list[Tensor], param: Tensor) -> Tensor:
        if values[0].shape == param.shape[1:]:
            return torch.stack(values)
        return values[0]
