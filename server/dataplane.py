"""The transport-independent serving path: resolve the version, validate, run the model.

gRPC servicers (and through Envoy, every REST route) call this with decoded
NumPy inputs; it knows nothing of protobuf. Model calls run on a bounded
thread pool so that the event loop keeps answering while TensorFlow works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tensorgate.server.errors import DeadlineExceededError
from tensorgate.server.registry import ModelRegistry, ModelVersion, Servable
from tensorgate.server.validation import Limits, validate_inputs, validate_output_filter


@dataclass(frozen=True)
class Prediction:
    """The outputs of one request and the version that produced them."""

    model: str
    version: int
    outputs: dict[str, np.ndarray]


class DataPlane:
    """Runs predictions against the registry's available versions."""

    def __init__(self, registry: ModelRegistry, executor: ThreadPoolExecutor, limits: Limits) -> None:
        self._registry = registry
        self._executor = executor
        self._limits = limits

    async def predict(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> Prediction:
        """Validate and run one request.

        ``timeout_s`` is what is left of the caller's deadline: a request whose
        deadline passes while it waits for a worker is dropped before the model
        runs. Cancelling the awaiting task also withdraws a request still queued.
        """
        target = self._registry.resolve(model, version)
        servable = _servable(target)
        validate_inputs(servable.signature, inputs, self._limits)
        validate_output_filter(servable.signature, output_filter)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._executor, _run, servable, dict(inputs), deadline)
        if output_filter:
            outputs = {name: outputs[name] for name in output_filter}
        return Prediction(model=target.model, version=target.version, outputs=outputs)


def _servable(version: ModelVersion) -> Servable:
    assert version.servable is not None, "the registry resolves only AVAILABLE versions, which hold a servable"
    return version.servable


def _run(servable: Servable, inputs: dict[str, np.ndarray], deadline: float | None) -> dict[str, np.ndarray]:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceededError("deadline passed while the request waited for a model worker")
    return servable.predict(inputs)
