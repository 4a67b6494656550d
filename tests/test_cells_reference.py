"""The built-in cells compute what torch's modules and the papers say, in float64 to tight tolerance."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from rnnbench.errors import ConfigError
from rnnbench.layers import FusedEncoder, LoopEncoder, unroll
from rnnbench.manager import get_registry
from rnnbench.model import build_model, count_parameters, hidden_size_for_budget
from rnnbench.testing import config_defaults

REGISTRY = get_registry()
BUILTIN = [
    name for (kind, name), plugin in REGISTRY.providers.items() if kind == "cell" and plugin.startswith("rnnbench.")
]
B, T, I, H = 3, 6, 4, 5
TOL = {"rtol": 1e-10, "atol": 1e-12}
WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
TORCH = {
    "rnn_tanh": lambda **kw: nn.RNN(nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: nn.RNN(nonlinearity="relu", **kw),
    "lstm": nn.LSTM,
    "gru": nn.GRU,
}



def spec_cell(name: str, input_size: int = I, hidden_size: int = H, **overrides) -> nn.Module:
    spec = REGISTRY.cell(name)
    return spec.cell(input_size, hidden_size, **{**config_defaults(spec.config), **overrides})


def make_loop(name: str, num_layers: int, bidirectional: bool) -> LoopEncoder:
    spec = REGISTRY.cell(name)
    kwargs = config_defaults(spec.config)
    return LoopEncoder(lambda i, h: spec.cell(i, h, **kwargs), I, H, num_layers, bidirectional).double()


def torch_twin(name: str, loop: LoopEncoder) -> nn.Module:
    """A fresh torch module of the same shape with the loop encoder's weights copied in."""
    module = TORCH[name](input_size=I, hidden_size=H, num_layers=loop.num_layers, bidirectional=loop.bidirectional,
                         batch_first=True).double()
    D = 2 if loop.bidirectional else 1
    with torch.no_grad():
        for k, cell in enumerate(loop.cells()):
            layer, direction = divmod(k, D)
            for w in WEIGHTS:
                getattr(module, f"{w}_l{layer}{'_reverse' if direction else ''}").copy_(getattr(cell, w))
    return module


def torch_grads(module: nn.Module, loop: LoopEncoder) -> list[dict[str, Tensor]]:
    """The torch module's gradients, arranged like ``loop.cells()``."""
    D = 2 if loop.bidirectional else 1
    out = []
    for k in range(len(loop.cells())):
        layer, direction = divmod(k, D)
        out.append({w: getattr(module, f"{w}_l{layer}{'_reverse' if direction else ''}").grad for w in WEIGHTS})
    return out


def final_states(loop: LoopEncoder, x: Tensor) -> list:
    """Each cell's final state, in torch's h_n order (layer by layer, forward then backward)."""
    states = []
    for layer in loop.layers:
        states.append(unroll(layer.fwd, x)[1])
        if layer.bwd is not None:
            states.append(unroll(layer.bwd, x, reverse=True)[1])
        x = layer(x)[0]
    return states


def data(seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, I, generator=g, dtype=torch.float64), torch.randn(B, T, 2 * H, generator=g,
                                                                               dtype=torch.float64)


