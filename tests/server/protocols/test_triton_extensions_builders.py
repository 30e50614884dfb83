"""Runs ``triton_extensions_cases.py`` (Triton's configuration, statistics, repository index and their JSON, built
on fakes) in a pytest process of its own.

The builders return tensorgate's vendored Triton messages, whose names (``inference.*``) tritonclient's own copy
also defines; the suite's Triton tests load that copy, and protobuf refuses a second definition of a name in one
process. Run the cases directly while working on the builders:
``python -m pytest tests/server/protocols/triton_extensions_cases.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("triton_extensions_cases.py")


def test_triton_extensions_cases_pass_in_a_process_of_their_own() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=CASES.parents[3],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
