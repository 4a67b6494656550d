"""Plugin discovery: built-ins and entry points through the same hooks, and every way a plugin can go wrong."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pluggy
import pytest

from rnnbench import CellSpec, TaskSpec, hookimpl
from rnnbench.errors import PluginError, UnknownNameError
from rnnbench.manager import BUILTIN_PLUGINS, build_registry, get_plugin_manager

README = Path(__file__).resolve().parents[1] / "README.md"
SMOKE = ["trainer=smoke", "model.hidden_size=8", "task.dependency_length=10", "tracking=none"]


def fake_distribution(root: Path, name: str, source: str) -> dict[str, str]:
    """A real installed distribution (dist-info with an ``rnnbench`` entry point) on PYTHONPATH."""
    site = root / "site"
    site.mkdir(exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[rnnbench]\n{name} = {name}\n")
    return {"PYTHONPATH": str(site)}


def registry_with(*plugins: object):
    pm, dists = get_plugin_manager(load_entrypoints=False)
    for plugin in plugins:
        pm.register(plugin, name=getattr(plugin, "__name__", type(plugin).__name__))
    pm.check_pending()
    return build_registry(pm, dists)




def test_hook_register_cells_adds_a_cell():
    class Plugin:
        __name__ = "extra_cells"

        @hookimpl
        def register_cells(self, register):
            from rnnbench.manager import get_registry

            register(CellSpec(name="gru_again", cell=get_registry(False).cell("gru").cell))

    registry = registry_with(Plugin())
    assert "gru_again" in registry.cells
    assert registry.providers[("cell", "gru_again")] == "extra_cells"


def test_hook_register_tasks_adds_a_task():
    class Plugin:
        __name__ = "extra_tasks"

        @hookimpl
        def register_tasks(self, register):
            from rnnbench.manager import get_registry

            spec = get_registry(False).task("adding")
            register(TaskSpec(name="adding_again", task=spec.task, config=spec.config))

    assert registry_with(Plugin()).task("adding_again").task is not None


def test_builtins_register_through_the_hooks():
    pm, _ = get_plugin_manager(load_entrypoints=False)
    names = {impl.plugin_name for impl in pm.hook.register_cells.get_hookimpls()}
    names |= {impl.plugin_name for impl in pm.hook.register_tasks.get_hookimpls()}
    assert names == set(BUILTIN_PLUGINS)


def test_duplicate_name_names_both_providers():
    class Plugin:
        __name__ = "impostor"

        @hookimpl
        def register_cells(self, register):
            register(CellSpec(name="gru", cell=lambda i, h: None))

    with pytest.raises(PluginError, match=r"cell 'gru' is registered twice: by plugin 'rnnbench.plugins.gru'.*'impostor'"):
        registry_with(Plugin())


def test_unknown_name_lists_the_available_ones():
    registry = registry_with()
    with pytest.raises(UnknownNameError) as info:
        registry.cell("lstmm")
    assert str(info.value).startswith("Unknown cell 'lstmm'; available: ")
    assert "gru" in str(info.value) and "lstm" in str(info.value)


def test_misspelled_hookimpl_fails_loudly():
    class Plugin:
        __name__ = "typo"

        @hookimpl
        def register_cell(self, register):  # missing "s"
            pass

    pm, _ = get_plugin_manager(load_entrypoints=False)
    pm.register(Plugin(), name="typo")
    with pytest.raises(pluggy.PluginValidationError, match="register_cell"):
        pm.check_pending()


def test_wrong_spec_type_is_named():
    class Plugin:
        __name__ = "confused"

        @hookimpl
        def register_cells(self, register):
            register("not a spec")

    with pytest.raises(PluginError, match="plugin 'confused' registered 'not a spec' through register_cells"):
        registry_with(Plugin())


def test_every_hook_has_a_test_and_a_readme_section():
    pm, _ = get_plugin_manager(load_entrypoints=False)
    hooks = [name for name in dir(pm.hook) if not name.startswith("_")]
    tests = set(globals())
    readme = README.read_text()
    for hook in hooks:
        assert f"test_hook_{hook}_adds_a_cell" in tests or any(t.startswith(f"test_hook_{hook}") for t in tests)
        assert re.search(rf"^#+ .*`{hook}\(register\)`", readme, re.M), f"README needs a section for {hook}"


# --- real entry points, in a subprocess -------------------------------------------------------------------------


@pytest.mark.slow
def test_installed_example_plugin_is_discovered_and_runs_with_every_diagnostic(cli, tmp_path):
    listing = cli("plugins", check=True).stdout
    assert re.search(r"mgu\s+rnnbench-mgu==0\.1\.0", listing)
    proc = cli("cell=mgu", "trainer=smoke", "model.hidden_size=8", "task.dependency_length=10",
               "diagnostics.figures=false", check=True)
    assert "rnnbench: mgu on adding" in proc.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = run.data.metrics
    for name in ("forget.weight_h_l0", "candidate.weight_h_l0"):  # found by the default recurrent_weights()
        assert f"diag/sigma_max/{name}" in metrics and f"diag/spectral_radius/{name}" in metrics
    assert any(k.startswith("diag/gate_saturation/forget") for k in metrics), sorted(metrics)


def test_the_readme_shows_the_example_plugin_word_for_word():
    """Every README code block announced by ``<!-- file: path -->`` is that file of the repository."""
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", README.read_text(), re.S)
    assert {path for path, _ in blocks} >= {"examples/rnnbench-mgu/rnnbench_mgu.py",
                                           "examples/rnnbench-mgu/pyproject.toml"}
    for path, text in blocks:
        assert text == (README.parent / path).read_text(), f"README's copy of {path} differs from the file"


@pytest.mark.slow
def test_plugin_that_fails_to_import_is_named_and_can_be_disabled(cli, tmp_path):
    env = fake_distribution(tmp_path, "broken_cells", "import no_such_module_anywhere\n")
    proc = cli(*SMOKE, env=env)
    assert proc.returncode == 2
    assert "plugin 'broken_cells' (distribution broken_cells 0.1) failed to import" in proc.stderr
    assert "RNNBENCH_DISABLE_PLUGINS=broken_cells" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = cli(*SMOKE, env=dict(env, RNNBENCH_DISABLE_PLUGINS="broken_cells"))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
def test_entry_point_with_misspelled_hook_is_named(cli, tmp_path):
    env = fake_distribution(
        tmp_path, "typo_cells", "from rnnbench import hookimpl\n@hookimpl\ndef register_cell(register):\n    pass\n"
    )
    proc = cli(*SMOKE, env=env)
    assert proc.returncode == 2
    assert "plugin 'typo_cells' (typo_cells==0.1)" in proc.stderr and "register_cell" in proc.stderr


@pytest.mark.slow
def test_entry_point_registering_a_duplicate_is_named(cli, tmp_path):
    env = fake_distribution(
        tmp_path,
        "dupe_cells",
        """
        from rnnbench import CellSpec, hookimpl
        from rnnbench.plugins.gru import GRUCell

        @hookimpl
        def register_cells(register):
            register(CellSpec(name="gru", cell=GRUCell))
        """,
    )
    proc = cli(*SMOKE, env=env)
    assert proc.returncode == 2
    assert "cell 'gru' is registered twice" in proc.stderr and "dupe_cells==0.1" in proc.stderr


@pytest.mark.slow
def test_cell_that_breaks_the_contract_is_named_before_training(cli, tmp_path):
    env = fake_distribution(
        tmp_path,
        "bad_shape",
        """
        import torch
        from rnnbench import CellSpec, RecurrentCell, hookimpl

        class BadCell(RecurrentCell):
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.w = torch.nn.Linear(input_size, hidden_size + 1)

            def forward(self, x, h):
                out = self.w(x)
                return out, out

        @hookimpl
        def register_cells(register):
            register(CellSpec(name="bad_shape", cell=BadCell))
        """,
    )
    proc = cli("cell=bad_shape", *SMOKE, env=env)
    assert proc.returncode == 2
    assert "cell 'bad_shape' from plugin bad_shape==0.1 failed" in proc.stderr
    assert "Traceback" not in proc.stderr and "step" not in proc.stdout
