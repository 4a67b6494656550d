"""Why a cell fails: gradient flow through time, recurrent spectra and gate saturation during training.

:class:`Diagnostics` is the ``on_step`` callback of :func:`rnnbench.train.train`. Every ``diagnostics.every``
optimiser steps, and once more at the end of training (``finish``), it measures on a fixed diagnostic batch
(``diagnostics.batch_size`` sequences from the task's own seeded stream ``diagnostics``, the same batch for every
run with the same task configuration and ``diagnostics.seed``):

**Gradient norm through time.** ``g_t = dL/dh_t`` for every time step ``t`` of the sequence, where ``h_t`` is the
output of the top layer's forward-direction cell at step ``t`` and ``L`` the task's loss (batch mean) on the
diagnostic batch. It is the *total* derivative: ``h_t`` is the node through which every later step and the
readout depend on it, so ``g_t`` accumulates the path through the recurrence (``h_{t+1}, h_{t+2}, ...``) and the
direct readout path alike (for the built-in cells, ``h_t`` is the recurrent state or its first element). The
reported norm ``||g_t||`` is the Frobenius norm over batch and hidden units of the ``(B, H)`` gradient. The
measurement runs on a float64 copy of the model (``diagnostics.dtype``) in evaluation mode (no dropout), so
vanishing gradients stay measurable far below float32's range. A fused model (torch's ``nn.RNN``/``LSTM``/``GRU``)
has no per-step tensors: it is measured on a step-by-step copy with the same weights (:func:`loop_copy`).

Summary metrics of one measurement (``T`` the diagnostic batch's length, ``t = 0`` its first step: the earliest
relevant input of every built-in task lies at or near the start of the sequence, the readout at the end):

- ``diag/grad_norm_first`` = ``||g_0||``; ``diag/grad_norm_last`` = ``||g_{T-1}||`` (the output step).
- ``diag/grad_ratio_first_last`` = ``||g_0|| / ||g_{T-1}||``: how much of the gradient at the output reaches the
  first input step. Below 1 the gradient vanishes on its way back, above 1 it explodes.
- ``diag/grad_log10_ratio_first_last`` = ``log10`` of that ratio (omitted when a norm is 0).
- ``diag/grad_decay_per_100_steps``: the empirical decay rate, in decades per 100 time steps: ``100 * s`` where
  ``s`` is the least-squares slope of ``log10 ||g_t||`` against ``t`` over the steps with a positive norm.
  ``2.0`` means the norm shrinks by a factor 100 every 100 steps back in time; negative values mean it grows.

**Recurrent spectra.** For every matrix a cell applies to its previous state (``RecurrentCell.recurrent_weights``,
named with torch's layer suffix, e.g. ``weight_hh_l0``, ``weight_hh_l1_reverse``):

- ``diag/sigma_max/<name>``: the largest singular value (spectral norm) of the whole matrix.
- ``diag/spectral_radius/<name>``: the largest eigenvalue modulus of a square matrix. A stacked gate matrix of
  shape ``(kH, H)`` (torch's layout: LSTM i, f, g, o; GRU r, z, n) has one ``H x H`` block per gate, reported as
  ``diag/spectral_radius/<name>_block<j>`` (j = 0 .. k-1). A vector (a diagonal recurrence, e.g. peepholes) is
  a diagonal matrix: both values are ``max |w|``.

**Gate saturation**, for cells with ``gate_activations(x_t, state) -> {gate: post-sigmoid values}`` (and for the
fused LSTM/GRU): over all layers, directions, steps, sequences and units of the diagnostic batch,

- ``diag/gate_saturation/<gate>``: the fraction of activations below ``s`` or above ``1 - s``
  (``s = diagnostics.saturation``, 0.05 by default);
- ``diag/gate_saturation_low/<gate>`` and ``diag/gate_saturation_high/<gate>``: the two sides separately.

``diag/seconds`` is the wall time of the measurement. Non-finite values are never returned.

``finish(tracker)`` logs, under the artifact folder ``diagnostics/``: ``gradient_heatmap.png`` (time step x
training step, colour = ``log10 ||g_t||``), ``gradient_latest.png`` (``||g_t||`` against ``t`` at the latest
measurement, log scale, earlier measurements faded) and ``gradient_flow.json``, the raw numbers (format in
:func:`gradient_flow_figure`), which :func:`load_run_arrays` reads back from a run.

The side-by-side figure of several runs (:func:`gradient_flow_figure`), e.g. ``docs/gradient_flow.png``::

    rnnbench -m experiment=gradient_flow cell=rnn_tanh,lstm,gru task.dependency_length=50,100 \
        tracking.uri=sqlite:///gradient_flow.db
    python -m rnnbench.diagnostics figure --tracking-uri sqlite:///gradient_flow.db --cells rnn_tanh lstm gru \
        -o docs/gradient_flow.png
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rnnbench.base import Batch, RecurrentCell, State, Task
from rnnbench.errors import ConfigError
from rnnbench.layers import FusedEncoder, LoopEncoder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("rnnbench")

ARTIFACT_DIR = "diagnostics"
RAW_FILE = "gradient_flow.json"
HEATMAP_FILE = "gradient_heatmap.png"
LATEST_FILE = "gradient_latest.png"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float64": torch.float64}
LSTM_GATES = ("input", "forget", "output")
GRU_GATES = ("reset", "update")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")


@dataclass
class DiagnosticsSettings:
    """The ``diagnostics`` config group (``conf/diagnostics/*.yaml``)."""

    enabled: bool = True
    every: int = 500
    """Measure after every ``every``-th optimiser step (and once more at the end of training)."""
    batch_size: int = 32
    """Sequences in the fixed diagnostic batch."""
    seed: int = 0
    """Seed of the diagnostic batch's stream; the same for every run so that runs are comparable."""
    saturation: float = 0.05
    """A gate activation is saturated below ``saturation`` or above ``1 - saturation``."""
    dtype: str = "float64"
    """Precision of the measurement copy: float64 keeps vanishing gradients measurable."""
    figures: bool = True
    """Draw the PNG figures in ``finish`` (the raw JSON is always written)."""
    cell: str = ""
    task: str = ""
    dependency_length: int | None = None

    @classmethod
    def from_node(cls, node: Any) -> DiagnosticsSettings:
        """Read a composed config node (or a dict); every error names the key, its value and what is allowed."""
        if node is None:
            return cls(enabled=False)
        if not isinstance(node, dict):
            from omegaconf import OmegaConf

            node = OmegaConf.to_container(node, resolve=True)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"diagnostics.{unknown[0]}", node[unknown[0]], f"one of the keys {', '.join(sorted(known))}")
        settings = cls(**node)
        settings.validate()
        return settings

    def validate(self) -> None:
        for key in ("every", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"diagnostics.{key}", value, "a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("diagnostics.seed", self.seed, "a non-negative integer")
        if not (isinstance(self.saturation, (int, float)) and 0.0 < self.saturation < 0.5):
            raise ConfigError("diagnostics.saturation", self.saturation, "a number in (0, 0.5)")
        if self.dtype not in DTYPES:
            raise ConfigError("diagnostics.dtype", self.dtype, f"one of {', '.join(DTYPES)}")


def metric_name(text: str) -> str:
    """``text`` with every character MLflow does not accept in a metric name replaced by ``_``."""
    return _UNSAFE.sub("_", text)


def _fused_mode(rnn: nn.RNNBase) -> str:
    if isinstance(rnn, nn.LSTM):
        return "LSTM"
    if isinstance(rnn, nn.GRU):
        return "GRU"
    return "RNN_TANH" if rnn.nonlinearity == "tanh" else "RNN_RELU"


class TorchMathCell(RecurrentCell):
    r"""One direction of one layer of torch's fused ``nn.RNN``/``nn.LSTM``/``nn.GRU``, step by step.

    Torch's equations and weight layout (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``; gates i, f, g, o
    for the LSTM, r, z, n for the GRU), so the cell computes what the fused kernel computes. Used by
    :func:`loop_copy` to get per-step states out of a fused model.
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
        """Post-sigmoid gates of the step from ``state`` on ``x`` (LSTM: input, forget, output; GRU: reset,
        update; none for the plain RNNs)."""
        return self._step(x, state)[2]


def loop_copy(fused: FusedEncoder) -> LoopEncoder:
    """A :class:`LoopEncoder` of :class:`TorchMathCell` computing the same function as ``fused`` (the inverse of
    ``FusedEncoder.load_from``); same device and dtype, weights copied (not shared)."""
    rnn = fused.rnn
    mode = _fused_mode(rnn)
    loop = LoopEncoder(
        lambda i, h: TorchMathCell(mode, i, h),
        rnn.input_size,
        rnn.hidden_size,
        rnn.num_layers,
        rnn.bidirectional,
        float(rnn.dropout),
    )
    weight = rnn.weight_hh_l0
    loop.to(device=weight.device, dtype=weight.dtype)
    copy_fused_into_loop(fused, loop)
    return loop


def copy_fused_into_loop(fused: FusedEncoder, loop: LoopEncoder) -> None:
    """Copy the weights of ``fused`` into ``loop`` (same sizes), converting to ``loop``'s dtype."""
    directions = 2 if loop.bidirectional else 1
    with torch.no_grad():
        for index, cell in enumerate(loop.cells()):
            layer, direction = divmod(index, directions)
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(fused.rnn, name + suffix))


class _GateTally:
    """Running counts of saturated gate activations, kept on the device until :meth:`fractions`."""

    def __init__(self, threshold: float) -> None:
        self.low, self.high = threshold, 1.0 - threshold
        self.counts: dict[str, list[Tensor | int]] = {}

    def add(self, gates: dict[str, Tensor]) -> None:
        for name, values in gates.items():
            entry = self.counts.setdefault(name, [0, 0, 0])
            entry[0] = entry[0] + (values < self.low).sum()
            entry[1] = entry[1] + (values > self.high).sum()
            entry[2] = entry[2] + values.numel()

    def fractions(self) -> dict[str, tuple[float, float]]:
        """``{gate: (fraction below, fraction above)}``."""
        out = {}
        for name, (low, high, total) in self.counts.items():
            if total:
                out[name] = (float(low) / total, float(high) / total)
        return out


def _unroll(cell: RecurrentCell, x: Tensor, reverse: bool, tally: _GateTally | None) -> list[Tensor]:
    """:func:`rnnbench.layers.unroll`, also counting the cell's gate activations (without gradient) into ``tally``."""
    state = cell.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    gates = getattr(cell, "gate_activations", None) if tally is not None else None
    steps = x.unbind(1)
    outputs: list[Tensor] = []
    for x_t in reversed(steps) if reverse else steps:
        if gates is not None:
            with torch.no_grad():
                tally.add(gates(x_t, state))
        h_t, state = cell(x_t, state)
        outputs.append(h_t)
    if reverse:
        outputs.reverse()
    return outputs


def _forward_probe(encoder: LoopEncoder, x: Tensor, tally: _GateTally | None) -> tuple[Tensor, list[Tensor]]:
    """``encoder(x)`` without dropout; also the per-step outputs of the top layer's forward cell."""
    top: list[Tensor] = []
    for index, layer in enumerate(encoder.layers):
        forward = _unroll(layer.fwd, x, False, tally)
        out = torch.stack(forward, dim=1)
        if layer.bwd is not None:
            out = torch.cat([out, torch.stack(_unroll(layer.bwd, x, True, tally), dim=1)], dim=-1)
        if index == len(encoder.layers) - 1:
            top = forward
        x = out
    return x, top


def _readout(out: Tensor, readout: str, hidden_size: int, bidirectional: bool) -> Tensor:
    """:meth:`rnnbench.model.SequenceModel.features` on encoder outputs ``out`` (B, T, D*H)."""
    if readout == "sequence":
        return out
    if bidirectional:
        return torch.cat([out[:, -1, :hidden_size], out[:, 0, hidden_size:]], dim=-1)
    return out[:, -1]


def _batch_as(batch: Batch, dtype: torch.dtype) -> Batch:
    """``batch`` with its floating-point tensors converted to ``dtype``."""

    def conv(t: Tensor) -> Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    return Batch(x=conv(batch.x), y=conv(batch.y), mask=batch.mask, extras={k: conv(v) for k, v in batch.extras.items()})


def _loop_encoder_of(model: nn.Module) -> LoopEncoder:
    encoder = model.encoder
    return loop_copy(encoder) if isinstance(encoder, FusedEncoder) else encoder


def _hidden_gradients(
    encoder: LoopEncoder,
    head: nn.Module,
    task: Task,
    batch: Batch,
    readout: str,
    bidirectional: bool,
    tally: _GateTally | None = None,
) -> Tensor:
    x = batch.x.detach()
    with torch.enable_grad():
        out, hs = _forward_probe(encoder, x, tally)
        loss = task.loss(head(_readout(out, readout, encoder.hidden_size, bidirectional)), batch)
        grads = torch.autograd.grad(loss, hs, allow_unused=True)
    return torch.stack([torch.zeros_like(h) if g is None else g for g, h in zip(grads, hs)])


def hidden_state_gradients(model: nn.Module, task: Task, batch: Batch) -> Tensor:
    """``dL/dh_t`` for every step: a (T, B, H) tensor, in the model's dtype, for the top layer's forward cell.

    ``model`` is a :class:`rnnbench.model.SequenceModel` (loop or fused encoder, which is measured on
    :func:`loop_copy`); ``L = task.loss(model(batch.x), batch)`` without dropout. See the module docstring.
    """
    dtype = next(model.parameters()).dtype
    return _hidden_gradients(
        _loop_encoder_of(model), model.head, task, _batch_as(batch, dtype), model.readout, model.bidirectional
    )


def _cell_suffixes(encoder: LoopEncoder) -> list[str]:
    directions = 2 if encoder.bidirectional else 1
    return [f"_l{i // directions}" + ("_reverse" if i % directions else "") for i in range(len(encoder.cells()))]


def spectra(encoder: LoopEncoder) -> dict[str, float]:
    """``diag/sigma_max/<name>`` and ``diag/spectral_radius/<name>`` of every recurrent weight (module docstring).

    Computed in float64 on the CPU; a matrix with a non-finite entry is skipped.
    """
    out: dict[str, float] = {}
    for cell, suffix in zip(encoder.cells(), _cell_suffixes(encoder)):
        for name, weight in cell.recurrent_weights().items():
            key = metric_name(f"{name}{suffix}")
            w = weight.detach().to("cpu", torch.float64)
            if not bool(torch.isfinite(w).all()):
                continue
            if w.dim() == 1:
                value = float(w.abs().max()) if w.numel() else 0.0
                out[f"diag/sigma_max/{key}"] = out[f"diag/spectral_radius/{key}"] = value
                continue
            if w.dim() != 2:
                continue
            out[f"diag/sigma_max/{key}"] = float(torch.linalg.matrix_norm(w, ord=2))
            rows, cols = w.shape
            if rows == cols:
                out[f"diag/spectral_radius/{key}"] = float(torch.linalg.eigvals(w).abs().max())
            elif cols and rows % cols == 0:
                for j, block in enumerate(w.split(cols, dim=0)):
                    out[f"diag/spectral_radius/{key}_block{j}"] = float(torch.linalg.eigvals(block).abs().max())
    return out


def gradient_summary(norms: Sequence[float]) -> dict[str, float]:
    """The summary metrics of one gradient-through-time curve ``||g_t||``, t = 0 .. T-1 (module docstring)."""
    out: dict[str, float] = {}
    if not norms:
        return out
    first, last = float(norms[0]), float(norms[-1])
    out["diag/grad_norm_first"], out["diag/grad_norm_last"] = first, last
    if last > 0 and math.isfinite(last) and math.isfinite(first):
        out["diag/grad_ratio_first_last"] = first / last
        if first > 0:
            out["diag/grad_log10_ratio_first_last"] = math.log10(first) - math.log10(last)
    points = [(t, math.log10(v)) for t, v in enumerate(norms) if v > 0 and math.isfinite(v)]
    if len(points) >= 2:
        n = len(points)
        mt = sum(t for t, _ in points) / n
        my = sum(y for _, y in points) / n
        var = sum((t - mt) ** 2 for t, _ in points)
        if var > 0:
            slope = sum((t - mt) * (y - my) for t, y in points) / var
            out["diag/grad_decay_per_100_steps"] = 100.0 * slope
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _finite(values: Sequence[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


@dataclass
class Measurement:
    step: int
    grad_norm: list[float]
    metrics: dict[str, float] = field(default_factory=dict)


class Diagnostics:
    """Measurements every ``diagnostics.every`` steps (``__call__``); ``finish`` logs figures and raw numbers.

    See the module docstring for the definition of every reported quantity.
    """

    def __init__(
        self,
        settings: DiagnosticsSettings,
        model: nn.Module,
        task: Task,
        device: torch.device,
        output_dir: Path,
    ) -> None:
        self.settings = settings
        self.task = task
        self.output_dir = Path(output_dir)
        self.dtype = DTYPES[settings.dtype]
        self.readout: str = model.readout
        self.bidirectional: bool = model.bidirectional
        self.fused = isinstance(model.encoder, FusedEncoder)
        if self.fused:
            self.encoder = loop_copy(model.encoder).to(self.dtype)
        else:
            self.encoder = copy.deepcopy(model.encoder).to(self.dtype)
        self.encoder.eval()
        self.head = copy.deepcopy(model.head).to(self.dtype).eval().requires_grad_(False)
        from rnnbench.train import stream_seed

        gen = torch.Generator(device=device).manual_seed(stream_seed(settings.seed, "diagnostics"))
        self.batch = _batch_as(task.sample(settings.batch_size, gen), self.dtype)
        self.has_gates = any(hasattr(c, "gate_activations") for c in self.encoder.cells())
        self.measurements: list[Measurement] = []
        self.skipped: list[int] = []
        self.error: str | None = None
        self._model: nn.Module | None = None
        self._last_step: int | None = None

    @classmethod
    def from_config(
        cls, cfg: Any, model: nn.Module, task: Task, device: torch.device, output_dir: Path
    ) -> Diagnostics | None:
        """The diagnostics of a run, or None when ``diagnostics.enabled`` is false or the model has no
        loop/fused encoder to measure."""
        settings = DiagnosticsSettings.from_node(cfg)
        if not settings.enabled:
            return None
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, (LoopEncoder, FusedEncoder)) or not hasattr(model, "head"):
            log.warning("diagnostics: the model has no LoopEncoder/FusedEncoder; diagnostics are off for this run")
            return None
        return cls(settings, model, task, device, output_dir)

    def __call__(self, step: int, model: nn.Module) -> dict[str, float] | None:
        self._model, self._last_step = model, step
        if step % self.settings.every or self.error is not None:
            return None
        return self.measure(step, model)

    def _sync(self, model: nn.Module) -> bool:
        """Copy the model's weights into the measurement copy; False if any is non-finite."""
        with torch.no_grad():
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                return False
            if self.fused:
                copy_fused_into_loop(model.encoder, self.encoder)
            else:
                self.encoder.load_state_dict(model.encoder.state_dict())
            self.head.load_state_dict(model.head.state_dict())
        return True

    def measure(self, step: int, model: nn.Module) -> dict[str, float] | None:
        """Measure now; returns the metrics (finite values only), or None when the weights are not finite."""
        started = time.perf_counter()
        try:
            if not self._sync(model):
                self.skipped.append(step)
                return None
            tally = _GateTally(self.settings.saturation) if self.has_gates else None
            grads = _hidden_gradients(self.encoder, self.head, self.task, self.batch, self.readout,
                                      self.bidirectional, tally)
            norms = torch.linalg.vector_norm(grads.flatten(1), dim=1).cpu().tolist()
            metrics = gradient_summary(norms)
            metrics.update(spectra(self.encoder))
            for gate, (low, high) in (tally.fractions() if tally is not None else {}).items():
                key = metric_name(gate)
                metrics[f"diag/gate_saturation/{key}"] = low + high
                metrics[f"diag/gate_saturation_low/{key}"] = low
                metrics[f"diag/gate_saturation_high/{key}"] = high
        except Exception as exc:  # a broken measurement must not cost the training run
            self.error = f"step {step}: {type(exc).__name__}: {exc}"
            log.warning("diagnostics failed at step %d and are off for the rest of this run", step, exc_info=True)
            return None
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        metrics["diag/seconds"] = time.perf_counter() - started
        self.measurements.append(Measurement(step, norms, metrics))
        return metrics

    def raw(self) -> dict[str, Any]:
        """The raw numbers of this run, as written to ``gradient_flow.json`` (format in :func:`gradient_flow_figure`)."""
        s = self.settings
        return {
            "format": FORMAT_VERSION,
            "cell": s.cell,
            "task": s.task,
            "dependency_length": s.dependency_length,
            "sequence_length": int(self.batch.x.shape[1]),
            "readout": self.readout,
            "batch_size": s.batch_size,
            "dtype": s.dtype,
            "path": "fused" if self.fused else "loop",
            "steps": [m.step for m in self.measurements],
            "grad_norm": [_finite(m.grad_norm) for m in self.measurements],
            "metrics": [m.metrics for m in self.measurements],
            "skipped_steps": self.skipped,
            "error": self.error,
        }

    def title(self) -> str:
        s = self.settings
        length = s.dependency_length if s.dependency_length is not None else self.batch.x.shape[1]
        return f"{s.cell or 'cell'} on {s.task or 'task'}, T={length}"

    def finish(self, tracker: Any) -> None:
        """Measure at the last step (if not done yet) and log the figures and the raw numbers as artifacts."""
        if (
            self._model is not None
            and self._last_step is not None
            and self.error is None
            and not any(m.step == self._last_step for m in self.measurements)
            and self._last_step not in self.skipped
        ):
            metrics = self.measure(self._last_step, self._model)
            if metrics:
                tracker.log_metrics(metrics, self._last_step)
        folder = self.output_dir / ARTIFACT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        raw = self.raw()
        files = [folder / RAW_FILE]
        files[0].write_text(json.dumps(raw))
        if self.settings.figures and self.measurements:
            try:
                files += draw_run_figures(raw, folder, self.title())
            except Exception:
                log.warning("diagnostics: could not draw the figures", exc_info=True)
        for path in files:
            tracker.log_artifact(path, ARTIFACT_DIR)
        tracker.flush()


def _log10_rows(rows: list[list[float | None]]) -> Any:
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(values)
    out[~np.isfinite(out)] = np.nan
    return out


def draw_run_figures(raw: dict[str, Any], folder: Path, title: str) -> list[Path]:
    """Write ``gradient_heatmap.png`` and ``gradient_latest.png`` of one run's raw numbers into ``folder``."""
    import numpy as np
    from matplotlib.figure import Figure

    steps = raw["steps"]
    rows = raw["grad_norm"]
    length = max(len(r) for r in rows)
    rows = [list(r) + [None] * (length - len(r)) for r in rows]
    logs = _log10_rows(rows)  # (measurements, T)

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    edges = np.array(steps, dtype=float)
    if len(edges) == 1:
        step_edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    else:
        mids = (edges[1:] + edges[:-1]) / 2
        step_edges = np.concatenate([[edges[0] - (mids[0] - edges[0])], mids, [edges[-1] + (edges[-1] - mids[-1])]])
    mesh = ax.pcolormesh(step_edges, np.arange(length + 1) - 0.5, logs.T, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label=r"$\log_{10}\,\|\partial L / \partial h_t\|$")
    ax.set_xlabel("training step")
    ax.set_ylabel("time step t")
    ax.set_title(f"Gradient norm through time: {title}")
    heatmap = folder / HEATMAP_FILE
    fig.savefig(heatmap, dpi=110)

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    t = np.arange(length)
    for index, (step, row) in enumerate(zip(steps, rows)):
        values = np.array([np.nan if v is None or v <= 0 else v for v in row], dtype=float)
        latest = index == len(rows) - 1
        ax.plot(t, values, color="C0" if latest else "0.6", alpha=1.0 if latest else 0.25 + 0.5 * index / len(rows),
                linewidth=2.0 if latest else 0.8, label=f"step {step}" if latest else None)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
    ax.set_title(f"Gradient norm through time at step {steps[-1]}: {title}")
    ax.legend(loc="best")
    ax.grid(True, which="major", alpha=0.3)
    latest_path = folder / LATEST_FILE
    fig.savefig(latest_path, dpi=110)
    return [heatmap, latest_path]


def gradient_flow_figure(runs: list[dict[str, Any]], normalize: bool = True) -> Figure:
    """Gradient-through-time curves of several runs: one panel per cell, side by side, one curve per length.

    Each element of ``runs`` is a run's raw numbers, as written to ``diagnostics/gradient_flow.json`` and
    returned by :func:`load_run_arrays`. Keys used:

    - ``grad_norm``: list of rows, one per measurement (training step), each ``[||g_0||, ..., ||g_{T-1}||]``
      (``null`` where non-finite); the last row (the latest measurement) is drawn. A flat list is one row.
    - ``cell`` (panel), ``dependency_length`` (curve colour and label), optional ``task``, ``steps`` (the
      training step of each row) and ``label`` (overrides the curve's label).

    The x-axis is the number of steps before the output step (``T - 1 - t``), so curves of different lengths
    line up; with ``normalize`` the y-axis is ``||g_t|| / ||g_{T-1}||`` (log scale), else ``||g_t||``.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    cells: list[str] = []
    for run in runs:
        name = str(run.get("cell") or "?")
        if name not in cells:
            cells.append(name)
    lengths = sorted({int(r["dependency_length"]) for r in runs if r.get("dependency_length") is not None})
    cmap = colormaps["viridis"]
    colour = {n: cmap(0.85 * i / max(1, len(lengths) - 1)) for i, n in enumerate(lengths)}
    width = max(1, len(cells))
    fig = Figure(figsize=(3.6 * width + 0.6, 4.2), layout="constrained")
    axes = fig.subplots(1, width, sharey=True, squeeze=False)[0]
    tasks = sorted({str(r["task"]) for r in runs if r.get("task")})
    for ax, cell in zip(axes, cells):
        mine = [r for r in runs if str(r.get("cell") or "?") == cell]
        mine.sort(key=lambda r: (r.get("dependency_length") or 0))
        for run in mine:
            rows = run.get("grad_norm") or []
            if rows and not isinstance(rows[0], (list, tuple)):
                rows = [rows]
            if not rows:
                continue
            row = np.array([np.nan if v is None else float(v) for v in rows[-1]], dtype=float)
            if normalize:
                end = row[-1]
                row = row / end if np.isfinite(end) and end > 0 else np.full_like(row, np.nan)
            row[~(row > 0)] = np.nan
            lag = np.arange(len(row))[::-1]
            n = run.get("dependency_length")
            label = run.get("label") or (f"T={n}" if n is not None else f"length {len(row)}")
            steps = run.get("steps")
            if steps and not run.get("label"):
                label += f" (step {steps[-1]})"
            ax.plot(lag, row, color=colour.get(int(n)) if n is not None else None, linewidth=1.6, label=label)
        ax.set_yscale("log")
        ax.set_title(cell)
        ax.set_xlabel("time steps before the output (T - 1 - t)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel(
        r"$\|\partial L/\partial h_t\| \,/\, \|\partial L/\partial h_{T-1}\|$" if normalize
        else r"$\|\partial L/\partial h_t\|$"
    )
    fig.suptitle("Gradient norm through time" + (f" on {', '.join(tasks)}" if tasks else ""))
    return fig


def load_run_arrays(run_id: str, tracking_uri: str | None = None, client: Any = None) -> dict[str, Any]:
    """The raw numbers (``diagnostics/gradient_flow.json``) of MLflow run ``run_id``, plus ``run_id``.

    ``cell``, ``task`` and ``dependency_length`` are filled from the run's tags and params when the file lacks
    them. Raises ``FileNotFoundError`` when the run has no diagnostics artifact.
    """
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{RAW_FILE}", tmp)
        except Exception as exc:
            raise FileNotFoundError(f"run {run_id} has no {ARTIFACT_DIR}/{RAW_FILE} artifact: {exc}") from exc
        raw = json.loads(Path(local).read_text())
    raw["run_id"] = run_id
    if not raw.get("cell") or not raw.get("task") or raw.get("dependency_length") is None:
        run = client.get_run(run_id)
        raw["cell"] = raw.get("cell") or run.data.tags.get("rnnbench.cell", "")
        raw["task"] = raw.get("task") or run.data.tags.get("rnnbench.task", "")
        if raw.get("dependency_length") is None and "task.dependency_length" in run.data.params:
            raw["dependency_length"] = int(run.data.params["task.dependency_length"])
    return raw


def find_runs_arrays(
    tracking_uri: str,
    experiment: str = "rnnbench",
    cells: Sequence[str] | None = None,
    lengths: Sequence[int] | None = None,
    parent_run: str | None = None,
    task: str | None = None,
) -> list[dict[str, Any]]:
    """Raw numbers of the newest finished run of every (cell, task, length) in ``experiment`` that has them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError("--experiment", experiment, f"an experiment of {tracking_uri}")
    filters = ["attributes.status = 'FINISHED'"]
    if parent_run:
        filters.append(f"tags.`mlflow.parentRunId` = '{parent_run}'")
    if task:
        filters.append(f"tags.`rnnbench.task` = '{task}'")
    runs = client.search_runs(
        [found.experiment_id], filter_string=" and ".join(filters), order_by=["attributes.start_time DESC"],
        max_results=5000,
    )
    seen: set[tuple[str, str, str]] = set()
    out: list[dict[str, Any]] = []
    for run in runs:
        cell = run.data.tags.get("rnnbench.cell", "")
        length = run.data.params.get("task.dependency_length", "")
        key = (cell, run.data.tags.get("rnnbench.task", ""), length)
        if key in seen or (cells and cell not in cells) or (lengths and length not in {str(n) for n in lengths}):
            continue
        try:
            raw = load_run_arrays(run.info.run_id, client=client)
        except FileNotFoundError:
            continue
        if raw.get("grad_norm"):
            seen.add(key)
            out.append(raw)
    order = {c: i for i, c in enumerate(cells or [])}
    out.sort(key=lambda r: (order.get(r["cell"], len(order)), r["cell"], r.get("dependency_length") or 0))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rnnbench.diagnostics figure``: the side-by-side figure of the runs in a tracking store."""
    from rnnbench.tracking import resolve_tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = argparse.ArgumentParser(prog="python -m rnnbench.diagnostics")
    sub = parser.add_subparsers(dest="command", required=True)
    fig = sub.add_parser("figure", help="gradient-through-time curves of several runs, one panel per cell")
    fig.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else ./mlflow.db")
    fig.add_argument("--experiment", default="rnnbench")
    fig.add_argument("--cells", nargs="*", help="cells to draw, in this order (default: all)")
    fig.add_argument("--lengths", nargs="*", type=int, help="dependency lengths to draw (default: all)")
    fig.add_argument("--task", default=None, help="only runs on this task")
    fig.add_argument("--parent-run", default=None, help="only the jobs of this sweep (its parent run id)")
    fig.add_argument("--raw", action="store_true", help="plot ||dL/dh_t|| instead of the ratio to the output step")
    fig.add_argument("-o", "--output", type=Path, default=Path("gradient_flow.png"))
    args = parser.parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    runs = find_runs_arrays(uri, args.experiment, args.cells, args.lengths, args.parent_run, args.task)
    if not runs:
        print(f"no finished run with diagnostics in experiment {args.experiment!r} of {uri}")
        return 1
    figure = gradient_flow_figure(runs, normalize=not args.raw)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=120)
    print(f"{args.output}: {len(runs)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
