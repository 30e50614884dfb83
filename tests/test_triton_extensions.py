"""Triton's model-configuration, statistics and model-repository extensions, driven by the unmodified
``tritonclient.grpc`` against a server with API keys: a configuration from model.toml, statistics per version
that move with the requests, perf_analyzer's order of calls, and load/unload through the manager for an admin key
only.

One server for the module, over ``mnist`` (versions 1 and 2, policy "all", its own batching), and ``digits`` (a
copy of mnist that the load/unload tests unload and load again, so that ``mnist`` keeps serving the others).
This process never imports ``tensorgate.compat.kserve_v2`` (see tests/test_kserve_v2.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from conftest import ServerProcess, add_key, start_server

MNIST_TOML = """\
version_policy = "all"
[batching]
max_batch_size = 32
max_queue_delay_us = 100
max_queue_size = 64
preferred_batch_sizes = [4, 8]
"""


@dataclass(frozen=True)
class Secured:
    server: ServerProcess
    admin: dict[str, str]  # headers of a key with the predict and admin scopes
    predictor: dict[str, str]  # headers of a key with the predict scope only


@pytest.fixture(scope="module")
def secured(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("triton-extensions")
    models = root / "models"
    shutil.copytree(repository / "mnist" / "1", models / "mnist" / "1")
    shutil.copytree(repository / "mnist" / "1", models / "mnist" / "2")
    (models / "mnist" / "model.toml").write_text(MNIST_TOML)
    shutil.copytree(repository / "mnist" / "1", models / "digits" / "1")
    keys_file = root / "keys.toml"
    admin = {"x-api-key": add_key(keys_file, "ops", "predict,admin")}
    predictor = {"x-api-key": add_key(keys_file, "batch-job", "predict")}
    server = start_server(models, root / "server.log", "--api-keys-file", str(keys_file))
    yield Secured(server, admin, predictor)
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture()
def client(secured: Secured) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(secured.server.target) as client:
        yield client


def images(count: int) -> list[triton.InferInput]:
    tensor = triton.InferInput("keras_tensor", [count, 28, 28], "FP32")
    tensor.set_data_from_numpy(np.random.default_rng(count).random((count, 28, 28), np.float32))
    return [tensor]


def raised_status(call: object) -> str:
    assert callable(call)
    with pytest.raises(InferenceServerException) as raised:
        call()
    return str(raised.value.status()).removeprefix("StatusCode.")


def test_model_config_follows_model_toml(client: triton.InferenceServerClient, secured: Secured) -> None:
    config = client.get_model_config("mnist", headers=secured.predictor).config
    assert (config.name, config.platform, config.max_batch_size) == ("mnist", "tensorflow_savedmodel", 32)
    assert [(i.name, list(i.dims)) for i in config.input] == [("keras_tensor", [28, 28])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("output_0", [10])]
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_FP32"
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8]
    assert (batching.max_queue_delay_microseconds, batching.default_queue_policy.max_queue_size) == (100, 64)
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    as_json = client.get_model_config("mnist", "1", headers=secured.predictor, as_json=True)
    assert as_json["config"]["dynamic_batching"]["preferred_batch_size"] == [4, 8]


def per_version(
    client: triton.InferenceServerClient, headers: dict[str, str]
) -> dict[str, service_pb2.ModelStatistics]:
    response = client.get_inference_statistics("mnist", headers=headers)
    return {stats.version: stats for stats in response.model_stats}


def test_perf_analyzer_flow_config_then_statistics_then_infer(
    client: triton.InferenceServerClient, secured: Secured
) -> None:
    """perf_analyzer reads the metadata and configuration, takes the statistics, infers, and takes them again to
    report the server's side: the counts move by exactly the requests sent, on the version they named only."""
    headers = secured.predictor
    metadata = client.get_model_metadata("mnist", headers=headers)
    config = client.get_model_config("mnist", headers=headers).config
    assert sorted(metadata.versions) == ["1", "2"] and config.max_batch_size == 32
    before = per_version(client, headers)
    assert sorted(before) == ["1", "2"]
    for _ in range(3):
        result = client.infer("mnist", images(4), model_version="2", headers=headers)
        assert result.as_numpy("output_0").shape == (4, 10)
    client.infer("mnist", images(3), model_version="2", headers=headers)  # padded to the preferred size 4
    after = per_version(client, headers)
    was, now = before["2"], after["2"]
    assert now.inference_count - was.inference_count == 15
    assert now.execution_count - was.execution_count == 4
    for kind in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        moved = getattr(now.inference_stats, kind).count - getattr(was.inference_stats, kind).count
        assert moved == 4, kind
        assert getattr(now.inference_stats, kind).ns > getattr(was.inference_stats, kind).ns, kind
    assert now.last_inference > 0 and now.last_inference >= was.last_inference
    calls_was = {b.batch_size: b.compute_infer.count for b in was.batch_stats}
    calls_now = {b.batch_size: b.compute_infer.count for b in now.batch_stats}
    assert calls_now[4] - calls_was.get(4, 0) == 3 and calls_now[3] - calls_was.get(3, 0) == 1
    assert after["1"] == before["1"], "version 1 served nothing"
    [one] = client.get_inference_statistics("mnist", "2", headers=headers).model_stats
    assert (one.name, one.version, one.inference_count) == ("mnist", "2", now.inference_count)


