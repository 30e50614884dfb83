"""The benchmark's own arithmetic, without servers: CPU of a process tree, flags found in help, targets' verdicts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tree_cpu_counts_grandchildren(bench: ModuleType) -> None:
    """A shell whose child burns CPU: the tree's CPU is the child's, found through the parent pids in /proc."""
    burn = "import time\nwhile time.process_time() < 0.4: pass"
    with subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{burn}'; sleep 5"]) as shell:
        try:
            deadline = 50
            while deadline and bench.tree_cpu_s(shell.pid) < 0.35:
                subprocess.run(["sleep", "0.1"], check=True)
                deadline -= 1
            assert len(bench.process_tree(shell.pid)) >= 1
            assert 0.35 <= bench.tree_cpu_s(shell.pid) < 2.0  # the exited child's CPU stays in the shell's cutime
        finally:
            shell.kill()


def test_long_flags(bench: ModuleType) -> None:
    flags = bench.long_flags("  --model-workers MODEL_WORKERS  threads\n  --runtime {auto,tensorflow,tflite}\n")
    assert flags == {"--model-workers", "--runtime"}


def test_goals_say_pass_miss_and_not_run(bench: ModuleType) -> None:
    def run(rps: float, p99: float, cpu: float) -> dict[str, float]:
        return {"requests_per_s": rps, "p50_ms": 1.0, "p99_ms": p99, "cpu_us_per_request": cpu}

    results = {
        "oip": {
            "notes": [],
            "targets": {
                "echo": {"runs": {1: run(3000, 1, 100), 64: run(10000, 10, 100)}, "peak_rss_mb": 40},
                "tensorgate": {"runs": {1: run(2000, 1, 150), 64: run(7000, 10, 150)}, "peak_rss_mb": 600},
                "mlserver": {"runs": {1: run(1000, 2, 400), 64: run(3000, 40, 400)}, "peak_rss_mb": 700},
                "kserve": {"error": "exited with 1 during start-up"},
            },
        }
    }
    results["ratios"] = bench.ratios(results)
    verdicts = {goal.name: goal.result() for goal in bench.goals(results)}
    assert verdicts["OIP c64 req/s: tensorgate / MLServer"] == "pass"  # 7000 / 3000
    assert verdicts["OIP c64 p99: tensorgate / MLServer"] == "pass"  # 0.25
    assert verdicts["OIP c64 CPU/request: tensorgate / echo"] == "pass"  # 1.5
    assert verdicts["OIP c1 p50: tensorgate / echo"] == "pass"
    assert verdicts["OIP c64 req/s: tensorgate / KServe"] == "not run"  # KServe failed
    assert verdicts["peak RSS per server process (tensorgate)"] == "pass"
    assert verdicts["REST c64 / direct gRPC c64, req/s"] == "not run"
    results["oip"]["targets"]["tensorgate"]["runs"][64] = run(5000, 30, 150)
    results["ratios"] = bench.ratios(results)
    verdicts = {goal.name: goal.result() for goal in bench.goals(results)}
    assert verdicts["OIP c64 req/s: tensorgate / MLServer"] == "MISS"
    assert verdicts["OIP c64 p99: tensorgate / MLServer"] == "MISS"
