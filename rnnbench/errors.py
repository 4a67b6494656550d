"""Errors rnnbench reports to users as one readable line, without a traceback."""

from __future__ import annotations

from collections.abc import Iterable


FAILURES_ENV = "RNNBENCH_FAILURES_FILE"
"""The file where each job of a sweep appends its one-line user error, for the sweep's summary and parent run."""


class RnnbenchError(Exception):
    """A user-facing error: bad configuration, a broken plugin, an unreachable store."""


def show_value(value: object) -> str:
    """A value as the command line writes it: ``true``/``false``, ``null``, strings quoted, numbers as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


class ConfigError(RnnbenchError):
    """A configuration value that is not allowed: ``<key>=<value> is not allowed: <what is allowed>``."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={show_value(value)} is not allowed: {allowed}")


class PluginError(RnnbenchError):
    """A plugin failed to load, registered a clash, or broke the cell/task contract."""


class UnknownNameError(RnnbenchError, KeyError):
    """A cell or task name that no installed plugin registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        self.kind, self.name, self.available = kind, name, sorted(available)
        super().__init__(f"Unknown {kind} {name!r}; available: {', '.join(self.available)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TrackingError(RnnbenchError):
    """The tracking store cannot be reached or written."""
