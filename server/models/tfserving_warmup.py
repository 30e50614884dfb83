"""TF Serving's warm-up file, read as TF Serving reads it (``saved_model_warmup_util.cc``).

``<version>/assets.extra/tf_serving_warmup_requests`` is a TFRecord file of
``tensorflow.serving.PredictionLog`` records, at most 1,000 of them. Each
``predict_log`` record's request runs (its tensors decoded by TensorFlow's own
``tf.make_ndarray``, as TF Serving decodes a TensorProto); its signature must be
the one this server serves (or unnamed). Classify, regress, multi-inference,
session-run and streamed-predict records are refused with the reason, as TF
Serving refuses the log types its servable cannot run. An unreadable or
corrupt file, or a record that does not parse, fails the version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from tensorgate.compat.tfserving import prediction_log_pb2
from tensorgate.server.errors import ModelLoadError

MAX_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords


def read_predict_requests(path: Path, signature_name: str) -> list[dict[str, np.ndarray]]:
    """The inputs of every predict request recorded in ``path``, in file order. Raises ModelLoadError."""
    requests = []
    try:
        for number, record in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator(), 1):
            if number > MAX_RECORDS:
                raise ModelLoadError(f"{path}: more than {MAX_RECORDS} warm-up records (TF Serving's limit)")
            requests.append(_predict_inputs(record, signature_name, f"{path}: record {number}"))
    except tf.errors.OpError as exc:  # DataLossError for a file that is not TFRecord, or truncated
        raise ModelLoadError(f"{path}: cannot read the warm-up records (TFRecord expected): {exc.message}") from None
    return requests


def _predict_inputs(record: bytes, signature_name: str, where: str) -> dict[str, np.ndarray]:
    try:
        log = prediction_log_pb2.PredictionLog.FromString(record)
    except DecodeError as exc:
        raise ModelLoadError(f"{where}: not a PredictionLog: {exc}") from None
    kind = log.WhichOneof("log_type")
    if kind != "predict_log":
        raise ModelLoadError(f"{where}: {kind or 'no log type'} is not supported at warm-up; record predict_log")
    request = log.predict_log.request
    if request.model_spec.signature_name not in ("", signature_name):
        raise ModelLoadError(
            f"{where}: names signature {request.model_spec.signature_name!r}; this server serves {signature_name!r}"
        )
    inputs = {}
    for name, tensor in request.inputs.items():
        try:
            inputs[name] = tf.make_ndarray(tensor)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: input {name!r} is not a valid TensorProto: {exc}") from None
    return inputs
