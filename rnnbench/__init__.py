"""rnnbench: which recurrent architecture remembers longest, and why.

A plugin adds cells or tasks with two hooks::

    from rnnbench import CellSpec, RecurrentCell, hookimpl

    class MyCell(RecurrentCell):
        def forward(self, x, h): ...          # (B, I), state -> (B, H), new state

    @hookimpl
    def register_cells(register):
        register(CellSpec(name="mycell", cell=MyCell))

and advertises the module in its ``pyproject.toml``: ``[project.entry-points.rnnbench] mycell = "my_module"``.
Then ``rnnbench cell=mycell task=adding`` works. ``rnnbench.testing.check_cell`` is the contract kit.
Importing rnnbench loads no plugin, touches no store and starts nothing.

The plugin API is what this module exports, plus four public modules: :mod:`rnnbench.validation` (the
validators every config value goes through, raising :class:`ConfigError`), :mod:`rnnbench.init` (recurrent
weight initialisation), :mod:`rnnbench.kernels` (hand-written backward through time for the classic
recurrences and the modern ones, for a cell's whole-sequence path) and :mod:`rnnbench.testing` (the contract kit). The built-in cells and tasks use nothing
else. Every other module is internal: its names may change between releases.
"""

from __future__ import annotations

import pluggy

from rnnbench import validation
from rnnbench.base import Batch, CellConfig, RecurrentCell, State, Task, TaskConfig
from rnnbench.errors import ConfigError, PluginError
from rnnbench.registry import CellSpec, RegisterCell, RegisterTask, TaskSpec

hookimpl = pluggy.HookimplMarker("rnnbench")

__all__ = [
    "Batch",
    "CellConfig",
    "CellSpec",
    "ConfigError",
    "PluginError",
    "RecurrentCell",
    "RegisterCell",
    "RegisterTask",
    "State",
    "Task",
    "TaskConfig",
    "TaskSpec",
    "hookimpl",
    "validation",
]