@pytest.mark.parametrize("name", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
def test_cell_equals_torch_module(name: str, num_layers: int, bidirectional: bool) -> None:
    torch.manual_seed(0)
    loop = make_loop(name, num_layers, bidirectional)
    twin = torch_twin(name, loop)
    fused = FusedEncoder(REGISTRY.cell(name).fused, loop).double()
    fused.load_from(loop)  # in float64 (the constructor copied into a float32 module)
    x, up = data()
    up = up[..., : (2 if bidirectional else 1) * H]

    outputs = {}
    for label, model in (("loop", loop), ("twin", twin), ("fused", fused)):
        xx = x.clone().requires_grad_()
        out = model(xx)
        out = out[0] if isinstance(out, tuple) else out
        (out * up).sum().backward()
        outputs[label] = (out.detach(), xx.grad)
    for label in ("twin", "fused"):
        torch.testing.assert_close(outputs["loop"][0], outputs[label][0], **TOL, msg=f"{name} outputs vs {label}")
        torch.testing.assert_close(outputs["loop"][1], outputs[label][1], **TOL, msg=f"{name} dL/dx vs {label}")
    fused_grads = torch_grads(fused.rnn, loop)
    for k, (cell, twin_grads) in enumerate(zip(loop.cells(), torch_grads(twin, loop))):
        for w in WEIGHTS:
            torch.testing.assert_close(getattr(cell, w).grad, twin_grads[w], **TOL, msg=f"{name} cell {k} d{w}")
            torch.testing.assert_close(getattr(cell, w).grad, fused_grads[k][w], **TOL, msg=f"{name} fused d{w}")

    with torch.no_grad():
        _, torch_state = twin(x)
        ours = final_states(loop, x)
    h_n, c_n = torch_state if isinstance(torch_state, tuple) else (torch_state, None)
    for k, state in enumerate(ours):
        h, c = state if isinstance(state, tuple) else (state, None)
        torch.testing.assert_close(h, h_n[k], **TOL, msg=f"{name} final h of cell {k}")
        if c is not None:
            torch.testing.assert_close(c, c_n[k], **TOL, msg=f"{name} final c of cell {k}")


class _Tiny:
    """A stand-in task for build_model: sizes only."""

    input_size, output_size, readout = I, 2, "sequence"


@pytest.mark.parametrize("name", sorted(n for n in BUILTIN if REGISTRY.cells[n].fused))
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_build_model_fused_equals_loop(name: str, num_layers: int, bidirectional: bool) -> None:
    spec = REGISTRY.cell(name)
    kwargs = config_defaults(spec.config)
    torch.manual_seed(1)
    fused = build_model(spec, kwargs, _Tiny(), H, num_layers, bidirectional, fused=True).double()
    torch.manual_seed(1)
    loop = build_model(spec, kwargs, _Tiny(), H, num_layers, bidirectional, fused=False).double()
    assert isinstance(fused.encoder, FusedEncoder) and isinstance(loop.encoder, LoopEncoder)
    loop.head.load_state_dict(fused.head.state_dict())
    x, _ = data(3)
    up = torch.randn(B, T, 2, dtype=torch.float64)
    for model in (fused, loop):
        (model(x) * up).sum().backward()
    torch.testing.assert_close(fused(x), loop(x), **TOL)
    torch.testing.assert_close(fused.head.weight.grad, loop.head.weight.grad, **TOL)
    for k, grads in enumerate(torch_grads(fused.encoder.rnn, loop.encoder)):
        for w in WEIGHTS:
            torch.testing.assert_close(getattr(loop.encoder.cells()[k], w).grad, grads[w], **TOL, msg=f"{name} d{w}")


# --- the variants compute what their papers say ---------------------------------------------------------------


def step_inputs(cell, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-1, 1, generator=g))
    x = torch.randn(B, I, generator=g, dtype=torch.float64)
    h = torch.randn(B, H, generator=g, dtype=torch.float64)
    c = torch.randn(B, H, generator=g, dtype=torch.float64)
    return x, h, c


def blocks(cell, x: Tensor, h: Tensor) -> dict[str, Tensor]:
    """Pre-activations by gate name, written out block by block from the documented layout."""
    out = {}
    for k, name in enumerate(cell.blocks):
        rows = slice(k * H, (k + 1) * H)
        out[name] = x @ cell.weight_ih[rows].T + cell.bias_ih[rows] + h @ cell.weight_hh[rows].T + cell.bias_hh[rows]
    return out


