"""DESIGN's layers as a checked rule: the import-linter contracts of pyproject.toml
(``[tool.importlinter]``) hold for the tree, and they do fail — for an upward import, even one
inside a function, for a cycle between two modules of a package, and for a package that no
layer names.

import-linter runs in a subprocess (``lint-imports`` of this interpreter's environment) with
``PYTHONPATH`` set to the tree under test, so it reads these sources, not an installed copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def _lint_imports() -> str:
    exe = Path(sys.executable).parent / "lint-imports"
    found = str(exe) if exe.is_file() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed: pip install import-linter (a dev dependency)")
    return found


def lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run every contract of pyproject.toml on the ``hounsfield`` package under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([_lint_imports(), "--config", str(PYPROJECT), "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def broken(out: str) -> str:
    """The part of lint-imports' report that lists the broken contracts' imports."""
    return out[out.find("Broken contracts"):] if "Broken contracts" in out else out


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A copy of src/hounsfield to break on purpose."""
    dst = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "hounsfield", dst / "hounsfield",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def test_the_tree_keeps_the_layers_and_has_no_cycles(tmp_path: Path) -> None:
    res = lint(ROOT / "src", tmp_path)
    assert res.returncode == 0, (
        "imports break DESIGN's layers (a module imports only its own layer or below) or make "
        f"a cycle:\n{broken(res.stdout)}{res.stderr}")
    assert "0 broken" in res.stdout


def test_an_upward_import_inside_a_function_is_reported(tree: Path, tmp_path: Path) -> None:
    # archive (the data layer) reaching for web: lazily, where a module-level check would miss it
    (tree / "hounsfield" / "archive" / "upward_probe.py").write_text(
        "def users():\n"
        "    from hounsfield.web.models import User\n"
        "    return User\n")
    res = lint(tree, tmp_path)
    assert res.returncode != 0
    report = broken(res.stdout)
    assert "hounsfield.archive is not allowed to import hounsfield.web" in report
    assert "hounsfield.archive.upward_probe -> hounsfield.web.models (l.2)" in report


def test_a_cycle_between_sibling_modules_is_reported(tree: Path, tmp_path: Path) -> None:
    pkg = tree / "hounsfield" / "infer"
    (pkg / "probe_a.py").write_text("from hounsfield.infer import probe_b  # noqa: F401\n")
    (pkg / "probe_b.py").write_text("def f():\n    from hounsfield.infer import probe_a\n"
                                    "    return probe_a\n")
    res = lint(tree, tmp_path)
    assert res.returncode != 0
    report = broken(res.stdout)
    assert "No cycles are allowed in hounsfield.infer" in report
    assert ".probe_a" in report and ".probe_b" in report


def test_a_package_no_layer_names_is_reported(tree: Path, tmp_path: Path) -> None:
    (tree / "hounsfield" / "unplaced").mkdir()
    (tree / "hounsfield" / "unplaced" / "__init__.py").write_text("")
    res = lint(tree, tmp_path)
    assert res.returncode != 0
    assert "hounsfield.unplaced" in res.stdout + res.stderr
