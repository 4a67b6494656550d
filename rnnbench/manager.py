"""Plugin discovery: built-in modules and the ``rnnbench`` entry-point group, through the same hooks.

Environment:
    RNNBENCH_DISABLE_PLUGINS  comma-separated entry-point or distribution names not to load.
    RNNBENCH_LOAD_PLUGINS     if set, load only these entry points (empty: built-ins only).
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from importlib import metadata

import pluggy

from rnnbench import hookspecs
from rnnbench.errors import PluginError
from rnnbench.registry import CellSpec, Registry, TaskSpec

GROUP = "rnnbench"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "rnnbench.plugins.rnn",
    "rnnbench.plugins.lstm",
    "rnnbench.plugins.gru",
    "rnnbench.plugins.mingru",
    "rnnbench.plugins.lru",
    "rnnbench.plugins.selective_ssm",
    "rnnbench.plugins.slstm",
    "rnnbench.plugins.indrnn",
    "rnnbench.tasks.adding",
    "rnnbench.tasks.copy",
    "rnnbench.tasks.variable_copy",
    "rnnbench.tasks.selective_copy",
    "rnnbench.tasks.temporal_order",
    "rnnbench.tasks.associative_recall",
    "rnnbench.tasks.parity",
    "rnnbench.tasks.even_pairs",
    "rnnbench.tasks.modular_arithmetic",
    "rnnbench.tasks.cycle_navigation",
)


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def rnnbench_version() -> str:
    try:
        return metadata.version("rnnbench")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def get_plugin_manager(load_entrypoints: bool = True) -> tuple[pluggy.PluginManager, dict[str, str]]:
    """A plugin manager with built-ins and (optionally) installed plugins; returns it and plugin -> dist."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    dists: dict[str, str] = {}
    builtin_dist = f"rnnbench=={rnnbench_version()}"
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        dists[module_name] = builtin_dist
    if load_entrypoints:
        disabled = _env_list("RNNBENCH_DISABLE_PLUGINS") or set()
        allowed = _env_list("RNNBENCH_LOAD_PLUGINS")
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "unknown"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in disabled or dist in disabled or (allowed is not None and ep.name not in allowed):
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # any import failure of third-party code
                raise PluginError(
                    f"plugin {ep.name!r} (distribution {dist} {version}) failed to import: "
                    f"{type(exc).__name__}: {exc}. Start without it: RNNBENCH_DISABLE_PLUGINS={ep.name}"
                ) from exc
            try:
                pm.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"plugin {ep.name!r} (distribution {dist} {version}) is invalid: {exc}") from exc
            dists[ep.name] = f"{dist}=={version}"
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(
            f"plugin {name!r} ({dists.get(name, 'unknown distribution')}) has a hook "
            f"implementation that matches no rnnbench hook: {exc}. Known hooks: register_cells, register_tasks"
        ) from exc
    return pm, dists


def build_registry(pm: pluggy.PluginManager, dists: dict[str, str]) -> Registry:
    """Call every plugin's registration hooks, one plugin at a time, so errors name the plugin."""
    registry = Registry(distributions=dict(dists))
    for kind, hook in (("cell", pm.hook.register_cells), ("task", pm.hook.register_tasks)):
        for impl in hook.get_hookimpls():  # registration order: built-ins first
            provider = impl.plugin_name

            def register(spec: CellSpec | TaskSpec, _kind: str = kind, _provider: str = provider) -> None:
                registry.add(_kind, spec, _provider)  # type: ignore[arg-type]

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {provider!r} ({registry.dist_of(provider)}) failed in register_{kind}s: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
    return registry


@lru_cache(maxsize=2)
def get_registry(load_entrypoints: bool = True) -> Registry:
    """The registry of this process (cached; rebuilt cheaply in each worker)."""
    return build_registry(*get_plugin_manager(load_entrypoints))