def greff_step(cell, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Greff et al. 2016, eq. 1-6 (vanilla LSTM), with the variant's term removed where the cell lacks it."""
    a = blocks(cell, x, h)
    sig = torch.sigmoid
    i = sig(a["i"] + (cell.w_ci * c if cell.w_ci is not None else 0)) if "i" in a else torch.ones_like(c)
    if cell.coupled_gates:
        f = 1 - i
    else:
        f = sig(a["f"] + (cell.w_cf * c if cell.w_cf is not None else 0)) if "f" in a else torch.ones_like(c)
    z = torch.tanh(a["g"]) if cell.input_activation == "tanh" else a["g"]
    c_new = z * i + c * f
    o = sig(a["o"] + (cell.w_co * c_new if cell.w_co is not None else 0)) if "o" in a else torch.ones_like(c)
    y = (torch.tanh(c_new) if cell.output_activation == "tanh" else c_new) * o
    return y, c_new


@pytest.mark.parametrize("name", ["lstm", "lstm1997", "peephole_lstm", "lstm_nig", "lstm_nfg", "lstm_nog",
                                  "lstm_niaf", "lstm_noaf", "lstm_np", "cifg_lstm"])
def test_lstm_variant_equals_greff_equations(name: str) -> None:
    cell = spec_cell(name).double()
    x, h, c = step_inputs(cell)
    h_new, (h_state, c_new) = cell(x, (h, c))
    y, c_ref = greff_step(cell, x, h, c)
    torch.testing.assert_close(c_new, c_ref, **TOL)
    torch.testing.assert_close(h_new, y, **TOL)
    assert h_state is h_new


def test_variant_structure() -> None:
    """Which gate blocks and peepholes each variant has (the weight layout users copy from)."""
    expected = {
        "lstm": ("ifgo", set()), "lstm_np": ("ifgo", set()), "lstm1997": ("igo", set()),
        "peephole_lstm": ("ifgo", {"w_ci", "w_cf", "w_co"}), "lstm_nig": ("fgo", {"w_cf", "w_co"}),
        "lstm_nfg": ("igo", {"w_ci", "w_co"}), "lstm_nog": ("ifg", {"w_ci", "w_cf"}),
        "lstm_niaf": ("ifgo", {"w_ci", "w_cf", "w_co"}), "lstm_noaf": ("ifgo", {"w_ci", "w_cf", "w_co"}),
        "cifg_lstm": ("igo", {"w_ci", "w_co"}), "lstm_fgr": ("ifgo", {"w_ci", "w_cf", "w_co", "weight_hh_gates"}),
    }
    for name, (gate_blocks, extra) in expected.items():
        cell = spec_cell(name)
        assert "".join(cell.blocks) == gate_blocks, name
        assert set(dict(cell.named_parameters())) - set(WEIGHTS) == extra, name
        G = len(gate_blocks)
        assert tuple(cell.weight_ih.shape) == (G * H, I) and tuple(cell.weight_hh.shape) == (G * H, H), name


def test_lstm1997_constant_error_carousel() -> None:
    cell = spec_cell("lstm1997").double()
    x, h, c = step_inputs(cell)
    _, (_, c_new) = cell(x, (h, c))
    gates = cell.gate_activations(x, (h, c))
    a = blocks(cell, x, h)
    assert set(gates) == {"input", "output"}
    torch.testing.assert_close(c_new, c + gates["input"] * torch.tanh(a["g"]), rtol=0, atol=1e-15)


def test_cifg_forget_is_one_minus_input() -> None:
    cell = spec_cell("cifg_lstm").double()
    x, h, c = step_inputs(cell)
    gates = cell.gate_activations(x, (h, c))
    torch.testing.assert_close(gates["forget"], 1 - gates["input"], rtol=0, atol=0)


def test_hand_built_variants() -> None:
    """One unit, one input, weights chosen by hand: each removed term is visibly gone."""
    x, h, c = (torch.tensor([[v]], dtype=torch.float64) for v in (0.5, 0.0, 2.0))
    sig = torch.sigmoid

    def build(name: str) -> nn.Module:
        cell = spec_cell(name, 1, 1).double()
        with torch.no_grad():
            for p in cell.parameters():
                p.zero_()
            cell.weight_ih.fill_(1.0)  # every pre-activation a_k = x = 0.5 (h = 0)
        return cell

    def run(name: str) -> tuple[float, float]:
        h_new, state = build(name)(x, (h, c))
        return h_new.item(), state[1].item()

    s, t = sig(x).item(), torch.tanh
    # NIG: i = 1, so c = f c + g
    assert run("lstm_nig") == pytest.approx((s * t(torch.tensor(s * 2 + t(x).item())).item(), s * 2 + t(x).item()))
    # NOG: o = 1, so h = tanh(c)
    c_nog = s * 2 + s * t(x).item()
    assert run("lstm_nog") == pytest.approx((t(torch.tensor(c_nog)).item(), c_nog))
    # NIAF: g = a_g = 0.5 (no tanh)
    c_niaf = s * 2 + s * 0.5
    assert run("lstm_niaf") == pytest.approx((s * t(torch.tensor(c_niaf)).item(), c_niaf))
    # NOAF: h = o * c
    c_noaf = s * 2 + s * t(x).item()
    assert run("lstm_noaf") == pytest.approx((s * c_noaf, c_noaf))
    # peepholes: o reads the NEW cell state c_t; i and f read c_{t-1}
    cell = build("peephole_lstm")
    with torch.no_grad():
        cell.w_co.fill_(1.0)
    h_new, (_, c_new) = cell(x, (h, c))
    assert h_new.item() == pytest.approx(sig(0.5 + c_new).item() * t(c_new).item())


def test_full_gate_recurrence() -> None:
    cell = spec_cell("lstm_fgr").double()
    x, h, c = step_inputs(cell)
    y0 = torch.rand(B, 3 * H, dtype=torch.float64)
    h_new, (_, c_new, gates) = cell(x, (h, c, y0))
    a = blocks(cell, x, h)
    R = cell.weight_hh_gates
    extra = dict(zip("ifo", (y0 @ R.T).chunk(3, dim=1)))  # rows: receiving gate i, f, o
    i = torch.sigmoid(a["i"] + extra["i"] + cell.w_ci * c)
    f = torch.sigmoid(a["f"] + extra["f"] + cell.w_cf * c)
    c_ref = f * c + i * torch.tanh(a["g"])
    o = torch.sigmoid(a["o"] + extra["o"] + cell.w_co * c_ref)
    torch.testing.assert_close(c_new, c_ref, **TOL)
    torch.testing.assert_close(h_new, o * torch.tanh(c_ref), **TOL)
    torch.testing.assert_close(gates, torch.cat([i, f, o], dim=1), **TOL)
    assert all(torch.count_nonzero(s) == 0 for s in cell.init_state(2))


def test_gru_cho2014_equals_its_equation_and_differs_from_gru() -> None:
    cho = spec_cell("gru_cho2014").double()
    x, h, _ = step_inputs(cho)
    torch_gru = spec_cell("gru").double()
    torch_gru.load_state_dict(cho.state_dict())
    Wi, Wh, bi, bh = (getattr(cho, w) for w in WEIGHTS)
    Wir, Wiz, Win = Wi.chunk(3)
    Whr, Whz, Whn = Wh.chunk(3)
    bir, biz, bin_ = bi.chunk(3)
    bhr, bhz, bhn = bh.chunk(3)
    r = torch.sigmoid(x @ Wir.T + bir + h @ Whr.T + bhr)
    z = torch.sigmoid(x @ Wiz.T + biz + h @ Whz.T + bhz)
    n_cho = torch.tanh(x @ Win.T + bin_ + (r * h) @ Whn.T + bhn)
    n_torch = torch.tanh(x @ Win.T + bin_ + r * (h @ Whn.T + bhn))
    torch.testing.assert_close(cho(x, h)[0], (1 - z) * n_cho + z * h, **TOL)
    torch.testing.assert_close(torch_gru(x, h)[0], (1 - z) * n_torch + z * h, **TOL)
    assert (cho(x, h)[0] - torch_gru(x, h)[0]).abs().max() > 1e-3
    for cell in (cho, torch_gru):
        gates = cell.gate_activations(x, h)
        torch.testing.assert_close(gates["reset"], r, **TOL)
        torch.testing.assert_close(gates["update"], z, **TOL)


# --- initialisation --------------------------------------------------------------------------------------------


FORGET_GATE_CELLS = sorted(n for n in BUILTIN if config_defaults(REGISTRY.cell(n).config).get("forget_bias") is not None)


@pytest.mark.parametrize("name", FORGET_GATE_CELLS)
def test_forget_bias_is_the_effective_bias(name: str) -> None:
    for value in (1.0, 2.5):
        cell = spec_cell(name, forget_bias=value)
        k = cell.blocks.index("f")
        effective = (cell.bias_ih + cell.bias_hh)[k * H : (k + 1) * H]
        assert torch.equal(effective, torch.full((H,), value)), name
    cell = spec_cell(name, forget_bias=None)
    k = cell.blocks.index("f")
    assert len(set((cell.bias_ih + cell.bias_hh)[k * H : (k + 1) * H].tolist())) == H  # torch's random init kept


def test_irnn_initialisation() -> None:
    torch.manual_seed(0)
    cell = spec_cell("irnn", 16, 32)
    assert torch.equal(cell.weight_hh, torch.eye(32))
    assert torch.count_nonzero(cell.bias_ih) == 0 and torch.count_nonzero(cell.bias_hh) == 0
    assert 0.0005 < cell.weight_ih.std().item() < 0.002
    assert REGISTRY.cell("irnn").fused == "RNN_RELU"


@pytest.mark.parametrize("name,G", [("rnn_tanh", 1), ("gru", 3), ("lstm", 4), ("peephole_lstm", 4), ("lstm1997", 3)])
def test_recurrent_init_per_gate_block(name: str, G: int) -> None:
    torch.manual_seed(0)
    eye = torch.eye(H)
    for block in spec_cell(name, recurrent_init="orthogonal").weight_hh.detach().chunk(G):
        torch.testing.assert_close(block @ block.T, eye, rtol=0, atol=1e-5)
    for block in spec_cell(name, recurrent_init="identity").weight_hh.detach().chunk(G):
        assert torch.equal(block, eye)
    bound = H**-0.5
    assert spec_cell(name).weight_hh.abs().max() <= bound


def test_bad_hyperparameters_name_key_value_and_choices() -> None:
    with pytest.raises(ConfigError, match=r"cell.recurrent_init='xavier' is not allowed: one of default, orthogonal"):
        spec_cell("lstm", recurrent_init="xavier")
    with pytest.raises(ConfigError, match=r"cell.forget_bias=1.0 is not allowed: null for a cell without"):
        REGISTRY.cell("lstm1997").cell(I, H, forget_bias=1.0)
    with pytest.raises(ConfigError, match=r"cell.input_std=-1.0 is not allowed"):
        spec_cell("irnn", input_std=-1.0)
    with pytest.raises(ConfigError, match=r"cell.nonlinearity='gelu' is not allowed: one of tanh, relu, sigmoid"):
        REGISTRY.cell("rnn_tanh").cell.func(I, H, nonlinearity="gelu")


def test_specs_are_documented_and_configs_are_structured() -> None:
    expected = {"rnn_tanh", "rnn_relu", "rnn_sigmoid", "irnn", "lstm", "lstm1997", "peephole_lstm", "lstm_nig",
                "lstm_nfg", "lstm_nog", "lstm_niaf", "lstm_noaf", "lstm_np", "cifg_lstm", "lstm_fgr", "gru",
                "gru_cho2014"}
    assert expected <= set(BUILTIN)
    fused = {n: REGISTRY.cells[n].fused for n in BUILTIN if REGISTRY.cells[n].fused}
    assert fused == {"rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU", "irnn": "RNN_RELU", "lstm": "LSTM",
                     "lstm_np": "LSTM", "gru": "GRU"}
    for name in BUILTIN:
        spec = REGISTRY.cells[name]
        assert spec.description and spec.source, name
        node = OmegaConf.structured(spec.config(name=name))  # Hydra can type-check every override
        assert set(node) == {"name", *config_defaults(spec.config)}, name
        assert all(f.type is not None for f in dataclasses.fields(spec.config))


# --- parameter counts -------------------------------------------------------------------------------------------


class _Adding:
    input_size, output_size, readout = 2, 1, "last"


def analytic(name: str, hidden: int, i: int = 2, o: int = 1) -> int:
    """Cell parameters G*H*(I + H + 2) (+ 3H peepholes) plus the readout H*O + O."""
    G, peep = {"rnn_tanh": (1, 0), "gru": (3, 0), "lstm": (4, 0), "peephole_lstm": (4, 3), "lstm1997": (3, 0)}[name]
    return G * hidden * (i + hidden + 2) + peep * hidden + hidden * o + o


@pytest.mark.parametrize("name", ["rnn_tanh", "gru", "lstm", "peephole_lstm", "lstm1997"])
def test_count_parameters(name: str) -> None:
    spec = REGISTRY.cell(name)
    model = build_model(spec, config_defaults(spec.config), _Adding(), 7, fused=False)
    assert count_parameters(model) == analytic(name, 7)
    if spec.fused:
        assert count_parameters(build_model(spec, config_defaults(spec.config), _Adding(), 7)) == analytic(name, 7)


def test_equal_budget_hidden_sizes() -> None:
    budget = analytic("lstm", 7)
    for name in ("rnn_tanh", "gru", "lstm", "peephole_lstm"):
        spec = REGISTRY.cell(name)
        hidden = hidden_size_for_budget(spec, config_defaults(spec.config), _Adding(), budget)
        assert analytic(name, hidden) <= budget < analytic(name, hidden + 1), name
    assert hidden_size_for_budget(REGISTRY.cell("lstm"), {}, _Adding(), budget) == 7
