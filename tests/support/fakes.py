"""A NumPy servable and a loader that makes them: the serving core's rules checked without TensorFlow.

``FakeServable`` implements the ``Servable`` protocol of server/runtimes/signature.py; ``FakeLoader`` has the
call shape of ``server.models.loader.load_version`` and stands in for it wherever the manager takes its loader.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tensorgate.server.errors import ModelLoadError
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.repository import VersionPath
from tensorgate.server.runtimes.signature import Signature, TensorInfo
from tensorgate.v1.tensor_pb2 import DataType

GATE_TIMEOUT_S = 60  # a test that forgets to open a gate fails after this instead of hanging


def float_signature(
    inputs: tuple[str, ...] = ("x",), outputs: tuple[str, ...] = ("y",), shape: tuple[int, ...] = (-1, -1)
) -> Signature:
    """A signature of float32 tensors of ``shape`` (a batch of rows of any length by default)."""
    return Signature(
        name="serving_default",
        inputs={name: TensorInfo(name, DataType.DATA_TYPE_FLOAT32, shape) for name in inputs},
        outputs={name: TensorInfo(name, DataType.DATA_TYPE_FLOAT32, shape) for name in outputs},
    )


@dataclass
class FakeServable:
    """Doubles its input ``x`` into ``y``; records each call's batch size and thread.

    ``sleep_s`` is how long a call takes on the wall clock; ``gate`` (open unless closed by the test) holds a call
    until it is set, with ``entered`` set once a call is inside; a call whose input holds ``poison`` raises.
    """

    signature: Signature = field(default_factory=float_signature)
    device: str = "CPU:0"
    runtime: str = "fake"
    call_seconds: float = 0.0  # what the runtime measured at warm-up (the batcher's first estimate)
    sleep_s: float = 0.0
    poison: float | None = None
    calls: list[tuple[int, str]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append((len(x), threading.current_thread().name))
        self.entered.set()
        if not self.gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError("the test never opened the gate")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.poison is not None and bool((x == self.poison).any()):
            raise ValueError(f"poisoned input {self.poison}")
        return {"y": x * 2}

    def batch_sizes(self) -> list[int]:
        return [size for size, _ in self.calls]


@dataclass
class FakeLoader:
    """Loads a ``FakeServable`` per version directory, as ``load_version(path, signature_name, config)`` does.

    ``broken`` versions fail to load with ModelLoadError; ``signatures`` gives some versions a signature of their
    own; ``gates`` holds the load of a version (on the manager's loading thread) until the test sets it.
    """

    broken: set[int] = field(default_factory=set)
    signatures: dict[int, Signature] = field(default_factory=dict)
    gates: dict[int, threading.Event] = field(default_factory=dict)
    loads: list[tuple[str, int]] = field(default_factory=list)
    loading: threading.Event = field(default_factory=threading.Event)

    def __call__(self, path: VersionPath, signature_name: str, config: ModelConfig) -> FakeServable:
        self.loads.append((path.model, path.version))
        self.loading.set()
        gate = self.gates.get(path.version)
        if gate is not None and not gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError("the test never opened the gate")
        if path.version in self.broken:
            raise ModelLoadError(f"version {path.version} is broken")
        return FakeServable(signature=self.signatures.get(path.version, float_signature()))


def write_versions(root: Path, model: str, *versions: int, config: str = "") -> None:
    """Version directories that the repository scan counts as complete, and ``model.toml`` when ``config``."""
    for version in versions:
        (root / model / str(version)).mkdir(parents=True, exist_ok=True)
        (root / model / str(version) / "saved_model.pb").write_bytes(b"")
    if config:
        (root / model / "model.toml").write_text(config)
