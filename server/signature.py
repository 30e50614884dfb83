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
    """A loaded model version: its signature and a blocking call that runs it."""

    signature: Signature
    device: str

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
