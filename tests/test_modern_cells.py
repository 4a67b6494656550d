"""The modern cells (minGRU, minLSTM, LRU, S6, sLSTM, IndRNN, orthogonal RNN): float64 references written from
the papers' equations (values and gradients), whole-sequence path == step path, stacked and bidirectional
models, the seed-parallel (vmap) path, initialisations, and a few training steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rnnbench.errors import ConfigError
from rnnbench.layers import LoopEncoder, RecurrentLayer, unroll
from rnnbench.manager import get_registry
from rnnbench.model import build_model, loop_named_parameters
from rnnbench.reference import modern as ref
from rnnbench.testing import config_defaults

REGISTRY = get_registry()
NAMES = ("mingru", "minlstm", "lru", "s6", "slstm", "indrnn", "orthogonal_rnn")
B, T, I, H = 3, 7, 4, 5
TOL = {"rtol": 1e-9, "atol": 1e-11}
PARALLEL = {"mingru": "log", "minlstm": "log", "lru": "chunked", "s6": "chunked"}
"""The parallel scan that ``scan=auto`` picks on an accelerator."""
KERNELS = {"mingru": "_MinScanBackward", "minlstm": "_MinScanBackward", "lru": "_LRUScanBackward",
           "s6": "_S6ScanBackward", "indrnn": "_IndScanBackward", "slstm": "_SLSTMScanBackward",
           "orthogonal_rnn": "_ElmanScanBackward"}
"""The rnnbench.kernels function each cell's CPU path runs, by its autograd node."""
CASES = [
    ("mingru", {"scan": "log"}),
    ("mingru", {"scan": "chunked"}),
    ("mingru", {"scan": "sequential"}),
    ("minlstm", {"scan": "log"}),
    ("minlstm", {"scan": "chunked"}),
    ("minlstm", {"scan": "sequential"}),
    ("lru", {"scan": "chunked"}),
    ("lru", {"output_activation": "gelu", "state_size": 3, "max_phase": 0.3, "scan": "sequential"}),
    ("s6", {"scan": "chunked"}),
    ("s6", {"d_state": 3, "dt_rank": 2, "scan": "sequential"}),
    ("slstm", {}),
    ("slstm", {"forget_gate": "exp"}),
    ("indrnn", {}),
    ("indrnn", {"nonlinearity": "tanh", "recurrent_init": "long", "horizon": 20}),
    ("orthogonal_rnn", {}),
    ("orthogonal_rnn", {"nonlinearity": "tanh", "recurrent_init": "cayley"}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]


def make(name: str, input_size: int = I, hidden_size: int = H, **overrides):
    spec = REGISTRY.cell(name)
    return spec.cell(input_size, hidden_size, **{**config_defaults(spec.config), **overrides})


def scan_kwargs(name: str) -> dict:
    """The cell's defaults with its parallel scan forced (``auto`` picks another path on the CPU)."""
    kwargs = config_defaults(REGISTRY.cell(name).config)
    return {**kwargs, "scan": PARALLEL[name]} if name in PARALLEL else kwargs


def perturbed(name: str, seed: int = 0, **overrides):
    """A float64 cell with every parameter moved off its structured init (so no term is trivially zero or one)."""
    torch.manual_seed(seed)
    cell = make(name, **overrides).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        if name == "indrnn":  # inside the bound, where clip's gradient is the identity
            cell.weight_hh.clamp_(-0.95 * cell.u_max, 0.95 * cell.u_max)
    return cell


def reference(name: str, cell, x: Tensor, p: dict[str, Tensor]) -> Tensor:
    if name in ("mingru", "minlstm"):
        return getattr(ref, name)(x, p["weight_ih"], p["bias_ih"])
    if name == "lru":
        return ref.lru(x, *(p[k] for k in ("nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D")),
                       output_activation=cell.output_activation)
    if name == "s6":
        return ref.s6(x, *(p[k] for k in ("weight_in", "bias_in", "weight_x", "weight_dt", "bias_dt", "A_log", "D")))
    if name == "slstm":
        return ref.slstm(x, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], cell.forget_gate)
    if name == "indrnn":
        return ref.indrnn(x, p["weight_ih"], p["bias_ih"], p["weight_hh"], cell.u_max, cell.nonlinearity)
    return ref.orthogonal_rnn(x, p["weight_ih"], p["bias"], p["parametrizations.weight_hh.original"],
                              cell.nonlinearity)