def test_a_failed_request_counts_as_failed(client: triton.InferenceServerClient, secured: Secured) -> None:
    headers = secured.predictor
    was = per_version(client, headers)["2"]
    wrong = triton.InferInput("keras_tensor", [1, 28, 27], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 28, 27), np.float32))
    assert raised_status(lambda: client.infer("mnist", [wrong], model_version="2", headers=headers)) == (
        "INVALID_ARGUMENT"
    )
    now = per_version(client, headers)["2"]
    assert now.inference_stats.fail.count - was.inference_stats.fail.count == 1
    assert (now.inference_count, now.inference_stats.success.count) == (
        was.inference_count,
        was.inference_stats.success.count,
    )


def index(client: triton.InferenceServerClient, headers: dict[str, str]) -> list[tuple[str, str, str, str]]:
    models = client.get_model_repository_index(headers=headers).models
    return [(m.name, m.version, m.state, m.reason) for m in models]


def test_unload_and_load_through_the_manager(client: triton.InferenceServerClient, secured: Secured) -> None:
    admin = secured.admin
    assert index(client, admin) == [
        ("digits", "1", "READY", ""),
        ("mnist", "2", "READY", ""),
        ("mnist", "1", "READY", ""),
    ]
    client.unload_model("digits", headers=admin, unload_dependents=True)
    assert index(client, admin)[0] == ("digits", "", "UNAVAILABLE", "unloaded")
    assert not client.is_model_ready("digits", headers=admin)
    assert raised_status(lambda: client.infer("digits", images(1), headers=admin)) == "UNAVAILABLE"
    client.load_model("digits", headers=admin)
    assert index(client, admin)[0] == ("digits", "1", "READY", "")
    assert client.is_model_ready("digits", headers=admin)
    assert client.infer("digits", images(2), headers=admin).as_numpy("output_0").shape == (2, 10)


def test_a_predict_key_reads_the_repository_but_may_not_change_it(
    client: triton.InferenceServerClient, secured: Secured
) -> None:
    predictor = secured.predictor
    assert index(client, predictor)[0][:3] == ("digits", "1", "READY")
    assert raised_status(lambda: client.load_model("digits", headers=predictor)) == "PERMISSION_DENIED"
    assert raised_status(lambda: client.unload_model("digits", headers=predictor)) == "PERMISSION_DENIED"
    assert raised_status(lambda: client.unload_model("digits")) == "UNAUTHENTICATED"
    assert raised_status(lambda: client.get_model_config("mnist")) == "UNAUTHENTICATED"
    assert client.is_model_ready("digits", headers=predictor), "the refused calls changed nothing"


def test_bad_load_and_unload_requests(client: triton.InferenceServerClient, secured: Secured) -> None:
    admin = secured.admin
    assert raised_status(lambda: client.load_model("nope", headers=admin)) == "NOT_FOUND"
    assert raised_status(lambda: client.unload_model("nope", headers=admin)) == "NOT_FOUND"
    assert raised_status(lambda: client.load_model("digits", headers=admin, config="{}")) == "INVALID_ARGUMENT"
    assert raised_status(lambda: client.load_model("", headers=admin)) == "INVALID_ARGUMENT"
    assert raised_status(lambda: client.get_model_config("mnist", "3", headers=admin)) == "NOT_FOUND"
    assert raised_status(lambda: client.get_inference_statistics("nope", headers=admin)) == "NOT_FOUND"
    assert client.is_server_ready() and client.is_model_ready("digits", headers=admin)
