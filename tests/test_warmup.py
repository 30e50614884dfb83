"""Warm-up with real inputs, for real: TF Serving's ``assets.extra/tf_serving_warmup_requests`` written with
TensorFlow's TFRecordWriter and the tensorflow-serving-api messages, run on the version before it is AVAILABLE; a
broken file fails that version and the previous one keeps serving; the ``[warmup]`` table's file, random data and
preferred batch sizes, counted by a model that adds up the batch sizes it was called with.

This process never imports ``tensorgate.compat.tfserving`` (see tests/test_tfserving.py): the server reads the
warm-up files in a process of its own, and the vendored PredictionLog is compared from a subprocess.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc_tools.protoc  # noqa: F401  (before TensorFlow, as in test_tfserving.py)
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2
from prometheus_client import REGISTRY
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

from tensorgate.clients.client import TensorgateClient
from tensorgate.server.errors import ModelLoadError
from tensorgate.server.models.loader import TIMED_CALLS, load_version
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.repository import VersionPath
from tensorgate.v1.model_service_pb2 import ModelVersionState

from conftest import ServerProcess, build_checking_model, start_server

AVAILABLE = ModelVersionState.MODEL_VERSION_STATE_AVAILABLE
FAILED = ModelVersionState.MODEL_VERSION_STATE_FAILED
WARMUP_METRIC = "tensorgate_model_warmup_requests_total"
RECORDED_BATCHES = (1, 2, 5)  # the batch sizes of the recorded requests
COUNT = 2  # [warmup] count: each recorded request runs twice
DUMP_PREDICTION_LOG = """
import sys
from tensorgate.compat.tfserving import prediction_log_pb2
sys.stdout.buffer.write(prediction_log_pb2.DESCRIPTOR.serialized_pb)
"""


def build_counting_model(path: Path) -> None:
    """y = 2x, and ``seen``: the sum of the batch sizes of every call so far (one value per example)."""

    class Counting(tf.Module):
        def __init__(self) -> None:
            self.seen = tf.Variable(0, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            seen = self.seen.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
            return {"y": x * 2.0, "seen": tf.fill(tf.shape(x)[:1], seen)}

    module = Counting()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def write_warmup_file(version: Path, logs: list[prediction_log_pb2.PredictionLog]) -> None:
    """The file as TF Serving's documentation writes it: a TFRecord of serialized PredictionLog messages."""
    (version / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(version / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def predict_log(
    inputs: dict[str, np.ndarray], signature_name: str = "serving_default"
) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "counting"
    request.model_spec.signature_name = signature_name
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def recorded_logs() -> list[prediction_log_pb2.PredictionLog]:
    return [predict_log({"x": np.full((batch, 4), batch, np.float32)}) for batch in RECORDED_BATCHES]


def seen_after_load(client: TensorgateClient, model: str) -> int:
    """The batch sizes the serving copy ran so far, this one-example call included."""
    return int(client.predict(model, np.zeros((1, 4), np.float32), output="seen")[0])


def states(client: TensorgateClient, model: str) -> dict[str, tuple[int, str]]:
    return {v.version: (v.state, v.error) for v in client.model_status(model).versions}


@pytest.fixture(scope="module")
def counting_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("counting") / "1"
    build_counting_model(path)
    return path


@pytest.fixture(scope="module")
def warm_server(
    counting_source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    """counting/1 with three recorded warm-up requests run twice each, the repository watched every 0.2 s."""
    root = tmp_path_factory.mktemp("warmup-repository")
    shutil.copytree(counting_source, root / "counting" / "1")
    write_warmup_file(root / "counting" / "1", recorded_logs())
    (root / "counting" / "model.toml").write_text(f'runtime = "tensorflow"\n[warmup]\ncount = {COUNT}\n')
    server = start_server(root, tmp_path_factory.mktemp("warmup") / "server.log", "--poll-interval-s", "0.2")
    yield server, root
    assert server.stop() == 0, server.log()[-5000:]


def test_vendored_prediction_log_is_tf_servings_on_the_wire() -> None:
    dumped = subprocess.run([sys.executable, "-c", DUMP_PREDICTION_LOG], capture_output=True, check=True, timeout=120)
    ours = {m.name: m for m in descriptor_pb2.FileDescriptorProto.FromString(dumped.stdout).message_type}
    upstream = descriptor_pb2.FileDescriptorProto.FromString(prediction_log_pb2.DESCRIPTOR.serialized_pb)
    theirs = {m.name: m for m in upstream.message_type}
    # Upstream defines LogMetadata in logging.proto; the copy defines it (fieldless) beside PredictionLog, same name.
    assert set(ours) == set(theirs) | {"LogMetadata"}
    assert ours["PredictionLog"] == theirs["PredictionLog"]
    assert ours["PredictLog"] == theirs["PredictLog"]
    assert ours["PredictStreamedLog"] == theirs["PredictStreamedLog"]


def test_recorded_requests_run_before_the_version_is_available(
    warm_server: tuple[ServerProcess, Path],
) -> None:
    server, _ = warm_server
    expected_calls = len(RECORDED_BATCHES) * COUNT
    assert server.metric(WARMUP_METRIC, model="counting", version="1") == expected_calls
    with TensorgateClient(server.target) as client:
        assert states(client, "counting") == {"1": (AVAILABLE, "")}
        # The serving copy itself ran them: each recorded batch twice, the timed calls at batch 1, and this call.
        assert seen_after_load(client, "counting") == COUNT * sum(RECORDED_BATCHES) + TIMED_CALLS + 1 + 1


def test_a_new_version_turns_available_only_with_its_warm_up_done(warm_server: tuple[ServerProcess, Path]) -> None:
    server, root = warm_server
    staging = root / "counting" / ".incoming-2"
    shutil.copytree(root / "counting" / "1", staging)  # with its assets.extra
    staging.rename(root / "counting" / "2")
    deadline = time.monotonic() + 120
    with TensorgateClient(server.target) as client:
        while states(client, "counting").get("2", (None, ""))[0] != AVAILABLE:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)
        # The state was read first: the warm-up calls were all counted before it said AVAILABLE.
        assert server.metric(WARMUP_METRIC, model="counting", version="2") == len(RECORDED_BATCHES) * COUNT


@pytest.mark.parametrize(
    ("logs", "garbage", "reason"),
    [
        ([], b"this is not a TFRecord file", "cannot read the warm-up records (TFRecord expected)"),
        (
            [
                prediction_log_pb2.PredictionLog(
                    classify_log=prediction_log_pb2.ClassifyLog(request=classification_pb2.ClassificationRequest())
                )
            ],
            b"",
            "record 1: classify_log is not supported at warm-up; record predict_log",
        ),
        ([predict_log({"image": np.zeros((1, 4), np.float32)})], b"", "record 1: inputs ['image'] do not match"),
        ([predict_log({"x": np.zeros((1, 3), np.float32)})], b"", "input 'x' is float32[1, 3], the signature takes"),
        ([predict_log({"x": np.zeros((1, 4), np.float32)}, "other")], b"", "names signature 'other'; this server"),
    ],
)
def test_a_broken_warm_up_fails_that_version_and_the_previous_keeps_serving(
    warm_server: tuple[ServerProcess, Path],
    logs: list[prediction_log_pb2.PredictionLog],
    garbage: bytes,
    reason: str,
) -> None:
    server, root = warm_server
    model = root / "counting"
    serving = max(int(p.name) for p in model.iterdir() if p.name.isdigit())
    number = serving + 1
    staging = model / f".incoming-{number}"
    shutil.copytree(model / "1", staging)
    if garbage:
        (staging / "assets.extra" / "tf_serving_warmup_requests").write_bytes(garbage)
    else:
        write_warmup_file(staging, logs)
    staging.rename(model / str(number))
    deadline = time.monotonic() + 120
    with TensorgateClient(server.target) as client:
        while states(client, "counting").get(str(number), (None, ""))[0] != FAILED:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)
        _, error = states(client, "counting")[str(number)]
        assert reason in error and "tf_serving_warmup_requests" in error
        # The previous version is still the one serving (each broken version stays on disk, failed).
        served = [v for v, (s, _) in states(client, "counting").items() if s == AVAILABLE]
        assert len(served) == 1 and int(served[0]) < number
        assert client.predict("counting", np.ones((1, 4), np.float32), output="y").tolist() == [[2.0] * 4]
    assert server.metric(WARMUP_METRIC, model="counting", version=str(number)) == 0
    assert server.process.poll() is None


def warmup_calls(version: int) -> float:
    return REGISTRY.get_sample_value(WARMUP_METRIC, {"model": "counting", "version": str(version)}) or 0.0


def load_counting(path: Path, number: int, **settings: object) -> tuple[int, int]:
    """Load a fresh copy of the counting model at ``path`` with ``settings``; the batch sizes it ran, this
    one-example call included, and the warm-up calls counted."""
    before = warmup_calls(number)
    config = ModelConfig.model_validate({"device": "cpu", "runtime": "tensorflow", **settings})
    servable = load_version(VersionPath("counting", number, path), "serving_default", config)
    return int(servable.predict({"x": np.zeros((1, 4), np.float32)})["seen"][0]), int(warmup_calls(number) - before)


def test_preferred_batch_sizes_are_warmed_count_times(counting_source: Path, tmp_path: Path) -> None:
    path = tmp_path / "counting" / "11"
    shutil.copytree(counting_source, path)
    settings = {"batching": {"preferred_batch_sizes": (8, 4)}, "warmup": {"count": 3}}
    assert load_counting(path, 11, **settings) == (3 * (1 + 4 + 8) + TIMED_CALLS + 1 + 1, 9)


def test_npy_file_and_random_data(counting_source: Path, tmp_path: Path) -> None:
    path = tmp_path / "counting" / "12"
    shutil.copytree(counting_source, path)
    np.save(path.parent / "warm.npy", np.ones((3, 4), np.float32))
    assert load_counting(path, 12, warmup={"inputs": "warm.npy"}) == (3 + TIMED_CALLS + 1 + 1, 1)
    settings = {"warmup": {"inputs": "random"}, "batching": {"preferred_batch_sizes": (2,)}}
    assert load_counting(path, 12, **settings) == (1 + 2 + TIMED_CALLS + 1 + 1, 2)


def test_a_model_error_at_warm_up_fails_the_load(tmp_path: Path) -> None:
    """A model that refuses negative inputs, warmed up with a negative one."""
    path = tmp_path / "checking" / "1"
    build_checking_model(path)
    np.save(path / "warm.npy", -np.ones((2, 4), np.float32))
    config = ModelConfig.model_validate({"device": "cpu", "warmup": {"inputs": "warm.npy"}})
    with pytest.raises(ModelLoadError, match=r"(?s)^warm-up request 1 failed: InvalidArgumentError: .*non-negative"):
        load_version(VersionPath("checking", 1, path), "serving_default", config)
