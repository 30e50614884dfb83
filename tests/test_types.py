"""mypy over the hand-written code (configuration in pyproject.toml; generated stubs excluded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Separate runs: the two scripts are both named generate.py, and codec.py and tensors.py are also reachable as
# tensorgate.v1.codec and tensorgate.v1.tensors through the editable install.
TARGETS = (
    ["server", "clients", "bench", "gateway"],
    ["protos/tensorgate/v1/codec.py", "protos/tensorgate/v1/tensors.py"],
    ["protos/generate.py"],
    ["deploy/generate.py"],
    ["deploy/containers.py", "deploy/docker/requirements.py"],
    ["protos/tensorgate/__main__.py"],
)


@pytest.mark.parametrize("paths", TARGETS, ids=lambda paths: paths[0])
def test_mypy(paths: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *paths], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
