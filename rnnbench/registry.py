"""Specs that plugins register, and the registry that holds them by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from rnnbench.base import CellConfig, TaskConfig
from rnnbench.errors import PluginError, UnknownNameError

if TYPE_CHECKING:
    from rnnbench.base import RecurrentCell, Task

FusedMode = Literal["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


@dataclass(frozen=True)
class CellSpec:
    """A recurrent cell offered under ``name`` (what users type: ``cell=<name>``).

    :param cell: called as ``cell(input_size, hidden_size, **config_fields)``; returns a :class:`RecurrentCell`.
    :param config: the dataclass schema of ``cell=<name>``; its defaults are the cell's defaults.
    :param fused: the ``torch.nn.RNN``/``LSTM``/``GRU`` mode whose math equals this cell, if any. The cell must
        then own ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` in torch's layout; the model runs torch's
        fused kernel with those weights unless the user asks for the step loop (``model.fused=false``).
    :param source: the paper the equations come from.
    """

    name: str
    cell: Callable[..., RecurrentCell]
    config: type[CellConfig] = CellConfig
    fused: FusedMode | None = None
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """A task offered under ``name`` (``task=<name>``); ``task(**config_fields)`` returns a :class:`Task`."""

    name: str
    task: Callable[..., Task]
    config: type[TaskConfig] = TaskConfig
    description: str = ""
    source: str = ""


RegisterCell = Callable[[CellSpec], None]
RegisterTask = Callable[[TaskSpec], None]


@dataclass
class Registry:
    """Cells and tasks by name, with the plugin (and distribution) that provided each."""

    cells: dict[str, CellSpec] = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    providers: dict[tuple[str, str], str] = field(default_factory=dict)
    distributions: dict[str, str] = field(default_factory=dict)
    """plugin name -> ``"dist==version"``."""

    def add(self, kind: Literal["cell", "task"], spec: CellSpec | TaskSpec, provider: str) -> None:
        expected = CellSpec if kind == "cell" else TaskSpec
        if not isinstance(spec, expected):
            raise PluginError(
                f"plugin {provider!r} registered {spec!r} through register_{kind}s; expected a {expected.__name__}"
            )
        if not spec.name or not spec.name.replace("_", "").isalnum() or spec.name != spec.name.lower():
            raise PluginError(
                f"plugin {provider!r} registered {kind} name {spec.name!r}; names are lower-case letters, "
                "digits and underscores"
            )
        table: dict = self.cells if kind == "cell" else self.tasks
        if spec.name in table:
            first = self.providers[(kind, spec.name)]
            raise PluginError(
                f"{kind} {spec.name!r} is registered twice: by plugin {first!r} ({self.dist_of(first)}) and by "
                f"plugin {provider!r} ({self.dist_of(provider)}); uninstall one or disable it with "
                "RNNBENCH_DISABLE_PLUGINS"
            )
        table[spec.name] = spec
        self.providers[(kind, spec.name)] = provider

    def cell(self, name: str) -> CellSpec:
        try:
            return self.cells[name]
        except KeyError:
            raise UnknownNameError("cell", name, self.cells) from None

    def task(self, name: str) -> TaskSpec:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownNameError("task", name, self.tasks) from None

    def dist_of(self, provider: str) -> str:
        return self.distributions.get(provider, "unknown distribution")

    def provenance(self, kind: Literal["cell", "task"], name: str) -> str:
        """``"<dist>==<version>"`` of the plugin that registered ``name``."""
        return self.dist_of(self.providers[(kind, name)])
