"""Diagnostics: gradient norm through time against the analytic Jacobian product, spectra, gate saturation,
the loop twin of a fused encoder, the figures and artifacts, and the ``gradient_flow`` preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rnnbench.base import Batch
from rnnbench.diagnostics import (
    Diagnostics,
    DiagnosticsSettings,
    gradient_summary,
    hidden_state_gradients,
    spectra,
)
from rnnbench.diagnostics_figures import gradient_flow_figure
from rnnbench.diagnostics_runs import load_run_arrays
from rnnbench.errors import ConfigError
from rnnbench.layers import LoopEncoder
from rnnbench.model import SequenceModel, build_model


class RecordingTracker:
    run_id = "test"

    def __init__(self) -> None:
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, v))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def flush(self) -> None:
        pass


def adding(registry, length: int):
    return registry.task("adding").task(dependency_length=length)


def tanh_model(registry, task, hidden: int) -> SequenceModel:
    spec = registry.cell("rnn_tanh")
    encoder = LoopEncoder(lambda i, h: spec.cell(i, h), task.input_size, hidden)
    return SequenceModel(encoder, hidden, False, task.output_size, task.readout).double()


def batch64(task, size: int, seed: int = 0) -> Batch:
    b = task.sample(size, torch.Generator().manual_seed(seed))
    return Batch(x=b.x.double(), y=b.y.double(), mask=b.mask, extras=b.extras)


def set_recurrence(model: SequenceModel, scale: float, input_scale: float) -> None:
    """W_hh = scale * Q (Q orthogonal), tiny input weights and zero biases: tanh' ~ 1, so each step back
    multiplies the gradient norm by ~scale."""
    cell = model.encoder.cells()[0]
    hidden = cell.hidden_size
    q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    with torch.no_grad():
        cell.weight_hh.copy_(scale * q)
        cell.weight_ih.mul_(input_scale)
        cell.bias_ih.zero_()
        cell.bias_hh.zero_()


def norms_of(grads: torch.Tensor) -> list[float]:
    return torch.linalg.vector_norm(grads.flatten(1), dim=1).tolist()


def test_tanh_gradient_matches_the_jacobian_product(registry):
    torch.manual_seed(0)
    task = adding(registry, 6)
    model = tanh_model(registry, task, 3)
    batch = batch64(task, 2)
    grads = hidden_state_gradients(model, task, batch)  # (T, B, H)
    assert grads.shape == (6, 2, 3)

    cell = model.encoder.cells()[0]
    w_ih, w_hh, b = cell.weight_ih.detach(), cell.weight_hh.detach(), (cell.bias_ih + cell.bias_hh).detach()
    h = torch.zeros(2, 3, dtype=torch.float64)
    hs = []
    for t in range(6):
        h = torch.tanh(batch.x[:, t] @ w_ih.T + h @ w_hh.T + b)
        hs.append(h)
    w_out = model.head.weight.detach()  # (1, H)
    y_hat = hs[-1] @ w_out.T + model.head.bias.detach()
    expected = [torch.zeros(2, 3, dtype=torch.float64)] * 6
    expected[5] = 2.0 / 2 * (y_hat - batch.y) @ w_out  # d mean((y_hat - y)^2) / d h_{T-1}
    for t in range(4, -1, -1):  # g_t = J_{t+1}^T g_{t+1}, J_{t+1} = diag(1 - h_{t+1}^2) W_hh
        expected[t] = (expected[t + 1] * (1 - hs[t + 1] ** 2)) @ w_hh
    torch.testing.assert_close(grads, torch.stack(expected), rtol=1e-10, atol=1e-14)


def test_small_recurrent_weights_vanish_geometrically(registry):
    torch.manual_seed(0)
    task = adding(registry, 30)
    model = tanh_model(registry, task, 8)
    set_recurrence(model, 0.3, 1e-3)
    norms = norms_of(hidden_state_gradients(model, task, batch64(task, 4)))
    ratios = [norms[t] / norms[t + 1] for t in range(len(norms) - 1)]
    assert all(0.29 < r <= 0.3 + 1e-9 for r in ratios), ratios
    summary = gradient_summary(norms)
    assert summary["diag/grad_decay_per_100_steps"] == pytest.approx(100 * math.log10(1 / 0.3), rel=0.01)
    assert summary["diag/grad_ratio_first_last"] == pytest.approx(0.3**29, rel=0.05)
    assert summary["diag/grad_log10_ratio_first_last"] == pytest.approx(29 * math.log10(0.3), rel=0.01)


def test_large_recurrent_weights_grow(registry):
    torch.manual_seed(0)
    task = adding(registry, 20)
    model = tanh_model(registry, task, 8)
    set_recurrence(model, 1.5, 1e-6)
    norms = norms_of(hidden_state_gradients(model, task, batch64(task, 4)))
    assert all(norms[t] > 1.4 * norms[t + 1] for t in range(len(norms) - 1)), norms
    summary = gradient_summary(norms)
    assert summary["diag/grad_ratio_first_last"] > 1.4**19
    assert summary["diag/grad_decay_per_100_steps"] < 0


@pytest.mark.parametrize(("cell", "layers", "bidirectional"), [("rnn_tanh", 1, False), ("gru", 1, False),
                                                                ("lstm", 2, True)])
def test_loop_twin_of_a_fused_model_computes_the_same(registry, cell, layers, bidirectional):
    task = adding(registry, 7)
    spec = registry.cell(cell)
    torch.manual_seed(0)
    fused = build_model(spec, {}, task, 5, num_layers=layers, bidirectional=bidirectional, fused=True).double()
    torch.manual_seed(0)
    loop = build_model(spec, {}, task, 5, num_layers=layers, bidirectional=bidirectional, fused=False).double()
    loop.head.load_state_dict(fused.head.state_dict())  # the fused module's own init draws from the RNG first
    batch = batch64(task, 3)
    copy = fused.encoder.loop_twin()
    torch.testing.assert_close(copy(batch.x), fused.encoder(batch.x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hidden_state_gradients(fused, task, batch), hidden_state_gradients(loop, task, batch),
                               rtol=1e-9, atol=1e-14)


def test_spectra_of_known_matrices(registry):
    task = adding(registry, 5)
    model = tanh_model(registry, task, 2)
    cell = model.encoder.cells()[0]
    with torch.no_grad():
        cell.weight_hh.copy_(torch.tensor([[0.5, 10.0], [0.0, -0.4]]))
    values = spectra(model.encoder)
    assert values["diag/spectral_radius/weight_hh_l0"] == pytest.approx(0.5)
    assert values["diag/sigma_max/weight_hh_l0"] == pytest.approx(float(torch.linalg.matrix_norm(cell.weight_hh.detach(), 2)))
    assert values["diag/sigma_max/weight_hh_l0"] > 10

    lstm = build_model(registry.cell("lstm"), {}, task, 4, num_layers=2, bidirectional=True, fused=True)
    keys = set(spectra(lstm.encoder.loop_twin()))
    assert {f"diag/spectral_radius/weight_hh_l1_reverse_block{j}" for j in range(4)} <= keys
    assert "diag/sigma_max/weight_hh_l0" in keys


def settings(**kw) -> DiagnosticsSettings:
    base = dict(every=2, batch_size=4, cell="lstm", task="adding", dependency_length=12)
    return DiagnosticsSettings(**(base | kw))


def test_gate_saturation_of_a_saturated_forget_gate(registry, tmp_path):
    task = adding(registry, 12)
    torch.manual_seed(0)
    model = build_model(registry.cell("lstm"), {}, task, 6, fused=True)
    with torch.no_grad():
        model.encoder.rnn.bias_ih_l0[6:12] = 20.0  # forget gate ~ 1 everywhere
    diag = Diagnostics(settings(), model, task, torch.device("cpu"), tmp_path)
    metrics = diag.measure(2, model)
    assert metrics["diag/gate_saturation_high/forget"] == 1.0
    assert metrics["diag/gate_saturation/forget"] == 1.0
    assert metrics["diag/gate_saturation/input"] < 0.5
    for gate in ("input", "forget", "output"):
        low, high = metrics[f"diag/gate_saturation_low/{gate}"], metrics[f"diag/gate_saturation_high/{gate}"]
        assert metrics[f"diag/gate_saturation/{gate}"] == pytest.approx(low + high)

    torch.manual_seed(0)
    loop = build_model(registry.cell("lstm"), {}, task, 6, fused=False)
    if not hasattr(loop.encoder.cells()[0], "gate_activations"):
        pytest.skip("the lstm plugin has no gate_activations")
    loop_metrics = Diagnostics(settings(), loop, task, torch.device("cpu"), tmp_path).measure(2, loop)
    assert {"diag/gate_saturation/forget", "diag/gate_saturation/input"} <= set(loop_metrics)


def test_diagnostics_lifecycle_and_artifacts(registry, tmp_path):
    task = adding(registry, 12)
    torch.manual_seed(0)
    model = build_model(registry.cell("rnn_tanh"), {}, task, 6, fused=True)
    diag = Diagnostics.from_config(
        {"every": 2, "batch_size": 4, "cell": "rnn_tanh", "task": "adding", "dependency_length": 12},
        model, task, torch.device("cpu"), tmp_path,
    )
    assert not diag.due(1) and diag.due(2) and not diag.due(3)
    metrics = diag.measure(2, model)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert {"diag/grad_ratio_first_last", "diag/grad_decay_per_100_steps", "diag/sigma_max/weight_hh_l0",
            "diag/spectral_radius/weight_hh_l0", "diag/seconds"} <= set(metrics)
    tracker = RecordingTracker()
    diag.finish(tracker, model, 3)  # measures step 3, the last one
    assert [s for s, _ in tracker.metrics["diag/grad_norm_last"]] == [3]
    names = {p.name: a for p, a in tracker.artifacts}
    assert names == {"gradient_flow.json": "diagnostics", "gradient_heatmap.png": "diagnostics",
                     "gradient_latest.png": "diagnostics"}
    raw = json.loads((tmp_path / "diagnostics" / "gradient_flow.json").read_text())
    assert raw["steps"] == [2, 3] and raw["cell"] == "rnn_tanh" and raw["path"] == "fused"
    assert len(raw["grad_norm"]) == 2 and len(raw["grad_norm"][0]) == 12
    assert (tmp_path / "diagnostics" / "gradient_heatmap.png").stat().st_size > 1000


def test_non_finite_weights_are_skipped_not_logged(registry, tmp_path):
    task = adding(registry, 8)
    model = build_model(registry.cell("rnn_tanh"), {}, task, 4, fused=False)
    diag = Diagnostics(settings(), model, task, torch.device("cpu"), tmp_path)
    with torch.no_grad():
        model.encoder.cells()[0].weight_hh.fill_(float("nan"))
    assert diag.measure(2, model) is None
    tracker = RecordingTracker()
    diag.finish(tracker, model, 2)
    assert tracker.metrics == {}
    raw = json.loads((tmp_path / "diagnostics" / "gradient_flow.json").read_text())
    assert raw["skipped_steps"] == [2] and raw["steps"] == [] and raw["error"] is None


def test_settings_are_validated(registry, tmp_path):
    task = adding(registry, 8)
    model = build_model(registry.cell("rnn_tanh"), {}, task, 4)
    assert Diagnostics.from_config({"enabled": False}, model, task, torch.device("cpu"), tmp_path) is None
    with pytest.raises(ConfigError, match="diagnostics.every"):
        DiagnosticsSettings.from_node({"every": 0})
    with pytest.raises(ConfigError, match="diagnostics.saturation"):
        DiagnosticsSettings.from_node({"saturation": 0.7})
    with pytest.raises(ConfigError, match="diagnostics.bogus"):
        DiagnosticsSettings.from_node({"bogus": 1})


def test_gradient_flow_figure_one_panel_per_cell():
    runs = [
        {"cell": cell, "task": "adding", "dependency_length": n, "steps": [10, 20],
         "grad_norm": [[1.0] * n, [decay ** (n - 1 - t) for t in range(n)]]}
        for cell, decay in (("rnn_tanh", 0.5), ("lstm", 0.99)) for n in (10, 20)
    ]
    runs.append({"cell": "gru", "grad_norm": [None, 0.5, 1.0]})
    fig = gradient_flow_figure(runs)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["rnn_tanh", "lstm", "gru"]
    assert len(axes[0].get_lines()) == 2
    assert axes[0].get_yscale() == "log"


@pytest.mark.slow
def test_the_preset_composes_and_declares_the_grid(compose, cli):
    cfg = compose("experiment=gradient_flow")
    assert cfg.task.name == "adding" and cfg.trainer.steps <= 500 and cfg.diagnostics.enabled
    assert cfg.diagnostics.cell == cfg.cell.name and cfg.diagnostics.dependency_length == cfg.task.dependency_length
    out = cli("experiment=gradient_flow", "--cfg", "hydra", check=True).stdout
    assert "cell: rnn_tanh,rnn_relu,lstm,lstm1997,gru" in out
    assert "task.dependency_length: 50,100,200,400" in out


@pytest.mark.slow
def test_a_real_run_logs_diagnostics(cli, mlflow_uri):
    from mlflow.tracking import MlflowClient

    cli("trainer=smoke", "cell=gru", "task.dependency_length=15", "model.hidden_size=8", "diagnostics.every=5",
        f"tracking.uri={mlflow_uri}", "trainer.progress=none", check=True)
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rnnbench").experiment_id],
                                "tags.`rnnbench.cell` = 'gru'")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "diagnostics")} == {
        "diagnostics/gradient_flow.json", "diagnostics/gradient_heatmap.png", "diagnostics/gradient_latest.png"}
    metrics = run.data.metrics
    for key in ("diag/grad_ratio_first_last", "diag/grad_decay_per_100_steps", "diag/sigma_max/weight_hh_l0",
                "diag/spectral_radius/weight_hh_l0_block2", "diag/gate_saturation/update"):
        assert key in metrics
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "diag/grad_norm_last")]
    assert steps == [5, 10, 15, 20]
    raw = load_run_arrays(run.info.run_id, mlflow_uri)
    assert raw["cell"] == "gru" and raw["dependency_length"] == 15 and raw["steps"] == [5, 10, 15, 20]
    assert gradient_flow_figure([raw]).get_axes()[0].get_title() == "gru"


def test_diagnostics_do_not_change_training(compose, registry, tmp_path):
    from rnnbench.config import constructor_kwargs
    from conftest import train_one
    from rnnbench.tracking import NullTracker

    cfg = compose("trainer=smoke", "trainer.steps=6", "tracking=none", "cell=lstm", "model.hidden_size=6",
                  "task.dependency_length=8", "diagnostics.every=2", "model.dropout=0.0",
                  "trainer.final_eval_sequences=64")
    task = registry.task("adding").task(**constructor_kwargs(cfg.task))
    finals = []
    for on in (True, False):
        torch.manual_seed(0)
        model = build_model(registry.cell("lstm"), {}, task, 6, fused=False)
        diag = Diagnostics.from_config(cfg.diagnostics, model, task, torch.device("cpu"), tmp_path) if on else None
        tracker = NullTracker()
        train_one(cfg, model, task, tracker, diag)
        assert ("diag/grad_norm_last" in tracker.metrics) == on
        finals.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach())
    assert torch.equal(finals[0], finals[1])
