"""Runs ``tensor_codecs_cases.py`` (the three protocol codecs over their one core: round-trips of every dtype and
every error) in a pytest process of its own.

The KServe v2 codec imports tensorgate's vendored Open Inference Protocol messages, whose names (``inference.*``)
tritonclient's own copy also defines; the suite's Triton tests load that copy, and protobuf refuses a second
definition of a name in one process. Run the cases directly while working on a codec:
``python -m pytest tests/server/protocols/tensor_codecs_cases.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("tensor_codecs_cases.py")


def test_tensor_codec_cases_pass_in_a_process_of_their_own() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=CASES.parents[3],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
