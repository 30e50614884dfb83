"""The loader: turns one version directory into a warmed-up servable (what to load is the manager's call).

The runtime follows the model's ``runtime`` setting:

* ``tensorflow``: the SavedModel, called flat (server/runtimes/tensorflow.py);
* ``tflite``: the TFLite interpreter (server/runtimes/tflite.py), or a failed load saying why; outputs are
  not compared (a shipped ``model.tflite`` may be quantized on purpose);
* ``auto``: TFLite when the signature converts and, on the warm-up inputs, its outputs match TensorFlow's
  (floats within rtol 1e-4 / atol 1e-5, other dtypes exactly); otherwise TensorFlow, with one log line giving
  the reason. The warm-up inputs are zeros (empty strings) at batch 1: the check catches a conversion that
  breaks the model, not every numerical difference.

A version placed on a GPU always runs TensorFlow.
"""

from __future__ import annotations

import logging
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from tensorgate.server.errors import ModelLoadError
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.repository import VersionPath
from tensorgate.server.runtimes.devices import DeviceError, resolve_device
from tensorgate.server.runtimes.signature import Servable, Signature
from tensorgate.server.runtimes.tensorflow import SavedModelRuntime
from tensorgate.server.runtimes.tflite import TfLiteRuntime, TfLiteUnavailable, load_tflite, outputs_mismatch
from tensorgate.v1 import codec

log = logging.getLogger(__name__)

TIMED_CALLS = 10  # warm-up calls whose median wall-clock time is the servable's call_seconds


def load_version(version: VersionPath, signature_name: str, config: ModelConfig) -> Servable:
    """Load and warm up one version on its configured device and runtime. Raises ModelLoadError with the reason."""
    try:
        device = resolve_device(config.device)
    except DeviceError as exc:
        raise ModelLoadError(str(exc)) from None
    saved_model = SavedModelRuntime(version.path, signature_name, device)
    inputs = warm_up_inputs(saved_model.signature)
    expected = warm_up(saved_model, inputs)
    if config.runtime == "tensorflow" or device.startswith("GPU"):
        return saved_model
    try:
        lite = _tflite(version, saved_model, inputs, expected if config.runtime == "auto" else None)
    except TfLiteUnavailable as exc:
        if config.runtime == "tflite":
            raise ModelLoadError(f"runtime tflite: {exc}") from None
        fields = {"model": version.model, "version": version.version, "runtime": "tensorflow", "reason": str(exc)}
        log.info("tflite not used", extra={"fields": fields})
        return saved_model
    return lite


def _tflite(
    version: VersionPath,
    saved_model: SavedModelRuntime,
    inputs: dict[str, np.ndarray],
    expected: dict[str, np.ndarray] | None,
) -> TfLiteRuntime:
    """The TFLite servable, warmed up; with ``expected``, only if its outputs on ``inputs`` match them."""
    # Up to one interpreter thread per TensorFlow intra-op thread (configure_tensorflow sets them; 0 = one per
    # core), or one where that measures faster.
    num_threads = tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))
    lite = load_tflite(version.path, saved_model.signature, saved_model.op_types(), num_threads)
    try:
        outputs = warm_up(lite, inputs)
    except ModelLoadError as exc:
        raise TfLiteUnavailable(str(exc)) from None
    if expected is not None and (mismatch := outputs_mismatch(expected, outputs)):
        raise TfLiteUnavailable(mismatch)
    if num_threads > 1:
        # More threads pay off for big models and cost a thread hand-off inside every call of small ones
        # (MNIST: 27 against 8 us at batch 1): keep whichever measured faster.
        single = lite.with_threads(1)
        warm_up(single, inputs)
        if single.call_seconds < lite.call_seconds:
            return single
    return lite


def warm_up_inputs(signature: Signature) -> dict[str, np.ndarray]:
    """One example of zeros (empty strings) per input; dimensions of any size become 1."""
    inputs = {}
    for name, info in signature.inputs.items():
        shape = tuple(1 if d < 0 else d for d in info.shape or (1,))
        dtype = codec.numpy_dtype(info.dtype)
        inputs[name] = np.full(shape, b"", dtype=object) if dtype == codec.STRING_DTYPE else np.zeros(shape, dtype)
    return inputs


def warm_up(servable: Servable, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``inputs`` once, so that the first real request does not pay for tracing or allocation, then set the
    servable's ``call_seconds`` to the median of a few more calls; returns the outputs.

    A model that cannot run them is reported as a failed load.
    """
    try:
        outputs = servable.predict(inputs)
        seconds = []
        for _ in range(TIMED_CALLS):
            started = time.perf_counter()
            servable.predict(inputs)
            seconds.append(time.perf_counter() - started)
    except Exception as exc:
        raise ModelLoadError(f"warm-up failed: {type(exc).__name__}: {exc}") from None
    servable.call_seconds = statistics.median(seconds)
    return outputs
