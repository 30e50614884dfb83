"""The loader: turns one version directory into a warmed-up servable (what to load is the manager's call).

The runtime follows the model's ``runtime`` setting:

* ``tensorflow``: the SavedModel, called flat (server/runtimes/tensorflow.py);
* ``tflite``: the TFLite interpreter (server/runtimes/tflite.py), or a failed load saying why; outputs are
  not compared (a shipped ``model.tflite`` may be quantized on purpose);
* ``auto``: TFLite when the signature converts and, on the warm-up requests, its outputs match TensorFlow's
  (floats within rtol 1e-4 / atol 1e-5, other dtypes exactly); otherwise TensorFlow, with one log line giving
  the reason. The check catches a conversion that breaks the model, not every numerical difference.

A version placed on a GPU always runs TensorFlow.

Every candidate runs the version's warm-up requests (server/models/warmup.py: TF Serving's recorded requests,
or the ``[warmup]`` table of model.toml) before it may serve, then a few timed calls on zeros at batch 1; a
warm-up that fails fails the version with the reason. ``tensorgate_model_warmup_requests_total`` counts the
warm-up calls of the servable that serves.
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
from tensorgate.server.models.warmup import Inputs, generated_inputs, warmup_requests
from tensorgate.server.observability import metrics
from tensorgate.server.runtimes.devices import DeviceError, resolve_device
from tensorgate.server.runtimes.signature import Servable
from tensorgate.server.runtimes.tensorflow import SavedModelRuntime
from tensorgate.server.runtimes.tflite import TfLiteRuntime, TfLiteUnavailable, load_tflite, outputs_mismatch

log = logging.getLogger(__name__)

TIMED_CALLS = 10  # warm-up calls whose median wall-clock time is the servable's call_seconds


def load_version(version: VersionPath, signature_name: str, config: ModelConfig) -> Servable:
    """Load and warm up one version on its configured device and runtime. Raises ModelLoadError with the reason."""
    try:
        device = resolve_device(config.device)
    except DeviceError as exc:
        raise ModelLoadError(str(exc)) from None
    saved_model = SavedModelRuntime(version.path, signature_name, device)
    requests = warmup_requests(version, saved_model.signature, config)
    count = config.warmup.count
    expected = warm_up(saved_model, requests, count)
    servable: Servable = saved_model
    if config.runtime != "tensorflow" and not device.startswith("GPU"):
        try:
            servable = _tflite(version, saved_model, requests, count, expected if config.runtime == "auto" else None)
        except TfLiteUnavailable as exc:
            if config.runtime == "tflite":
                raise ModelLoadError(f"runtime tflite: {exc}") from None
            fields = {"model": version.model, "version": version.version, "runtime": "tensorflow", "reason": str(exc)}
            log.info("tflite not used", extra={"fields": fields})
    metrics.WARMUP_REQUESTS.labels(model=version.model, version=str(version.version)).inc(len(requests) * count)
    return servable


def _tflite(
    version: VersionPath,
    saved_model: SavedModelRuntime,
    requests: list[Inputs],
    count: int,
    expected: list[dict[str, np.ndarray]] | None,
) -> TfLiteRuntime:
    """The TFLite servable, warmed up; with ``expected``, only if its outputs on ``requests`` match them."""
    # Up to one interpreter thread per TensorFlow intra-op thread (configure_tensorflow sets them; 0 = one per
    # core), or one where that measures faster.
    num_threads = tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))
    lite = load_tflite(version.path, saved_model.signature, saved_model.op_types(), num_threads)
    try:
        outputs = warm_up(lite, requests, count)
    except ModelLoadError as exc:
        raise TfLiteUnavailable(str(exc)) from None
    if expected is not None:
        for number, (want, got) in enumerate(zip(expected, outputs, strict=True), 1):
            if mismatch := outputs_mismatch(want, got):
                raise TfLiteUnavailable(f"warm-up request {number}: {mismatch}")
    if num_threads > 1:
        # More threads pay off for big models and cost a thread hand-off inside every call of small ones
        # (MNIST: 27 against 8 us at batch 1): keep whichever measured faster.
        single = lite.with_threads(1)
        warm_up(single, requests, count)
        if single.call_seconds < lite.call_seconds:
            return single
    return lite


def warm_up(servable: Servable, requests: list[Inputs], count: int) -> list[dict[str, np.ndarray]]:
    """Run each of ``requests`` ``count`` times, so that the first real calls do not pay for tracing or
    allocation, then set the servable's ``call_seconds`` to the median of a few calls on zeros at batch 1;
    returns the outputs of each request's first run.

    A model that cannot run them is reported as a failed load.
    """
    outputs = []
    for number, inputs in enumerate(requests, 1):
        try:
            outputs.append(servable.predict(inputs))
            for _ in range(count - 1):
                servable.predict(inputs)
        except Exception as exc:
            raise ModelLoadError(f"warm-up request {number} failed: {type(exc).__name__}: {exc}") from None
    timing = generated_inputs(servable.signature, batch=1)
    try:
        servable.predict(timing)
        seconds = []
        for _ in range(TIMED_CALLS):
            started = time.perf_counter()
            servable.predict(timing)
            seconds.append(time.perf_counter() - started)
    except Exception as exc:
        raise ModelLoadError(f"warm-up failed: {type(exc).__name__}: {exc}") from None
    servable.call_seconds = statistics.median(seconds)
    return outputs
