"""How K stacked models of one configuration compute their forward pass at once (internal).

Parameters are stacked ``(K, ...)`` tensors under the loop model's names (:func:`rnnbench.model.loop_named_parameters`).

- :class:`KernelModel`: for cells with a stacked whole-sequence path (every classic cell: the hand-written
  kernels of :mod:`rnnbench.kernels`), each layer direction through it.
- :class:`VmapModel`: any other cell, through ``torch.func.vmap`` over ``functional_call`` of the step-by-step model
  (torch's fused ``nn.GRU``/``nn.LSTM`` have no vmap batching rule, hence the loop model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnnbench.base import Task
from rnnbench.model import SequenceModel, build_model
from rnnbench.registry import CellSpec

Params = dict[str, Tensor]


def _template(spec: CellSpec, cell_kwargs: dict[str, Any], task: Task, hidden_size: int,
              **model_kwargs: Any) -> SequenceModel:
    """The step-by-step model of this configuration on the meta device: its structure, no storage."""
    with torch.random.fork_rng(devices=[]):
        return build_model(spec, cell_kwargs, task, hidden_size, fused=False, **model_kwargs).to("meta")


class KernelModel:
    """The forward of K stacked models through each cell's :meth:`~rnnbench.RecurrentCell.stacked_sequence`
    (for the built-in cells the kernels of :mod:`rnnbench.kernels`): the input projection of all
    steps in one batched matmul, then per step one ``baddbmm`` over the K stacked recurrent matrices, and the
    recurrent weight gradient in one large ``bmm`` after the backward loop.
    ``x`` (K, B, T, I) -> (K, B, O) or (K, B, T, O)."""

    def __init__(self, template: SequenceModel, dropout: float = 0.0) -> None:
        self.template, self.dropout, self.training = template, dropout, True

    @classmethod
    def create(cls, spec: CellSpec, cell_kwargs: dict[str, Any], task: Task, hidden_size: int, *, num_layers: int,
               bidirectional: bool, dropout: float = 0.0) -> KernelModel | None:
        """The kernel model, or None when a cell of the model has no stacked path (probed on the meta device)."""
        template = _template(spec, cell_kwargs, task, hidden_size, num_layers=num_layers,
                             bidirectional=bidirectional, dropout=dropout)
        for cell in template.encoder.cells():
            params = {n: p.unsqueeze(0) for n, p in cell.named_parameters()}
            if cell.stacked_sequence(params, torch.zeros(1, 1, 1, cell.input_size, device="meta")) is None:
                return None
        return cls(template, dropout)

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        model = self.template
        H = model.hidden_size
        seq = x.transpose(1, 2).contiguous()  # (K, T, B, I)
        for index, layer in enumerate(model.encoder.layers):
            if index > 0 and self.dropout > 0:
                seq = nn.functional.dropout(seq, self.dropout, self.training)
            outs = []
            for direction, (name, cell) in enumerate((n, c) for n, c in (("fwd", layer.fwd), ("bwd", layer.bwd))
                                                     if c is not None):
                prefix = f"encoder.layers.{index}.{name}."
                own = {n: params[prefix + n] for n, _ in cell.named_parameters()}
                outs.append(cell.stacked_sequence(own, seq, reverse=direction == 1))
            seq = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (K, T, B, D*H)
        weight, bias = params["head.weight"], params["head.bias"]  # (K, O, D*H), (K, O)
        if model.readout == "sequence":
            feats = seq.transpose(1, 2)  # (K, B, T, D*H)
            return torch.matmul(feats, weight.transpose(1, 2).unsqueeze(1)) + bias[:, None, None, :]
        feats = torch.cat([seq[:, -1, :, :H], seq[:, 0, :, H:]], dim=-1) if model.bidirectional else seq[:, -1]
        return torch.baddbmm(bias.unsqueeze(1), feats, weight.transpose(1, 2))  # (K, B, O)


class VmapModel:
    """The forward of K stacked models through ``vmap`` over the loop model (any cell)."""

    def __init__(self, spec: CellSpec, cell_kwargs: dict[str, Any], task: Task, hidden_size: int,
                 **model_kwargs: Any) -> None:
        self.base = _template(spec, cell_kwargs, task, hidden_size, **model_kwargs)
        self.training = True

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        self.base.train(self.training)

        def one(p: Params, xk: Tensor) -> Tensor:
            return torch.func.functional_call(self.base, p, (xk,))

        return torch.func.vmap(one, randomness="different")(params, x)


