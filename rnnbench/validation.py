"""The validators of every config value: the framework's, the built-in cells' and tasks', and plugins'.

Each one checks a value, returns it (converted where that is lossless, e.g. an int to a float), and otherwise
raises :class:`rnnbench.errors.ConfigError` naming the key, the value and what is allowed, which the command line
prints as one line::

    rnnbench: error: trainer.steps=0 is not allowed: a positive integer

None of them builds, allocates or writes anything (:func:`writable_dir` and :func:`writable_file` create and
remove an empty probe directory, so that a path a superuser cannot write either, such as ``/proc/x``, is
refused). Use them in a plugin's constructor::

    from rnnbench.validation import choice, integer, number

    class MyTask(Task):
        def __init__(self, dependency_length: int = 50, variant: str = "a", noise: float = 0.1) -> None:
            self.dependency_length = integer("task.dependency_length", dependency_length, minimum=1)
            self.variant = choice("task.variant", variant, ("a", "b"))
            self.noise = number("task.noise", noise, low=0.0, high=1.0, low_open=False)
"""

from __future__ import annotations

import difflib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rnnbench.errors import ConfigError

__all__ = [
    "MAX_SEED",
    "boolean",
    "choice",
    "close_matches",
    "finite",
    "integer",
    "known_keys",
    "non_negative_int",
    "non_negative_number",
    "number",
    "positive_int",
    "positive_number",
    "seed",
    "string",
    "writable_dir",
    "writable_file",
]

MAX_SEED = 2**63 - 1
"""The largest seed torch accepts everywhere (``torch.manual_seed`` takes 64 bits; streams derive 63-bit seeds)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:g}" if isinstance(x, float) else str(x)


def integer(key: str, value: Any, minimum: int | None = None, maximum: int | None = None, why: str = "") -> int:
    """An int (not a bool) in ``[minimum, maximum]``; ``why`` explains the bound in the message."""
    ok = _is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum is not None and maximum is not None:
            allowed = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            allowed = f"an integer >= {minimum}"
        elif maximum is not None:
            allowed = f"an integer <= {maximum}"
        else:
            allowed = "an integer"
        raise ConfigError(key, value, allowed + (f" ({why})" if why else ""))
    return value


def positive_int(key: str, value: Any, maximum: int | None = None) -> int:
    """An int >= 1 (and <= ``maximum`` when given)."""
    if not (_is_int(value) and value >= 1 and (maximum is None or value <= maximum)):
        raise ConfigError(key, value, "a positive integer" + (f" up to {maximum}" if maximum is not None else ""))
    return value


def non_negative_int(key: str, value: Any, maximum: int | None = None) -> int:
    """An int >= 0 (and <= ``maximum`` when given)."""
    if not (_is_int(value) and value >= 0 and (maximum is None or value <= maximum)):
        raise ConfigError(key, value, "a non-negative integer" + (f" up to {maximum}" if maximum is not None else ""))
    return value


def seed(key: str, value: Any, count: int = 1) -> int:
    """A seed: an int in [0, 2**63 - 1]; with ``count`` seeds used from it (seed .. seed + count - 1), the last too."""
    top = MAX_SEED - max(0, count - 1)
    if not (_is_int(value) and 0 <= value <= top):
        raise ConfigError(key, value, f"an integer in [0, {top}]" + (f" ({count} seeds from it)" if count > 1 else ""))
    return value


def number(
    key: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = True,
    high_open: bool = True,
    why: str = "",
) -> float:
    """A finite int or float (never a bool, NaN or infinity) in the interval from ``low`` to ``high``.

    The bounds are excluded unless ``low_open`` / ``high_open`` is false: ``number(k, v, 0.0, 1.0,
    low_open=False)`` is ``[0, 1)``."""
    ok = _is_number(value) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        if low == -math.inf and high == math.inf:
            allowed = "a finite number"
        elif high == math.inf:
            allowed = f"a finite number {'>' if low_open else '>='} {_fmt(low)}"
        elif low == -math.inf:
            allowed = f"a finite number {'<' if high_open else '<='} {_fmt(high)}"
        else:
            allowed = f"a number in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
        raise ConfigError(key, value, allowed + (f" ({why})" if why else ""))
    return float(value)


def finite(key: str, value: Any) -> float:
    """Any finite number."""
    return number(key, value)


def positive_number(key: str, value: Any, why: str = "") -> float:
    """A finite number > 0."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(key, value, "a positive finite number" + (f" ({why})" if why else ""))
    return float(value)


