"""Refuse bad input before Hydra writes anything: one line naming the key, the value and what is allowed.

:func:`preflight` composes the configuration with Hydra's own loader and checks it (Hydra's composition errors,
unknown keys, lossy type conversions such as ``trainer.early_stop=2``, every value, the memory the run needs, the
paths it writes and the tracking store). :func:`report_hydra_errors_in_one_line` makes the errors Hydra reports
itself one line as well. Every error exits with status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rnnbench.errors import RnnbenchError


def fail(message: str, code: int = 2) -> None:
    one_line = str(message).replace("\r\n", " ").replace("\n", " ").replace("\r", " ").strip()
    print(f"rnnbench: error: {one_line}", file=sys.stderr)
    sys.exit(code)


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _refuse(exc: BaseException, overrides: list[str] | None = None, composer=None) -> None:
    """Print ``exc`` as one line and exit 2 (re-raise it with ``HYDRA_FULL_ERROR=1``)."""
    if _full_error():
        raise exc
    fail(error_line(exc, overrides or [], composer))


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~").lstrip("+"), value


def _value_of(overrides: list[str], key: str) -> str | None:
    for override in reversed(overrides):
        k, v = _split(override)
        if k == key:
            return v
    return None


def _shown(value: str | None) -> str:
    """A raw override value as the line shows it: a string quoted (as ``repr`` does), anything else as typed."""
    if value is None:
        return "..."
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_override(f"k={value}").value()
        if isinstance(parsed, str):
            return repr(parsed)
    except Exception:  # noqa: BLE001
        return repr(value)
    return value


_CONVERSIONS = (
    ("to Integer", "an integer"),
    ("to Float", "a number"),
    ("to Boolean", "true or false"),
    ("to string", "a string"),
    ("is not Optional", "a value (null is not allowed here)"),
    ("does not support deletion", "kept (this key cannot be deleted)"),
)


def error_line(exc: BaseException, overrides: list[str], composer=None) -> str:
    """One line for any error of a configuration: rnnbench's own, Hydra's or OmegaConf's. ``composer(overrides)``
    recomposes a configuration (to list the keys of a node when an unknown key was given)."""
    import re

    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from rnnbench import validation

    if isinstance(exc, RnnbenchError):
        return str(exc)
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        key = group.removeprefix("hydra/") if group.startswith("hydra/") and _value_of(overrides, group) is None else group
        options = sorted(exc.options or [])
        near = validation.close_matches(option, options)
        allowed = f"one of {', '.join(options)}" if options else f"an option of the {group} group"
        return f"{key.replace('/', '.')}={option!r} is not allowed: {allowed}" + (
            f" (did you mean {near[0]}?)" if near else "")
    if isinstance(exc, OverrideParseException):
        bad = _unparsable(overrides)
        if bad is not None:
            key, value = _split(bad)
            if "=" not in bad:
                return f"{bad!r} is not an override: write key=value (e.g. trainer.steps=100)"
            hint = "quote values with spaces, non-ASCII or special characters: " f"{key}='...'"
            return f"{key}={value!r} is not allowed: it cannot be read as an override value ({hint})"
        return f"cannot read the overrides: {first}"
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        match = re.match(r"Could not override '([^']+)'", first)
        if match:
            key = match.group(1)
            value = _value_of(overrides, key)
            return _unknown_key_line(key, value, overrides, composer) or (
                f"{key}={_shown(value)} is not allowed: there is no such key")
        match = re.match(r"Error merging override (\S+?)=(.*)$", first)
        if match and isinstance(cause, OmegaConfBaseException):
            key, value = match.group(1).lstrip("+~"), match.group(2)
            message = str(getattr(cause, "msg", cause))
            allowed = next((a for needle, a in _CONVERSIONS if needle in message), message.splitlines()[0])
            return f"{key}={_shown(value)} is not allowed: {allowed}"
        match = re.match(r"Could not append to config\. An item is already at '([^']+)'", first)
        if match:
            key = match.group(1)
            return (f"{key}={_shown(_value_of(overrides, key))} is not allowed: with a leading +, since {key} exists "
                    f"already; write {key}=... (or ++{key}=... to add or override)")
        match = re.match(r"Ambiguous value for argument '([^=]+)=(.*)'", first)
        if match:
            return (f"{match.group(1)}={match.group(2)!r} is not allowed: one value (to sweep over several, add -m; "
                    f"for a list write [{match.group(2)}])")
        if isinstance(cause, OmegaConfBaseException):
            return _omegaconf_line(cause, overrides)
        return " ".join(text.split())
    if isinstance(exc, OmegaConfBaseException):
        return _omegaconf_line(exc, overrides)
    return f"{type(exc).__name__}: {' '.join(text.split())}"


def _omegaconf_line(exc: BaseException, overrides: list[str]) -> str:
    key = getattr(exc, "full_key", None) or ""
    message = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
    if key:
        return f"{key}={_shown(_value_of(overrides, key))} is not allowed: {message}"
    return message


def _unparsable(overrides: list[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception:  # noqa: BLE001
            return override
    return None


def _unknown_key_line(key: str, value: str | None, overrides: list[str], composer) -> str | None:
    """``model.hiden_size=64 is not allowed: model has no key 'hiden_size'; did you mean ...``, with the node's
    keys from a composition without the offending override."""
    from omegaconf import DictConfig, OmegaConf

    from rnnbench import validation

    if composer is None:
        return None
    rest = [o for o in overrides if _split(o)[0] != key]
    try:
        cfg = composer(rest)
    except Exception:  # noqa: BLE001
        return None
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return None
    allowed = [k for k in node.keys() if k != "hydra"]
    try:
        validation.known_keys(parent, {leaf: None}, allowed)
    except RnnbenchError as err:
        return f"{key}={_shown(value)} is not allowed: {err.allowed}"
    return None


def _node_of(cfg, key: str):
    node = cfg
    for part in key.split("."):
        get = getattr(node, "_get_node", None)
        if get is None:
            return None
        try:
            node = get(part)
        except Exception:  # noqa: BLE001
            return None
        if node is None:
            return None
    return node


def check_override_types(cfg, overrides: list[str]) -> None:
    """Refuse the conversions OmegaConf makes silently and that lose the user's value: a bool key given a number
    or a word (``trainer.early_stop=2`` becomes true)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf.nodes import BooleanNode

    from rnnbench.errors import ConfigError

    parser = OverridesParser.create()
    for override in overrides:
        parsed = parser.parse_override(override)
        if parsed.is_delete() or parsed.key_or_group.startswith("hydra") or parsed.is_sweep_override():
            continue
        node = _node_of(cfg, parsed.key_or_group)
        if isinstance(node, BooleanNode):
            value = parsed.value()
            if not isinstance(value, bool) and value is not None:
                raise ConfigError(parsed.key_or_group, value, "true or false")


