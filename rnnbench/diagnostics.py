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
has no per-step tensors: it is measured on its loop twin with the same weights (``FusedEncoder.loop_twin``).

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

``finish(tracker, model, step)`` logs, under the artifact folder ``diagnostics/``: ``gradient_heatmap.png`` (time step x
training step, colour = ``log10 ||g_t||``), ``gradient_latest.png`` (``||g_t||`` against ``t`` at the latest
measurement, log scale, earlier measurements faded) and ``gradient_flow.json``, the raw numbers (format in
:func:`rnnbench.diagnostics_figures.gradient_flow_figure`), which
:func:`rnnbench.diagnostics_runs.load_run_arrays` reads back from a run.

The side-by-side figure of several runs (:func:`gradient_flow_figure`), e.g. ``docs/gradient_flow.png``::

    rnnbench -m experiment=gradient_flow cell=rnn_tanh,lstm,gru task.dependency_length=50,100 \
        tracking.uri=sqlite:///gradient_flow.db
    rnnbench diagnostics figure --tracking-uri sqlite:///gradient_flow.db --cells rnn_tanh lstm gru \
        -o docs/gradient_flow.png
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnbench.base import Batch, RecurrentCell, State, Task
from rnnbench.evaluation import generator
from rnnbench.layers import FusedEncoder, LoopEncoder
from rnnbench.model import SequenceModel, loop_named_parameters

log = logging.getLogger("rnnbench")

ARTIFACT_DIR = "diagnostics"
RAW_FILE = "gradient_flow.json"
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
        """Read a composed config node (or a dict), checked by :func:`rnnbench.config.validate_diagnostics`."""
        from rnnbench.config import validate_diagnostics

        if node is None:
            return cls(enabled=False)
        if not isinstance(node, dict):
            from omegaconf import OmegaConf

            node = OmegaConf.to_container(node, resolve=True)
        validate_diagnostics(node)
        return cls(**node)


def metric_name(text: str) -> str:
    """``text`` with every character MLflow does not accept in a metric name replaced by ``_``."""
    return _UNSAFE.sub("_", text)


class _GateTally:
    """Running counts of saturated gate activations, kept on the device until :meth:`fractions`; used as the
    per-step hook of :func:`rnnbench.layers.unroll`."""

    def __init__(self, threshold: float) -> None:
        self.low, self.high = threshold, 1.0 - threshold
        self.counts: dict[str, list[Tensor | int]] = {}

    def __call__(self, cell: RecurrentCell, x_t: Tensor, state: State) -> None:
        with torch.no_grad():
            for name, values in cell.gate_activations(x_t, state).items():
                entry = self.counts.setdefault(name, [0, 0, 0])
                entry[0] = entry[0] + (values < self.low).sum()
                entry[1] = entry[1] + (values > self.high).sum()
                entry[2] = entry[2] + values.numel()

    def fractions(self) -> dict[str, tuple[float, float]]:
        """``{gate: (fraction below, fraction above)}``."""
        return {name: (float(low) / total, float(high) / total)
                for name, (low, high, total) in self.counts.items() if total}


def _batch_as(batch: Batch, dtype: torch.dtype) -> Batch:
    """``batch`` with its floating-point tensors converted to ``dtype``."""

    def conv(t: Tensor) -> Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    return Batch(x=conv(batch.x), y=conv(batch.y), mask=batch.mask, extras={k: conv(v) for k, v in batch.extras.items()})


def measurement_copy(model: SequenceModel, dtype: torch.dtype) -> SequenceModel:
    """A copy of ``model`` with a step-by-step encoder (a fused encoder's loop twin) in ``dtype``, in eval mode."""
    twin = copy.deepcopy(model)
    if isinstance(model.encoder, FusedEncoder):
        twin.encoder = model.encoder.loop_twin()
    return twin.to(dtype).eval()


def _hidden_gradients(model: SequenceModel, task: Task, batch: Batch, tally: _GateTally | None = None) -> Tensor:
    """(T, B, H) gradients of the loss with respect to the top layer's forward outputs (module docstring)."""
    encoder: LoopEncoder = model.encoder
    with torch.enable_grad():
        out, hs = encoder.probe(batch.x.detach(), on_step=tally)
        loss = task.loss(model.head(model.read(out)), batch)
        grads = torch.autograd.grad(loss, hs, allow_unused=True)
    return torch.stack([torch.zeros_like(h) if g is None else g for g, h in zip(grads, hs)])


def hidden_state_gradients(model: SequenceModel, task: Task, batch: Batch) -> Tensor:
    """``dL/dh_t`` for every step: a (T, B, H) tensor, in the model's dtype, for the top layer's forward cell,
    ``L = task.loss(model(batch.x), batch)`` without dropout; a fused model is measured on its loop twin."""
    dtype = next(model.parameters()).dtype
    return _hidden_gradients(measurement_copy(model, dtype), task, _batch_as(batch, dtype))


