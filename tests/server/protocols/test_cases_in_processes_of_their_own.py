"""Runs each ``*_cases.py`` here (the three protocol codecs over their one core, the REST protocols' tensors,
Triton's config and statistics builders) in a pytest process of its own.

These modules import tensorgate's vendored Open Inference Protocol and Triton messages, whose names (``inference.*``)
tritonclient's own copy also defines; the suite's Triton tests load that copy, and protobuf refuses a second
definition of a name in one process. Run a module directly while working on it:
``python -m pytest tests/server/protocols/tensor_codecs_cases.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = sorted(Path(__file__).parent.glob("*_cases.py"))


@pytest.mark.parametrize("cases", CASES, ids=lambda path: path.stem)
def test_cases_pass_in_a_process_of_their_own(cases: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        cwd=cases.parents[3],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