def steps_of(cell, x: Tensor) -> Tensor:
    return torch.stack(unroll(cell, x)[0], dim=1)


def value_and_grads(out: Tensor, up: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    return [out.detach(), *torch.autograd.grad((out * up).sum(), tensors)]


def data(seed: int, steps: int = T, batch: int = B, size: int = I) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, size, generator=g, dtype=torch.float64)
    up = torch.randn(batch, steps, H, generator=g, dtype=torch.float64)
    return x, up


# --- the equations ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_step_and_sequence_equal_the_reference(name: str, overrides: dict) -> None:
    """Values and gradients (w.r.t. x and every parameter) of both paths against the float64 reference."""
    cell = perturbed(name, **overrides)
    names = [n for n, _ in cell.named_parameters()]
    x, up = data(1)
    ref_params = {n: p.detach().clone().requires_grad_(True) for n, p in cell.named_parameters()}
    x_ref = x.clone().requires_grad_(True)
    expected = value_and_grads(reference(name, cell, x_ref, ref_params), up, [x_ref, *ref_params.values()])
    for path in ("step", "sequence"):
        xx = x.clone().requires_grad_(True)
        out = steps_of(cell, xx) if path == "step" else cell.forward_sequence(xx)
        got = value_and_grads(out, up, [xx, *cell.parameters()])
        for label, a, b in zip(["output", "dL/dx", *(f"dL/d{n}" for n in names)], got, expected):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name} {path} {label}: {m}")


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
@pytest.mark.parametrize("steps", [1, 50])
def test_sequence_path_equals_step_path(name: str, overrides: dict, steps: int) -> None:
    """forward_sequence == unroll of forward, values and gradients, in float64 (50 steps: 8 chunks of 7, padded)."""
    cell = perturbed(name, seed=2, **overrides)
    x, up = data(3, steps=steps)
    results = []
    for path in ("step", "sequence"):
        xx = x.clone().requires_grad_(True)
        out = steps_of(cell, xx) if path == "step" else cell.forward_sequence(xx)
        results.append(value_and_grads(out, up, [xx, *cell.parameters()]))
    for k, (a, b) in enumerate(zip(*results)):
        torch.testing.assert_close(b, a, **TOL, msg=lambda m: f"{name} tensor {k}: {m}")


class _Tiny:
    input_size, output_size, readout = I, 2, "sequence"


@pytest.mark.parametrize("name", NAMES)
def test_stacked_bidirectional_model_equals_the_step_path(name: str) -> None:
    spec = REGISTRY.cell(name)
    torch.manual_seed(0)
    model = build_model(spec, scan_kwargs(name), _Tiny(), H, num_layers=2, bidirectional=True, fused=False).double()
    assert model.encoder.cells()[0].forward_sequence(torch.zeros(1, 2, I, dtype=torch.float64)) is not None
    x, _ = data(4)
    up = torch.randn(B, T, 2, dtype=torch.float64)
    params = list(model.parameters())
    results = []
    for path in ("sequence", "step"):
        xx = x.clone().requires_grad_(True)
        out = model(xx) if path == "sequence" else model.head(model.read(model.encoder.probe(xx)[0]))
        results.append(value_and_grads(out, up, [xx, *params]))
    assert all(torch.isfinite(t).all() for t in results[0])
    for k, (a, b) in enumerate(zip(*results)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name} tensor {k}: {m}")