def spectra(encoder: LoopEncoder) -> dict[str, float]:
    """``diag/sigma_max/<name>`` and ``diag/spectral_radius/<name>`` of every recurrent weight (module docstring),
    named with torch's layer suffix (``weight_hh_l0``, ``weight_hh_l1_reverse``). Computed in float64 on the
    CPU; a matrix with a non-finite entry is skipped."""
    from rnnbench.layers import fused_names

    out: dict[str, float] = {}
    for cell, (_, suffix) in zip(encoder.cells(), fused_names(encoder.num_layers, encoder.bidirectional)):
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
    """Measurements of one run every ``diagnostics.every`` steps (:meth:`due`, :meth:`measure`); :meth:`finish`
    logs figures and raw numbers. :meth:`state` and :meth:`load_state` carry the measurements across a resume.

    See the module docstring for the definition of every reported quantity.
    """

    def __init__(self, settings: DiagnosticsSettings, model: SequenceModel, task: Task, device: torch.device,
                 output_dir: Path) -> None:
        self.settings = settings
        self.task = task
        self.output_dir = Path(output_dir)
        self.dtype = DTYPES[settings.dtype]
        self.fused = isinstance(model.encoder, FusedEncoder)
        self.copy = measurement_copy(model, self.dtype)
        gen = generator(settings.seed, "diagnostics", device)
        self.batch = _batch_as(task.sample(settings.batch_size, gen), self.dtype)
        self.has_gates = any(type(c).gate_activations is not RecurrentCell.gate_activations
                             for c in self.copy.encoder.cells())
        self.measurements: list[Measurement] = []
        self.skipped: list[int] = []
        self.error: str | None = None

    @classmethod
    def from_config(
        cls, cfg: Any, model: nn.Module, task: Task, device: torch.device, output_dir: Path
    ) -> Diagnostics | None:
        """The diagnostics of a run, or None when ``diagnostics.enabled`` is false or the model has no
        loop/fused encoder to measure."""
        settings = DiagnosticsSettings.from_node(cfg)
        if not settings.enabled:
            return None
        if not isinstance(model, SequenceModel) or not isinstance(model.encoder, (LoopEncoder, FusedEncoder)):
            log.warning("diagnostics: the model has no LoopEncoder/FusedEncoder; diagnostics are off for this run")
            return None
        return cls(settings, model, task, device, output_dir)

    def due(self, step: int) -> bool:
        return step % self.settings.every == 0 and self.error is None

    def _sync(self, model: SequenceModel) -> bool:
        """Copy the model's weights into the measurement copy; False if any is non-finite."""
        source = loop_named_parameters(model)
        with torch.no_grad():
            if not all(bool(torch.isfinite(p).all()) for p in source.values()):
                return False
            target = loop_named_parameters(self.copy)
            for name, p in source.items():
                target[name].copy_(p)
        return True

    def measure(self, step: int, model: SequenceModel) -> dict[str, float] | None:
        """Measure now; returns the metrics (finite values only), or None when the weights are not finite."""
        started = time.perf_counter()
        try:
            if not self._sync(model):
                self.skipped.append(step)
                return None
            tally = _GateTally(self.settings.saturation) if self.has_gates else None
            grads = _hidden_gradients(self.copy, self.task, self.batch, tally)
            norms = torch.linalg.vector_norm(grads.flatten(1), dim=1).cpu().tolist()
            metrics = gradient_summary(norms)
            metrics.update(spectra(self.copy.encoder))
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

    def state(self) -> dict[str, Any]:
        return {"measurements": [asdict(m) for m in self.measurements], "skipped": list(self.skipped),
                "error": self.error}

    def load_state(self, state: dict[str, Any]) -> None:
        self.measurements = [Measurement(**m) for m in state["measurements"]]
        self.skipped, self.error = list(state["skipped"]), state["error"]

    def raw(self) -> dict[str, Any]:
        """The raw numbers of this run, as written to ``gradient_flow.json`` (format in
        :func:`rnnbench.diagnostics_figures.gradient_flow_figure`)."""
        s = self.settings
        return {
            "format": FORMAT_VERSION,
            "cell": s.cell,
            "task": s.task,
            "dependency_length": s.dependency_length,
            "sequence_length": int(self.batch.x.shape[1]),
            "readout": self.copy.readout,
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

    def finish(self, tracker: Any, model: SequenceModel, step: int) -> None:
        """Measure at the last step (if not done yet) and log the figures and the raw numbers as artifacts."""
        if self.error is None and step not in self.skipped and not any(m.step == step for m in self.measurements):
            metrics = self.measure(step, model)
            if metrics:
                tracker.log_metrics(metrics, step)
        folder = self.output_dir / ARTIFACT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        raw = self.raw()
        files = [folder / RAW_FILE]
        files[0].write_text(json.dumps(raw))
        if self.settings.figures and self.measurements:
            try:
                from rnnbench.diagnostics_figures import draw_run_figures

                files += draw_run_figures(raw, folder, self.title())
            except Exception:
                log.warning("diagnostics: could not draw the figures", exc_info=True)
        for path in files:
            tracker.log_artifact(path, ARTIFACT_DIR)
