"""What the serving path knows of a model, without TensorFlow: its signature, and the Servable protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tensorgate.v1 import codec


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature.

    ``dtype`` is a ``tensorgate.v1.DataType`` value. ``shape`` lists the
    dimensions with -1 for any size; ``None`` means the rank itself is unknown.
    """

    name: str
    dtype: int
    shape: tuple[int, ...] | None

    def describe(self) -> str:
        """Readable form for error messages, e.g. ``float32[-1, 28, 28]``."""
        shape = "[any rank]" if self.shape is None else str(list(self.shape))
        return f"{codec.dtype_name(self.dtype)}{shape}"


@dataclass(frozen=True)
class Signature:
    """The inputs a caller must send and the outputs the model returns, keyed by name."""

    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


class Servable(Protocol):
    """A loaded model version: its signature and a blocking call that runs it.

    ``runtime`` names what runs it ("tensorflow" or "tflite"); ``call_seconds``
    is the median wall-clock time of one call at batch 1, measured at warm-up.
    """

    signature: Signature
    device: str
    runtime: str
    call_seconds: float

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def breaking_changes(current: Signature, new: Signature) -> list[str]:
    """What in ``new`` would break a caller of ``current``: inputs that appear, disappear or change dtype or
    shape, and outputs that disappear or change dtype or shape. New outputs break nothing."""
    problems = []
    for name in sorted(set(new.inputs) - set(current.inputs)):
        problems.append(f"new input {name!r}")
    for kind, old_specs, new_specs in (("input", current.inputs, new.inputs), ("output", current.outputs, new.outputs)):
        for name, old in sorted(old_specs.items()):
            changed = new_specs.get(name)
            if changed is None:
                problems.append(f"{kind} {name!r} removed")
            elif changed.dtype != old.dtype or not _shapes_compatible(old.shape, changed.shape):
                problems.append(f"{kind} {name!r} changed from {old.describe()} to {changed.describe()}")
    return problems


def _shapes_compatible(old: tuple[int, ...] | None, new: tuple[int, ...] | None) -> bool:
    if old is None or new is None:
        return old is None and new is None
    return len(old) == len(new) and all(a == b or -1 in (a, b) for a, b in zip(old, new, strict=True))