@pytest.mark.parametrize("name", NAMES)
def test_seed_parallel_vmap_path(name: str) -> None:
    """The seed-parallel population runs the model through vmap over functional_call: the sequence paths work
    there and give each member's own output."""
    from rnnbench.batched import VmapModel

    spec = REGISTRY.cell(name)
    kwargs = scan_kwargs(name)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(spec, kwargs, _Tiny(), H, num_layers=1, bidirectional=True, fused=False))
    named = [loop_named_parameters(m) for m in models]
    params = {n: torch.stack([d[n].detach() for d in named]).requires_grad_(True) for n in named[0]}
    x = torch.randn(2, B, T, I)
    out = VmapModel(spec, kwargs, _Tiny(), H, bidirectional=True)(params, x)
    out.sum().backward()
    for k, model in enumerate(models):
        torch.testing.assert_close(out[k], model(x[k]), rtol=1e-4, atol=1e-5)
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in params.values())


def test_layers_train_on_the_sequence_path_and_probe_on_the_steps() -> None:
    calls = {"sequence": 0, "step": 0}
    base = type(make("mingru"))

    class Spy(base):
        def forward(self, x, h):
            calls["step"] += 1
            return super().forward(x, h)

        def forward_sequence(self, x):
            calls["sequence"] += 1
            return super().forward_sequence(x)

    encoder = LoopEncoder(lambda i, h: Spy(i, h, scan="log"), I, H, num_layers=2, bidirectional=True).double()
    x, _ = data(5)
    out = encoder(x)
    assert calls == {"sequence": 4, "step": 0}
    probed, top = encoder.probe(x)
    assert calls == {"sequence": 4, "step": 4 * T}
    torch.testing.assert_close(out, probed, **TOL)
    # the step path's h_t carry the recurrence: dL/dh_0 includes what flows back from later steps
    layer = RecurrentLayer(lambda i, h: Spy(i, h, scan="log"), I, H, bidirectional=False).double()
    seq_out, seq_steps = layer(x)
    assert len(seq_steps) == T and torch.equal(torch.stack(seq_steps, 1), seq_out)
    _, step_steps = layer(x, sequence=False)
    loss = lambda steps: steps[-1].sum()  # noqa: E731
    (g_step,) = torch.autograd.grad(loss(step_steps), step_steps[0])
    assert g_step.abs().sum() > 0  # through the recurrence
    assert torch.autograd.grad(loss(seq_steps), seq_steps[0], allow_unused=True)[0] is None


def autograd_nodes(out: Tensor) -> set[str]:
    """The names of every node in the autograd graph of ``out``."""
    nodes, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            todo.extend(fn for fn, _ in node.next_functions)
    return {node.name() for node in nodes}


def test_whole_sequence_paths_on_an_accelerator_and_on_the_cpu(monkeypatch) -> None:
    """scan=auto: the parallel scan on an accelerator, the time loop of rnnbench.kernels on the CPU; the other
    modern cells take their kernel everywhere."""
    from rnnbench import native
    from rnnbench.plugins._common import resolve_scan

    x = torch.zeros(2, 3, I)
    for name, parallel in PARALLEL.items():
        assert config_defaults(REGISTRY.cell(name).config)["scan"] == "auto"
        assert KERNELS[name] in autograd_nodes(make(name).forward_sequence(x)), name
        assert make(name, scan=parallel).forward_sequence(x).shape == (2, 3, H)
        assert resolve_scan("auto", torch.device("cuda"), parallel, "sequential") == parallel
        assert resolve_scan("auto", torch.device("cpu"), parallel, "sequential") == "sequential"
        assert resolve_scan("sequential", torch.device("cuda"), parallel) == "sequential"
    for name in ("indrnn", "slstm", "orthogonal_rnn"):
        assert KERNELS[name] in autograd_nodes(make(name).forward_sequence(x)), name
    monkeypatch.setattr(native, "ops", lambda: None)  # no compiled loops: these step loops measured faster
    assert all(make(name).forward_sequence(x) is None for name in ("mingru", "minlstm", "s6"))
    for name in ("lru", "indrnn", "slstm", "orthogonal_rnn"):  # Python loops measured faster than the steps
        assert KERNELS[name] in autograd_nodes(make(name).forward_sequence(x)), name


# --- what each cell's paper specifies ---------------------------------------------------------------------------