def check_environment(cfg, cwd: Path) -> None:
    """What the run will write, checked without writing: the checkpoint folder, Hydra's output folder and the
    tracking store (a SQLite file's folder and the file itself; a server must answer)."""
    from omegaconf import OmegaConf

    from rnnbench import validation

    validation.writable_dir("trainer.checkpoint_dir", cfg.trainer.checkpoint_dir, base=cwd)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    if run_dir is not None:
        validation.writable_dir("hydra.run.dir", str(run_dir), base=cwd)
    check_tracking(cfg, cwd)


def check_tracking(cfg, cwd: Path) -> None:
    from rnnbench import validation
    from rnnbench.store import check_store, resolve_tracking_uri

    if cfg.tracking.backend != "mlflow":
        return
    validation.string("tracking.experiment", cfg.tracking.experiment)
    uri = resolve_tracking_uri(cfg.tracking.uri, cwd)
    key = "tracking.uri" if cfg.tracking.uri or not os.environ.get("MLFLOW_TRACKING_URI") else "MLFLOW_TRACKING_URI"
    given = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or uri
    check_store(uri, key=key, value=given)


def check_run(cfg, cwd: Path) -> None:
    """Everything about one run that can be known before it starts: values, the cell and task constructors'
    own rules, the memory it needs, and what it writes."""
    from rnnbench.config import constructor_kwargs, validate
    from rnnbench.errors import PluginError
    from rnnbench.manager import get_registry

    registry = get_registry()
    validate(cfg, registry)
    cell_spec, task_spec = registry.cell(cfg.cell.name), registry.task(cfg.task.name)
    try:
        task = task_spec.task(**constructor_kwargs(cfg.task))
    except RnnbenchError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PluginError(f"task {task_spec.name!r} could not be built: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())}") from exc
    from rnnbench.lengths import check as check_lengths
    from rnnbench.devices import resolve_device
    from rnnbench.memory import check_fits

    lengths = check_lengths(task_spec, cfg.task, task)
    device = resolve_device(cfg.trainer.device)
    check_fits(cfg, task, cell_spec, constructor_kwargs(cfg.cell), device, task_spec=task_spec, lengths=lengths)
    check_environment(cfg, cwd)


