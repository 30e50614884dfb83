"""ruff over the whole repository (generated stubs excluded in pyproject.toml), and the import contracts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_and_format() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    check = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


def test_imports_point_down(tmp_path: Path) -> None:
    """The import-linter contracts in pyproject.toml (layers of server/, TensorFlow only where it is needed, the
    contracts' package and the client standing alone).

    import-linter reads packages from directories, and the editable install maps ``tensorgate.*`` onto the
    top-level folders without one: the test lays the mapping of pyproject.toml out as a copy first (a copy, not links:
    the root package ``tensorgate/`` holds the others, and import-linter follows no linked folder inside a package).
    """
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items()):  # a package before the packages mapped inside it
        shutil.copytree(
            ROOT / folder,
            tmp_path.joinpath(*package.split(".")),
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # From the copy: import-linter puts its working directory first on sys.path, where ROOT/tensorgate/ would shadow it.
    config = ["--config", str(ROOT / "pyproject.toml")]
    result = subprocess.run([lint, *config], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