def test_min_rnn_decay_at_zero_input() -> None:
    cell = perturbed("mingru")
    z0 = torch.sigmoid(cell.bias_ih[:H])
    torch.testing.assert_close(cell.recurrent_weights()["decay_at_zero_input"], 1 - z0, **TOL)
    cell = perturbed("minlstm")
    f0, i0 = torch.sigmoid(cell.bias_ih[:H]), torch.sigmoid(cell.bias_ih[H:2 * H])
    torch.testing.assert_close(cell.recurrent_weights()["decay_at_zero_input"], f0 / (f0 + i0), **TOL)
    assert set(cell.gate_activations(torch.zeros(2, I, dtype=torch.float64), None)) == {"forget", "input"}


def test_min_rnn_candidate_is_positive_and_continuous() -> None:
    from rnnbench.plugins.mingru import g, log_g

    v = torch.linspace(-30, 30, 601, dtype=torch.float64)
    assert (g(v) > 0).all()
    torch.testing.assert_close(log_g(v), torch.log(g(v)), **TOL)
    assert g(torch.tensor(0.0)) == 0.5 and abs(g(torch.tensor(-1e-9)).item() - 0.5) < 1e-9


def test_min_rnn_log_space_scan_in_float32_over_1000_steps() -> None:
    """The paper's scan in float32 against the float64 step: the error grows with the summed log-decays."""
    torch.manual_seed(0)
    for name in ("mingru", "minlstm"):
        cell = make(name, 2, 16, scan="log")
        x = torch.randn(4, 1000, 2)
        with torch.no_grad():
            exact = steps_of(cell.double(), x.double())
            fast = cell.float().forward_sequence(x).double()
        rel = ((fast - exact).abs() / exact.abs().clamp(min=1e-3)).max().item()
        assert rel < 1e-3, (name, rel)


def test_lru_ring_initialisation() -> None:
    torch.manual_seed(0)
    cell = make("lru", 3, 64, r_min=0.5, r_max=0.9, max_phase=math.pi / 10).double()
    modulus = torch.exp(-torch.exp(cell.nu_log))
    assert 0.5 <= modulus.min() and modulus.max() <= 0.9 and modulus.std() > 0.05
    phase = torch.exp(cell.theta_log)
    assert 0 < phase.min() and phase.max() <= math.pi / 10
    torch.testing.assert_close(torch.exp(cell.gamma_log), torch.sqrt(1 - modulus**2), rtol=1e-6, atol=0)  # float32 init
    torch.testing.assert_close(cell.recurrent_weights()["lambda_modulus"], modulus, **TOL)
    assert cell.state_size == 64 and make("lru", 3, 64, state_size=7).B_re.shape == (7, 3)
    assert all(s.shape == (2, 64) for s in cell.init_state(2))
    # |lambda|^2 is uniform on [r_min^2, r_max^2] (uniform on the ring's area): its mean is the midpoint
    big = make("lru", 1, 4000, r_min=0.0, r_max=0.99)
    mean_sq = torch.exp(-2 * torch.exp(big.nu_log)).mean().item()
    assert abs(mean_sq - 0.99**2 / 2) < 0.02


def test_s6_initialisation() -> None:
    torch.manual_seed(0)
    cell = make("s6", 3, 40, d_state=6)
    A = -torch.exp(cell.A_log)
    assert torch.allclose(A, -torch.arange(1.0, 7.0).expand(40, 6))
    assert torch.equal(cell.D, torch.ones(40))
    dt = torch.nn.functional.softplus(cell.bias_dt)
    assert 0.001 * 0.999 <= dt.min() and dt.max() <= 0.1 * 1.001
    assert cell.dt_rank == 3 and cell.weight_x.shape == (3 + 12, 40)
    assert cell.init_state(2)[0].shape == (2, 40, 6)
    decay = cell.recurrent_weights()["decay_at_zero_input"]  # exp(Delta(x=0) A), Delta(0) near the init's dt
    assert decay.shape == (240,) and 0 < decay.min() and decay.max() < 1


