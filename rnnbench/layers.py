"""Depth and direction for any cell: the time loop, bidirectional layers, stacks, and the fused torch path.

Every encoder maps ``x`` (B, T, I) to outputs (B, T, D*H), D = 2 if bidirectional else 1, where the last H
features of a bidirectional output belong to the backward direction (torch's layout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from rnnbench.base import RecurrentCell, State

CellFactory = Callable[[int, int], RecurrentCell]


StepHook = Callable[[RecurrentCell, Tensor, State], None]
"""Called as ``hook(cell, x_t, state)`` before each step of :func:`unroll` (diagnostics count gate activations)."""


def unroll(
    cell: RecurrentCell, x: Tensor, reverse: bool = False, on_step: StepHook | None = None
) -> tuple[list[Tensor], State]:
    """Run ``cell`` over time; returns the per-step outputs h_t (in input order) and the final state.

    The steps come from ``x.unbind(1)``: indexing ``x[:, t]`` of a tensor that needs gradients inside the
    loop would make backward O(T^2). ``on_step`` sees every step's input and incoming state.
    """
    state = cell.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    steps = x.unbind(1)  # T tensors of (B, I)
    outputs: list[Tensor] = []
    for x_t in reversed(steps) if reverse else steps:
        if on_step is not None:
            on_step(cell, x_t, state)
        h_t, state = cell(x_t, state)
        outputs.append(h_t)
    if reverse:
        outputs.reverse()
    return outputs, state


class RecurrentLayer(nn.Module):
    """One layer: a forward cell and, if bidirectional, a second cell reading the sequence backwards."""

    def __init__(self, make_cell: CellFactory, input_size: int, hidden_size: int, bidirectional: bool) -> None:
        super().__init__()
        self.fwd = make_cell(input_size, hidden_size)
        self.bwd = make_cell(input_size, hidden_size) if bidirectional else None

    def cells(self) -> list[RecurrentCell]:
        return [self.fwd] if self.bwd is None else [self.fwd, self.bwd]

    def forward(
        self, x: Tensor, on_step: StepHook | None = None, sequence: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        """Outputs (B, T, D*H) and the forward cell's per-step outputs (T tensors of (B, H)).

        A cell's whole-sequence path (:meth:`RecurrentCell.forward_sequence`) is used when ``sequence`` is true,
        no ``on_step`` hook is given and the cell has one (the backward direction runs it on the time-reversed
        sequence); the per-step outputs are then slices of its result, so a gradient with respect to one of them
        is the direct (readout) part only. Otherwise every step runs through :func:`unroll`."""
        fast = sequence and on_step is None
        out = _sequence(self.fwd, x) if fast else None
        if out is None:
            steps = unroll(self.fwd, x, on_step=on_step)[0]
            out = torch.stack(steps, dim=1)  # (B, T, H)
        else:
            steps = list(out.unbind(1))
        if self.bwd is not None:
            back = _sequence(self.bwd, x.flip(1)) if fast else None
            if back is None:
                back = torch.stack(unroll(self.bwd, x, reverse=True, on_step=on_step)[0], dim=1)  # (B, T, H)
            else:
                back = back.flip(1)
            out = torch.cat([out, back], dim=-1)  # (B, T, 2H)
        return out, steps


def _sequence(cell: RecurrentCell, x: Tensor) -> Tensor | None:
    """``cell.forward_sequence(x)``, or None for a cell without the method or without the path."""
    method = getattr(cell, "forward_sequence", None)
    return method(x) if method is not None else None


class LoopEncoder(nn.Module):
    """``num_layers`` recurrent layers with dropout between them: each cell's whole-sequence path where it has
    one (:meth:`forward`), else step by step in Python (always in :meth:`probe`)."""

    def __init__(
        self,
        make_cell: CellFactory,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        directions = 2 if bidirectional else 1
        self.hidden_size, self.num_layers, self.bidirectional = hidden_size, num_layers, bidirectional
        self.layers = nn.ModuleList(
            RecurrentLayer(make_cell, input_size if i == 0 else directions * hidden_size, hidden_size, bidirectional)
            for i in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.probe(x, sequence=True)[0]

    def probe(
        self, x: Tensor, on_step: StepHook | None = None, sequence: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """Outputs (B, T, D*H) and the top layer's forward-direction outputs h_t, one (B, H) tensor per step.

        Runs the step path (the h_t are the states the next step reads, so dL/dh_t is the total derivative)
        unless ``sequence`` is true: :meth:`forward` uses the cells' whole-sequence paths."""
        top: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x, top = layer(x, on_step, sequence)
        return x, top

    def cells(self) -> list[RecurrentCell]:
        """All cells, layer by layer, forward direction before backward (torch's order)."""
        return [cell for layer in self.layers for cell in layer.cells()]


_FUSED_MODULES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
CELL_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
"""The four tensors of one direction of one layer, in torch's layout, for cells with a fused mode."""


