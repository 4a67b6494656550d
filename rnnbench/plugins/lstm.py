"""The LSTM family: one parametrised cell, registered as torch's LSTM, the 1997 original, the peephole LSTM and
the eight variants of Greff et al. 2016 ("LSTM: A Search Space Odyssey")."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from rnnbench import CellConfig, CellSpec, RecurrentCell, hookimpl, kernels
from rnnbench import State
from rnnbench import ConfigError
from rnnbench.init import check_choice, gate_bias_, recurrent_init_, uniform_default_


def _identity(x: Tensor) -> Tensor:
    return x


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": _identity,
}
GATE_NAMES = {"i": "input", "f": "forget", "o": "output"}


@dataclass
class LSTMConfig(CellConfig):
    recurrent_init: str = "default"
    """Init of each (H, H) gate block of ``weight_hh``: default (torch's uniform), orthogonal or identity."""


@dataclass
class ForgetLSTMConfig(LSTMConfig):
    forget_bias: Optional[float] = 1.0
    """Effective forget-gate bias at init (``bias_ih + bias_hh`` of the f block; Gers et al. 2000, Jozefowicz et
    al. 2015); null keeps torch's uniform init."""


@dataclass
class NoForgetLSTMConfig(LSTMConfig):
    forget_bias: Optional[float] = None
    """Null, the only value: this cell has no forget gate of its own (f = 1 without forget gate, f = 1 - i in
    CIFG). The key is here so that one override, ``cell.forget_bias=null``, applies to every LSTM variant (the
    ``greff_variants`` preset starts them all from torch's init: every gate about half open)."""


class LSTMCell(RecurrentCell):
    r"""Long short-term memory, every variant of Greff et al. 2016 behind flags.

    With all gates, peepholes and activations (Greff's vanilla LSTM, the peephole LSTM of Gers & Schmidhuber 2000):

    .. math::
        a_k &= W_{ik} x_t + b_{ik} + W_{hk} h_{t-1} + b_{hk}, \quad k \in \{i, f, g, o\} \\
        i &= \sigma(a_i + w_{ci} \odot c_{t-1}) \\
        f &= \sigma(a_f + w_{cf} \odot c_{t-1}) \\
        g &= \phi_{in}(a_g) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        o &= \sigma(a_o + w_{co} \odot c_t) \\
        h_t &= o \odot \phi_{out}(c_t)

    Flags (each removes or changes one term):

    - ``input_gate=False`` (NIG): i = 1. ``forget_gate=False`` (NFG; the 1997 LSTM): f = 1, the constant error
      carousel c_t = c_{t-1} + i * g. ``output_gate=False`` (NOG): o = 1.
    - ``input_activation="identity"`` (NIAF): g = a_g. ``output_activation="identity"`` (NOAF): h_t = o * c_t.
    - ``peepholes=False`` (NP; torch's ``nn.LSTM``): no w_c terms.
    - ``coupled_gates=True`` (CIFG): f = 1 - i, and the f block is gone from the weights.
    - ``full_gate_recurrence=True`` (FGR): every sigmoid gate k also receives
      :math:`\sum_j R_{kj} y_j^{t-1}` over the previous step's gate activations y_j in {i, f, o}; the state is
      then ``(h, c, y)`` with y (B, S*H), S the number of sigmoid gates with weights.

    Parameters, in torch's layout and gate order i, f, g, o with absent blocks omitted (G blocks of H rows):
    ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), ``bias_ih`` and ``bias_hh`` (G*H,); peephole vectors
    ``w_ci``, ``w_cf``, ``w_co`` (H,) for the gates present; FGR: ``weight_hh_gates`` (S*H, S*H), rows the
    receiving gate and columns the sending gate, both in order i, f, o. State ``(h, c)``, each (B, H).

    Sources: Hochreiter & Schmidhuber 1997; Gers, Schmidhuber & Cummins 2000 (forget gate); Gers & Schmidhuber
    2000 (peepholes); Greff, Srivastava, Koutník, Steunebrink & Schmidhuber 2016 (variants).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        input_gate: bool = True,
        forget_gate: bool = True,
        output_gate: bool = True,
        peepholes: bool = False,
        coupled_gates: bool = False,
        full_gate_recurrence: bool = False,
        input_activation: str = "tanh",
        output_activation: str = "tanh",
        forget_bias: float | None = None,
        recurrent_init: str = "default",
    ) -> None:
        super().__init__(input_size, hidden_size)
        check_choice("cell.input_activation", input_activation, ACTIVATIONS)
        check_choice("cell.output_activation", output_activation, ACTIVATIONS)
        if coupled_gates and not (input_gate and forget_gate):
            raise ConfigError("cell.coupled_gates", coupled_gates, "false when input_gate or forget_gate is false")
        blocks = [k for k, on in (("i", input_gate), ("f", forget_gate and not coupled_gates), ("g", True),
                                  ("o", output_gate)) if on]
        if forget_bias is not None and "f" not in blocks:
            raise ConfigError("cell.forget_bias", forget_bias, "null for a cell without a separate forget gate")
        self.blocks: tuple[str, ...] = tuple(blocks)
        self.gate_blocks: tuple[str, ...] = tuple(k for k in blocks if k != "g")
        if full_gate_recurrence and not self.gate_blocks:
            raise ConfigError("cell.full_gate_recurrence", full_gate_recurrence,
                              "false for a cell without input, forget and output gates")
        self.input_gate, self.forget_gate, self.output_gate = input_gate, forget_gate, output_gate
        self.peepholes, self.coupled_gates, self.full_gate_recurrence = peepholes, coupled_gates, full_gate_recurrence
        self.input_activation, self.output_activation = input_activation, output_activation
        self.phi_in, self.phi_out = ACTIVATIONS[input_activation], ACTIVATIONS[output_activation]

        G, H = len(blocks), hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G * H, H))
        self.bias_ih = nn.Parameter(torch.empty(G * H))
        self.bias_hh = nn.Parameter(torch.empty(G * H))
        self.w_ci = nn.Parameter(torch.empty(H)) if peepholes and "i" in blocks else None
        self.w_cf = nn.Parameter(torch.empty(H)) if peepholes and "f" in blocks else None
        self.w_co = nn.Parameter(torch.empty(H)) if peepholes and "o" in blocks else None
        S = len(self.gate_blocks)
        self.weight_hh_gates = nn.Parameter(torch.empty(S * H, S * H)) if full_gate_recurrence else None
        uniform_default_(self.parameters(), H)
        recurrent_init_(self.weight_hh, G, recurrent_init)
        if forget_bias is not None:
            gate_bias_(self.bias_ih, self.bias_hh, blocks.index("f"), H, forget_bias)

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        if self.full_gate_recurrence:
            gates = torch.zeros(batch_size, len(self.gate_blocks) * self.hidden_size, device=device, dtype=dtype)
            return zeros, zeros, gates
        return zeros, zeros

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """One step: ``(h_t, c_t, i, f, o)``, the gates after their sigmoid (None where absent)."""
        h, c = state[0], state[1]
        pre = torch.addmm(self.bias_ih, x, self.weight_ih.t()) + torch.addmm(self.bias_hh, h, self.weight_hh.t())
        a = dict(zip(self.blocks, pre.chunk(len(self.blocks), dim=1)))  # G x (B, H)
        if self.weight_hh_gates is not None:
            recurrent = torch.mm(state[2], self.weight_hh_gates.t())  # (B, S*H)
            for k, extra in zip(self.gate_blocks, recurrent.chunk(len(self.gate_blocks), dim=1)):
                a[k] = a[k] + extra
        i = f = o = None
        if "i" in a:
            i = torch.sigmoid(a["i"] if self.w_ci is None else torch.addcmul(a["i"], self.w_ci, c))
        if self.coupled_gates:
            f = 1.0 - i
        elif "f" in a:
            f = torch.sigmoid(a["f"] if self.w_cf is None else torch.addcmul(a["f"], self.w_cf, c))
        g = self.phi_in(a["g"])
        c = (c if f is None else f * c) + (g if i is None else i * g)
        if "o" in a:
            o = torch.sigmoid(a["o"] if self.w_co is None else torch.addcmul(a["o"], self.w_co, c))
        y = self.phi_out(c)
        h = y if o is None else o * y
        return h, c, i, f, o

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c, i, f, o = self._step(x, state)
        if self.full_gate_recurrence:
            gates = {"i": i, "f": f, "o": o}
            return h, (h, c, torch.cat([gates[k] for k in self.gate_blocks], dim=1))
        return h, (h, c)

    def stacked_sequence(self, params: dict[str, Tensor], x: Tensor, reverse: bool = False) -> Tensor:
        """:func:`rnnbench.kernels.lstm`; with FGR the recurrent matrix gains the gate columns (zero in g's rows)."""
        flags = kernels.LSTMFlags(
            blocks="".join(self.blocks), peepholes="".join(k for k in "ifo" if getattr(self, f"w_c{k}") is not None),
            coupled=self.coupled_gates, gate_recurrence=self.full_gate_recurrence,
            phi_in=self.input_activation, phi_out=self.output_activation)
        xp = kernels.input_projection(x, params["weight_ih"], params["bias_ih"] + params["bias_hh"])
        wrec = params["weight_hh"]
        if self.full_gate_recurrence:
            rows = dict(zip(self.gate_blocks, params["weight_hh_gates"].chunk(len(self.gate_blocks), dim=1)))
            zero = wrec.new_zeros(wrec.shape[0], self.hidden_size, params["weight_hh_gates"].shape[-1])
            wrec = torch.cat([wrec, torch.cat([rows.get(k, zero) for k in self.blocks], dim=1)], dim=2)
        peep = torch.stack([params[f"w_c{k}"] for k in flags.peepholes], dim=1) if flags.peepholes else None
        return kernels.lstm(xp, wrec, peep, flags, reverse)

    def gate_activations(self, x: Tensor, state: State) -> dict[str, Tensor]:
        """The gates of the step from ``state`` on ``x``, after the sigmoid: ``input``, ``forget``, ``output``
        (those the variant has; CIFG's forget is 1 - input)."""
        _, _, i, f, o = self._step(x, state)
        return {GATE_NAMES[k]: v for k, v in (("i", i), ("f", f), ("o", o)) if v is not None}

    def extra_repr(self) -> str:
        flags = [f"{self.input_size}, {self.hidden_size}", f"blocks={''.join(self.blocks)}"]
        flags += [name for name in ("peepholes", "coupled_gates", "full_gate_recurrence") if getattr(self, name)]
        if self.input_activation != "tanh":
            flags.append(f"input_activation={self.input_activation}")
        if self.output_activation != "tanh":
            flags.append(f"output_activation={self.output_activation}")
        return ", ".join(flags)


GREFF = "Greff, Srivastava, Koutník, Steunebrink & Schmidhuber 2016, LSTM: A Search Space Odyssey"
PEEPHOLE = {"peepholes": True}

VARIANTS: tuple[tuple[str, dict[str, Any], type[CellConfig], str, str], ...] = (
    ("lstm", {}, ForgetLSTMConfig,
     "LSTM with forget gate, no peepholes (torch's nn.LSTM)", "Gers, Schmidhuber & Cummins 2000, Learning to Forget"),
    ("lstm1997", {"forget_gate": False}, NoForgetLSTMConfig,
     "original LSTM: input and output gates, constant error carousel c = c + i*g, no forget gate",
     "Hochreiter & Schmidhuber 1997, Long Short-Term Memory"),
    ("peephole_lstm", PEEPHOLE, ForgetLSTMConfig,
     "LSTM with forget gate and peepholes (Greff's vanilla LSTM)",
     "Gers & Schmidhuber 2000, Recurrent Nets that Time and Count"),
    ("lstm_nig", {**PEEPHOLE, "input_gate": False}, ForgetLSTMConfig, "peephole LSTM without input gate (NIG)", GREFF),
    ("lstm_nfg", {**PEEPHOLE, "forget_gate": False}, NoForgetLSTMConfig, "peephole LSTM without forget gate (NFG)",
     GREFF),
    ("lstm_nog", {**PEEPHOLE, "output_gate": False}, ForgetLSTMConfig, "peephole LSTM without output gate (NOG)",
     GREFF),
    ("lstm_niaf", {**PEEPHOLE, "input_activation": "identity"}, ForgetLSTMConfig,
     "peephole LSTM without input activation (NIAF): g = a_g", GREFF),
    ("lstm_noaf", {**PEEPHOLE, "output_activation": "identity"}, ForgetLSTMConfig,
     "peephole LSTM without output activation (NOAF): h = o * c", GREFF),
    ("lstm_np", {}, ForgetLSTMConfig, "LSTM without peepholes (NP; the same function as lstm)", GREFF),
    ("cifg_lstm", {**PEEPHOLE, "coupled_gates": True}, NoForgetLSTMConfig,
     "peephole LSTM with coupled input and forget gate (CIFG): f = 1 - i", GREFF),
    ("lstm_fgr", {**PEEPHOLE, "full_gate_recurrence": True}, ForgetLSTMConfig,
     "peephole LSTM with full gate recurrence (FGR): last step's gates feed all gates", GREFF),
)


@hookimpl
def register_cells(register) -> None:
    for name, flags, config, description, source in VARIANTS:
        fused = "LSTM" if not flags else None  # no peepholes, all gates, tanh: torch's nn.LSTM
        register(
            CellSpec(
                name=name,
                cell=functools.partial(LSTMCell, **flags),
                config=config,
                fused=fused,
                description=description,
                source=source,
            )
        )