def test_s6_is_selective() -> None:
    """The step size, B and C depend on the input: the same state decays differently under different inputs."""
    cell = perturbed("s6")
    state = (torch.ones(1, H, cell.d_state, dtype=torch.float64),)
    h_a = cell(torch.zeros(1, I, dtype=torch.float64), state)[1][0]
    h_b = cell(torch.full((1, I), 3.0, dtype=torch.float64), state)[1][0]
    assert (h_a - h_b).abs().max() > 1e-3


def test_slstm_stabiliser_keeps_float32_finite_where_the_exponential_overflows() -> None:
    torch.manual_seed(0)
    cell = make("slstm", I, H)
    with torch.no_grad():
        cell.bias_ih[:H] += 120.0  # exp(120) overflows float32
    x, _ = data(6)
    out = steps_of(cell, x.float())
    assert torch.isfinite(out).all()
    p = {n: q.detach().double() for n, q in cell.named_parameters()}
    expected = ref.slstm(x, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    h, c, n, m = cell.init_state(B)
    assert torch.equal(m, torch.full((B, H), -torch.inf)) and not (h.any() or c.any() or n.any())
    assert set(cell.gate_activations(x[:, 0].float(), (h, c, n, m))) == {"forget", "output"}
    assert set(make("slstm", forget_gate="exp").gate_activations(x[:, 0].float(), (h, c, n, m))) == {"output"}


def test_slstm_forget_bias_is_the_effective_bias() -> None:
    cell = make("slstm", forget_bias=3.0)
    assert cell.blocks == ("i", "f", "z", "o")
    assert torch.equal((cell.bias_ih + cell.bias_hh)[H:2 * H], torch.full((H,), 3.0))


def test_indrnn_bound_initialisation_and_clip() -> None:
    torch.manual_seed(0)
    cell = make("indrnn", 2, 500, horizon=100, magnitude=2.0)
    u_max = 2.0 ** (1 / 100)
    assert cell.u_max == pytest.approx(u_max)
    assert 0 <= cell.weight_hh.min() < 0.05 and 0.95 < cell.weight_hh.max() <= u_max
    long = make("indrnn", 2, 500, horizon=100, recurrent_init="long").weight_hh
    assert 2.0 ** (-1 / 100) <= long.min() and long.max() <= u_max
    with torch.no_grad():
        cell.weight_hh[:2] = torch.tensor([3.0, -3.0])
    u = cell.recurrent()
    assert u[0].item() == pytest.approx(u_max) and u[1].item() == pytest.approx(-u_max)
    torch.testing.assert_close(cell.recurrent_weights()["weight_hh"], u)
    u.sum().backward()  # straight-through: a clipped weight still gets the gradient, so it can come back
    assert torch.equal(cell.weight_hh.grad, torch.ones(500))
    free = make("indrnn", 2, 4, clip_recurrent=False)
    with torch.no_grad():
        free.weight_hh.fill_(3.0)
    assert torch.equal(free.recurrent(), free.weight_hh)


def test_orthogonal_rnn_stays_orthogonal_while_training() -> None:
    torch.manual_seed(0)
    for init in ("henaff", "cayley"):
        cell = make("orthogonal_rnn", 3, 9, recurrent_init=init).double()
        W = cell.weight_hh
        torch.testing.assert_close(W @ W.T, torch.eye(9, dtype=torch.float64), rtol=0, atol=1e-12)
        assert W[8, 8].item() == pytest.approx(1.0)  # odd size: the last unit has no rotation partner
        blocks = torch.block_diag(*[W[k:k + 2, k:k + 2] for k in range(0, 8, 2)], W[8:, 8:])
        torch.testing.assert_close(W, blocks, **TOL)  # block-diagonal rotations at init
    optimizer = torch.optim.Adam(cell.parameters(), lr=0.1)
    x, _ = data(7, size=3)
    for _ in range(3):
        optimizer.zero_grad()
        cell.forward_sequence(x).pow(2).sum().backward()
        optimizer.step()
    W = cell.weight_hh.detach()
    torch.testing.assert_close(W @ W.T, torch.eye(9, dtype=torch.float64), rtol=0, atol=1e-12)
    X = cell.parametrizations.weight_hh.original
    assert X.grad.triu().abs().sum() == 0 and X.grad.tril(-1).abs().sum() > 0  # only the strict lower triangle
    rec = cell.recurrent_weights()
    assert set(rec) == {"weight_hh"} and torch.allclose(rec["weight_hh"], W)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("lru", "r_max", 1.0), ("lru", "r_max", 0.5), ("lru", "max_phase", 7.0), ("lru", "state_size", 0),
        ("lru", "output_activation", "relu"), ("s6", "d_state", 0), ("s6", "dt_rank", -1), ("s6", "dt_min", 0.0),
        ("s6", "dt_max", 0.0001), ("slstm", "forget_gate", "tanh"), ("slstm", "forget_bias", math.nan),
        ("slstm", "recurrent_init", "xavier"), ("indrnn", "horizon", 0), ("indrnn", "horizon", 10**9),
        ("indrnn", "magnitude", 1.0), ("indrnn", "nonlinearity", "gelu"), ("indrnn", "recurrent_init", "eye"),
        ("orthogonal_rnn", "nonlinearity", "relu"), ("orthogonal_rnn", "recurrent_init", "identity"),
    ],
)
def test_bad_hyperparameters_name_the_key(name: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"cell\.{key}="):
        make(name, **{key: value})