def non_negative_number(key: str, value: Any, why: str = "") -> float:
    """A finite number >= 0."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ConfigError(key, value, "a non-negative finite number" + (f" ({why})" if why else ""))
    return float(value)


def boolean(key: str, value: Any) -> bool:
    """``true`` or ``false``, not a number or a string."""
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def close_matches(word: str, candidates: Iterable[str]) -> list[str]:
    """The candidates that look like a misspelling of ``word``, best first."""
    return difflib.get_close_matches(str(word), [str(c) for c in candidates], n=3, cutoff=0.6)


def choice(key: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices`` (a close match is suggested)."""
    choices = tuple(choices)
    if value not in choices or (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
        allowed = f"one of {', '.join(map(str, choices))}"
        near = close_matches(value, map(str, choices)) if isinstance(value, str) else []
        raise ConfigError(key, value, allowed + (f" (did you mean {near[0]}?)" if near else ""))
    return value


def string(key: str, value: Any, *, empty: bool = False, max_length: int | None = None) -> str:
    """A string; non-empty (and not only spaces) unless ``empty``."""
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ConfigError(key, value, "a non-empty string" if not empty else "a string")
    if max_length is not None and len(value) > max_length:
        raise ConfigError(key, value, f"a string of at most {max_length} characters")
    return value


def known_keys(prefix: str, node: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse the first key of ``node`` (a mapping) that is not in ``allowed``, e.g. ``+model.hiden_size=64``.

    ``prefix`` is the node's dotted path (``model``, ``cell``; empty for the root). The message names the key, its
    value, a close match if there is one, and the node's keys."""
    allowed = sorted(allowed)
    for key in node:
        if key in allowed:
            continue
        full = f"{prefix}.{key}" if prefix else str(key)
        near = close_matches(str(key), allowed)
        where = f"{prefix} has no key {str(key)!r}" if prefix else f"there is no top-level key {str(key)!r}"
        hint = f"did you mean {prefix + '.' if prefix else ''}{near[0]}? " if near else ""
        raise ConfigError(full, node[key], f"{where}; {hint}allowed keys: {', '.join(allowed)}")


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _probe(directory: Path) -> OSError | None:
    """Create and remove an empty directory in ``directory``; the error if that is impossible."""
    try:
        made = tempfile.mkdtemp(prefix=".rnnbench-probe-", dir=directory)
    except OSError as exc:
        return exc
    try:
        os.rmdir(made)
    except OSError:
        pass
    return None


def _absolute(path: str | os.PathLike[str], base: Path | None) -> Path:
    p = Path(os.path.expanduser(os.fspath(path)))
    return p if p.is_absolute() else (base or Path.cwd()) / p


def writable_dir(key: str, path: Any, base: Path | None = None, value: Any = None) -> Path:
    """A directory that exists and is writable, or that can be created (its nearest existing ancestor is a
    writable directory). Relative paths are taken from ``base`` (default: the working directory). Nothing is left
    behind. ``value`` is what the message shows (default: ``path``)."""
    shown = path if value is None else value
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path) or "\0" in os.fspath(path):
        raise ConfigError(key, shown, "a directory path")
    target = _absolute(path, base)
    if target.exists() and not target.is_dir():
        raise ConfigError(key, shown, f"a directory; {target} is a file")
    ancestor = _nearest_existing(target)
    if not ancestor.is_dir():
        raise ConfigError(key, shown, f"a directory that can be created; {ancestor} is not a directory")
    error = _probe(ancestor)
    if error is not None:
        reason = error.strerror or type(error).__name__
        raise ConfigError(key, shown, f"a writable directory; cannot create anything in {ancestor} ({reason})")
    return target


def writable_file(key: str, path: Any, base: Path | None = None, value: Any = None) -> Path:
    """A file path that is not a directory and whose directory exists writable or can be created."""
    shown = path if value is None else value
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path) or "\0" in os.fspath(path):
        raise ConfigError(key, shown, "a file path")
    target = _absolute(path, base)
    if target.is_dir():
        raise ConfigError(key, shown, f"a file, but {target} is a directory: rename or remove it, or choose another path")
    writable_dir(key, target.parent, value=shown)
    if target.exists():
        if not os.access(target, os.R_OK | os.W_OK):
            raise ConfigError(key, shown, f"a file this user can read and write ({target} cannot be)")
    return target
