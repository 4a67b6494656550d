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
"""

from __future__ import annotations

import pluggy

from rnnbench.base import Batch, CellConfig, RecurrentCell, State, Task, TaskConfig
from rnnbench.registry import CellSpec, TaskSpec

hookimpl = pluggy.HookimplMarker("rnnbench")

__all__ = [
    "Batch",
    "CellConfig",
    "CellSpec",
    "RecurrentCell",
    "State",
    "Task",
    "TaskConfig",
    "TaskSpec",
    "hookimpl",
]