def test_registered_with_equations_and_sources() -> None:
    for name in NAMES:
        spec = REGISTRY.cells[name]
        assert REGISTRY.providers[("cell", name)].startswith("rnnbench.plugins.")
        assert spec.description and "arXiv" in spec.source and spec.fused is None
        doc = spec.cell.__doc__
        assert doc and "math::" in doc and "arXiv" in doc, name


# --- training ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_few_training_steps_on_adding(registry, compose, name: str) -> None:
    from conftest import train_one

    from rnnbench.config import constructor_kwargs

    cfg = compose("task=adding", f"cell={name}", "trainer=smoke", "tracking=none", "model.hidden_size=8",
                  "trainer.steps=3", "trainer.batch_size=4", "trainer.eval_every=3", "trainer.device=cpu",
                  "trainer.progress=none", "optim.lr=0.01", "trainer.final_eval_sequences=16",
                  "task.dependency_length=22")
    task = registry.task("adding").task(**constructor_kwargs(cfg.task))
    torch.manual_seed(0)
    model = build_model(registry.cell(name), constructor_kwargs(cfg.cell), task, 8)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_one(cfg, model, task)
    assert result.step == 3 and math.isfinite(result.metrics["loss"])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_diagnostics_measure_every_new_cell(registry, compose, tmp_path) -> None:
    """Gradient through time (step path), spectra from recurrent_weights and gate saturation, per cell."""
    from rnnbench.diagnostics import Diagnostics

    cfg = compose("diagnostics.batch_size=4", "diagnostics.every=1", "task.dependency_length=12")
    task = registry.task("adding").task(dependency_length=12)
    expected = {
        "mingru": "diag/spectral_radius/decay_at_zero_input_l0", "minlstm": "diag/gate_saturation/forget",
        "lru": "diag/spectral_radius/lambda_modulus_l0", "slstm": "diag/spectral_radius/weight_hh_l0_block3",
        "indrnn": "diag/spectral_radius/weight_hh_l0", "orthogonal_rnn": "diag/sigma_max/weight_hh_l0",
        "s6": "diag/spectral_radius/decay_at_zero_input_l0",
    }
    for name in NAMES:
        torch.manual_seed(0)
        model = build_model(registry.cell(name), config_defaults(registry.cell(name).config), task, 6, fused=False)
        metrics = Diagnostics.from_config(cfg.diagnostics, model, task, torch.device("cpu"), tmp_path).measure(0, model)
        assert "diag/grad_norm_first" in metrics and expected[name] in metrics, (name, sorted(metrics))
    assert metrics is not None
