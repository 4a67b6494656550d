"""The installed package carries plugins, tasks and configs, and puts no generic top-level module on sys.path."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_command_works_from_the_checkout_root():
    """`python -m rnnbench` run from a checkout (the package shadowed by its source tree) still finds its plugins."""
    proc = subprocess.run([sys.executable, "-m", "rnnbench", "plugins"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "  gru " in proc.stdout and "  adding " in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tasks", "plugins", "conf"])
def test_no_generic_top_level_module_from_a_neutral_directory(tmp_path, name):
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


@pytest.mark.slow
def test_installed_package_carries_plugins_tasks_and_configs(tmp_path):
    code = (
        "import rnnbench.plugins.gru, rnnbench.tasks.adding, rnnbench.conf, pathlib;"
        "print(pathlib.Path(rnnbench.conf.__file__).with_name('config.yaml').is_file())"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.stdout.strip() == "True", proc.stderr


@pytest.mark.slow
def test_importing_rnnbench_has_no_side_effects(tmp_path):
    code = (
        "import sys, rnnbench, rnnbench.registry;"
        "print(any(m.startswith(('mlflow', 'hydra', 'rnnbench.plugins', 'rnnbench.tasks')) for m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_wheel_has_only_the_rnnbench_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("rnnbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"rnnbench"}
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rnnbench").rglob("*")
               if p.suffix in (".py", ".yaml", ".typed") and "__pycache__" not in p.parts}
    assert sources and sources <= set(names), sorted(sources - set(names))