def _arguments(argv: list[str]):
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str) -> None:
        fail(f"{message}; see rnnbench --help")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def preflight(argv: list[str], cwd: Path | None = None) -> None:
    """Check a command line before Hydra runs it; on bad input print one line and exit 2.

    Runs (and ``--cfg``) are composed with Hydra's loader and checked; a multirun's jobs are expanded as Hydra's
    basic sweeper does and each is composed (which Hydra would do anyway: its own check of the jobs is then
    skipped) and checked for unknown keys and lossy conversions, and the sweep's store is checked. A job's bad
    value is left to the job (reported, and the other jobs run)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    args = _arguments(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or getattr(args, "version", False) \
            or getattr(args, "experimental_rerun", None):
        return
    cwd = cwd or Path.cwd()
    config_name = args.config_name or "config"
    overrides = list(args.overrides)
    search_path = create_config_search_path("pkg://rnnbench.conf")
    if args.config_dir is not None:
        from hydra.core.config_search_path import SearchPathQuery

        config_dir = os.path.abspath(args.config_dir)
        if not os.path.isdir(config_dir):
            fail(f"--config-dir={args.config_dir!r} is not allowed: an existing directory")
        search_path.prepend(provider="command-line", path=f"file://{config_dir}",
                            anchor=SearchPathQuery(provider="schema"))
    if args.config_path is not None:
        return  # an unusual layout: Hydra checks it
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="rnnbench", config_search_path=search_path)

    def compose(ovr: list[str], mode=RunMode.RUN):
        return hydra.compose_config(config_name, ovr, run_mode=mode, with_log_configuration=False)

    try:
        if args.cfg:
            try:
                compose(overrides)
            except Exception as exc:  # noqa: BLE001
                _refuse(exc, overrides, compose)
            return
        if not args.multirun:
            try:
                cfg = compose(overrides)
            except Exception as exc:  # noqa: BLE001 - unless the config itself asks for a multirun (hydra.mode)
                if hydra.get_mode(config_name=config_name, overrides=overrides) != RunMode.MULTIRUN:
                    _refuse(exc, overrides, compose)
                cfg = None
            if cfg is not None and cfg.hydra.mode != RunMode.MULTIRUN:
                try:
                    check_override_types(cfg, overrides)
                    check_run(cfg, cwd)
                except Exception as exc:  # noqa: BLE001
                    _refuse(exc, overrides, compose)
                return
        _preflight_multirun(hydra, compose, overrides, cwd)
    finally:
        GlobalHydra.instance().clear()


def _preflight_multirun(hydra, compose, overrides: list[str], cwd: Path) -> None:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from rnnbench import validation
    from rnnbench.config import check_known_keys

    try:
        master = compose(overrides, RunMode.MULTIRUN)
    except Exception as exc:  # noqa: BLE001
        _refuse(exc, overrides, compose)
    target = str(OmegaConf.select(master, "hydra.sweeper._target_") or "")
    if not target.endswith(("BasicSweeper", "CapacitySweeper")):
        return  # another sweeper: it expands its own jobs
    # the capacity sweeper runs a subset of the basic sweeper's grid (each ladder up to its first failure), so
    # checking the whole grid covers every job it can run
    params = OmegaConf.select(master, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += OmegaConf.to_container(master.hydra.overrides.task)
    job = overrides
    try:
        parsed = OverridesParser.create(config_loader=hydra.config_loader).parse_overrides(arguments)
        jobs = BasicSweeper.split_arguments(parsed, None)[0]
        stores: dict[tuple, object] = {}
        for job in jobs:
            cfg = hydra.config_loader.load_sweep_config(master, list(job))
            check_override_types(cfg, list(job))
            check_known_keys(cfg)
            tracking = (cfg.tracking.backend, cfg.tracking.uri, cfg.tracking.experiment)
            if tracking not in stores:
                stores[tracking] = check_tracking(cfg, cwd)
        sweep_dir = OmegaConf.select(master, "hydra.sweep.dir")
        if sweep_dir is not None:
            validation.writable_dir("hydra.sweep.dir", str(sweep_dir), base=cwd)
    except Exception as exc:  # noqa: BLE001
        _refuse(exc, list(job), compose)
    BasicSweeper.validate_batch_is_legal = lambda self, batch: None  # every job was just composed


def report_hydra_errors_in_one_line() -> None:
    """Make the errors Hydra reports itself (after :func:`preflight`) one line and exit status 2 too."""
    try:
        from hydra._internal import utils as hydra_utils
    except ImportError:  # pragma: no cover - another Hydra
        return
    original = getattr(hydra_utils, "run_and_report", None)
    if original is None or getattr(original, "_rnnbench", False):
        return

    def run_and_report(func):
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            return func()
        except Exception as exc:  # noqa: BLE001
            error = exc
            if _full_error() or not isinstance(error, (RnnbenchError, HydraException, OmegaConfBaseException)):
                def again():
                    raise error

                return original(again)  # Hydra's own report (a short traceback), or the full one
            fail(error_line(error, []))

    run_and_report._rnnbench = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report
