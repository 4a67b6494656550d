"""Hook specifications for rnnbench plugins (README: "Writing a cell plugin").

A plugin is a module with ``@rnnbench.hookimpl`` functions named like the specs below, advertised in its
distribution's ``[project.entry-points.rnnbench]`` table. The built-in cells and tasks use the same hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from rnnbench.registry import RegisterCell, RegisterTask

hookspec = pluggy.HookspecMarker("rnnbench")


@hookspec
def register_cells(register: RegisterCell) -> None:
    """Register recurrent cells.

    Call ``register(CellSpec(name=..., cell=...))`` once per cell. Names are unique across all installed
    plugins: a duplicate is an error at start-up naming both plugins, never a silent override, so a result is
    never labelled with the wrong implementation.

    :param register: records one :class:`rnnbench.CellSpec`.
    """


@hookspec
def register_tasks(register: RegisterTask) -> None:
    """Register tasks.

    Call ``register(TaskSpec(name=..., task=...))`` once per task; names are unique as for cells.

    :param register: records one :class:`rnnbench.TaskSpec`.
    """