def fused_names(num_layers: int, bidirectional: bool) -> Iterator[tuple[str, str]]:
    """``(loop_cell, fused_suffix)`` for every cell in torch's order: ``("layers.0.fwd", "_l0")``,
    ``("layers.0.bwd", "_l0_reverse")``, ... The one place that spells torch's per-layer weight names."""
    for layer in range(num_layers):
        for direction, name in enumerate(("fwd", "bwd")[: 2 if bidirectional else 1]):
            yield f"layers.{layer}.{name}", f"_l{layer}" + ("_reverse" if direction else "")


class TorchMathCell(RecurrentCell):
    r"""One direction of one layer of torch's fused ``nn.RNN``/``nn.LSTM``/``nn.GRU``, step by step.

    Torch's equations and weight layout (gates i, f, g, o for the LSTM; r, z, n for the GRU with
    n = tanh(W_in x + b_in + r (W_hn h + b_hn))), so it computes what the fused kernel computes: the loop twin
    of a fused encoder (:meth:`FusedEncoder.loop_twin`) uses it to expose per-step states and gates.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.mode = mode
        blocks = {"LSTM": 4, "GRU": 3}.get(mode, 1)
        self.weight_ih = nn.Parameter(torch.empty(blocks * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(blocks * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(blocks * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(blocks * hidden_size))

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (zeros, zeros) if self.mode == "LSTM" else zeros

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State, dict[str, Tensor]]:
        h = state[0] if isinstance(state, tuple) else state
        xw = torch.addmm(self.bias_ih, x, self.weight_ih.t())
        hw = torch.addmm(self.bias_hh, h, self.weight_hh.t())
        if self.mode == "LSTM":
            i, f, g, o = (xw + hw).chunk(4, dim=1)
            i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
            c = f * state[1] + i * torch.tanh(g)
            h = o * torch.tanh(c)
            return h, (h, c), {"input": i, "forget": f, "output": o}
        if self.mode == "GRU":
            xr, xz, xn = xw.chunk(3, dim=1)
            hr, hz, hn = hw.chunk(3, dim=1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = n + z * (h - n)
            return h, h, {"reset": r, "update": z}
        h = torch.tanh(xw + hw) if self.mode == "RNN_TANH" else torch.relu(xw + hw)
        return h, h, {}

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, state, _ = self._step(x, state)
        return h, state

    def gate_activations(self, x: Tensor, state: State) -> dict[str, Tensor]:
        return self._step(x, state)[2]


class FusedEncoder(nn.Module):
    """torch's fused ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (oneDNN on CPU, cuDNN on GPU) with a loop encoder's weights.

    Only for cells whose spec declares ``fused``: their math equals torch's module, so the two paths compute
    the same function (tested to float64 precision).
    """

    def __init__(self, mode: str, loop: LoopEncoder, dropout: float = 0.0) -> None:
        super().__init__()
        first = loop.cells()[0]
        self.mode = mode
        kwargs = {"nonlinearity": "tanh" if mode == "RNN_TANH" else "relu"} if mode.startswith("RNN") else {}
        self.rnn = _FUSED_MODULES[mode](
            first.input_size,
            loop.hidden_size,
            num_layers=loop.num_layers,
            bidirectional=loop.bidirectional,
            dropout=dropout if loop.num_layers > 1 else 0.0,
            batch_first=True,
            **kwargs,
        ).to(device=first.weight_ih.device, dtype=first.weight_ih.dtype)
        self.load_from(loop)

    def loop_named_parameters(self) -> dict[str, nn.Parameter]:
        """The fused module's parameters under the names of the equivalent loop encoder (``layers.0.fwd.weight_hh``)."""
        return {
            f"{cell}.{name}": getattr(self.rnn, name + suffix)
            for cell, suffix in fused_names(self.rnn.num_layers, self.rnn.bidirectional)
            for name in CELL_WEIGHTS
        }

    def load_from(self, loop: LoopEncoder) -> None:
        """Copy the weights of ``loop`` (same sizes) into the fused module."""
        source = dict(loop.named_parameters())
        with torch.no_grad():
            for name, p in self.loop_named_parameters().items():
                p.copy_(source[name])

    def copy_into(self, loop: LoopEncoder) -> None:
        """Copy the fused weights into ``loop`` (same sizes), converting to ``loop``'s dtype."""
        target = dict(loop.named_parameters())
        with torch.no_grad():
            for name, p in self.loop_named_parameters().items():
                target[name].copy_(p)

    def loop_twin(self) -> LoopEncoder:
        """A step-by-step :class:`LoopEncoder` of :class:`TorchMathCell` computing the same function, with a copy
        of the weights (same device and dtype)."""
        rnn = self.rnn
        twin = LoopEncoder(lambda i, h: TorchMathCell(self.mode, i, h), rnn.input_size, rnn.hidden_size,
                           rnn.num_layers, rnn.bidirectional, float(rnn.dropout))
        twin.to(device=rnn.weight_hh_l0.device, dtype=rnn.weight_hh_l0.dtype)
        self.copy_into(twin)
        return twin

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]  # (B, T, D*H)
