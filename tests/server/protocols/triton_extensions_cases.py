"""Triton's configuration, statistics and repository index built from what the server knows, on fakes (no
TensorFlow): the mapping of tensorgate's signature and model.toml onto Triton's ModelConfig, of the statistics
recorder onto ModelStatistics, of the registry onto the repository index, and the JSON Triton's HTTP API prints.
``test_cases_in_processes_of_their_own.py`` runs these cases in a process of their own (see there why)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tensorgate.compat.kserve_v2.grpc_service_pb2 import ModelStatisticsResponse
from tensorgate.compat.kserve_v2.model_config_pb2 import DataType, ModelConfig, ModelInput, ModelOutput
from tensorgate.server.config import BatchingConfig
from tensorgate.server.errors import InvalidArgumentError
from tensorgate.server.models.model_config import ModelConfig as TensorgateModelConfig
from tensorgate.server.models.registry import AvailableVersion, ModelRegistry, ModelVersion, VersionState
from tensorgate.server.protocols.triton_extensions import (
    UNLOAD_DEPENDENTS,
    check_parameters,
    model_config,
    model_statistics,
    repository_index,
    triton_json,
)
from tensorgate.server.runtimes.signature import Signature, TensorInfo
from tensorgate.server.serving.statistics import VersionStatistics
from tensorgate.v1.tensor_pb2 import DataType as V1DataType

from support.fakes import FakeServable, float_signature


def version_of(signature: Signature, config: TensorgateModelConfig | None = None) -> AvailableVersion:
    return AvailableVersion("m", 3, config or TensorgateModelConfig(), FakeServable(signature=signature))


Described = list[tuple[str, str, list[int]]]


def types_and_dims(config: ModelConfig) -> tuple[Described, Described]:
    def described(tensors: Sequence[ModelInput | ModelOutput]) -> Described:
        return [(t.name, DataType.Name(t.data_type), list(t.dims)) for t in tensors]

    return described(config.input), described(config.output)


def test_a_batched_model_shows_its_batcher_and_dims_without_the_batch_dimension() -> None:
    batching = BatchingConfig(
        max_batch_size=64, max_queue_delay_us=250, max_queue_size=32, preferred_batch_sizes=(8, 32)
    )
    signature = Signature(
        "serving_default",
        inputs={
            "image": TensorInfo("image", V1DataType.DATA_TYPE_FLOAT32, (-1, 28, 28)),
            "tag": TensorInfo("tag", V1DataType.DATA_TYPE_STRING, (-1,)),
        },
        outputs={"scores": TensorInfo("scores", V1DataType.DATA_TYPE_INT64, (-1, 10))},
    )
    config = model_config(version_of(signature, TensorgateModelConfig(batching=batching)))
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "m",
        "tensorflow_savedmodel",
        "tensorflow",
        64,
    )
    assert types_and_dims(config) == (
        [("image", "TYPE_FP32", [28, 28]), ("tag", "TYPE_STRING", [])],
        [("scores", "TYPE_INT64", [10])],
    )
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 32


@pytest.mark.parametrize(
    ("signature", "batching"),
    [
        (float_signature(shape=(4, 3)), BatchingConfig()),  # no batch dimension of any size: never merged
        (float_signature(shape=(-1, 3)), BatchingConfig(enabled=False)),
    ],
    ids=["fixed first dimension", "batching off"],
)
def test_a_model_that_is_not_batched_shows_max_batch_size_0_and_full_dims(
    signature: Signature, batching: BatchingConfig
) -> None:
    config = model_config(version_of(signature, TensorgateModelConfig(batching=batching)))
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    shape = list(signature.inputs["x"].shape or ())
    assert types_and_dims(config) == ([("x", "TYPE_FP32", shape)], [("y", "TYPE_FP32", shape)])


def test_a_tensor_of_unknown_rank_shows_one_dimension_of_any_size() -> None:
    signature = Signature(
        "serving_default",
        inputs={"x": TensorInfo("x", V1DataType.DATA_TYPE_BOOL, None)},
        outputs={"y": TensorInfo("y", V1DataType.DATA_TYPE_UINT8, None)},
    )
    config = model_config(version_of(signature))
    assert config.max_batch_size == 0
    assert types_and_dims(config) == ([("x", "TYPE_BOOL", [-1])], [("y", "TYPE_UINT8", [-1])])


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (TensorgateModelConfig(), ("latest", {"latest": {"num_versions": 1}})),
        (TensorgateModelConfig(latest_count=3), ("latest", {"latest": {"num_versions": 3}})),
        (TensorgateModelConfig(version_policy="all"), ("all", {"all": {}})),
        (
            TensorgateModelConfig(version_policy="specific", specific_versions=(2, 5)),
            ("specific", {"specific": {"versions": [2, 5]}}),
        ),
    ],
)
def test_the_version_policy_is_model_tomls(
    policy: TensorgateModelConfig, expected: tuple[str, dict[str, object]]
) -> None:
    config = model_config(version_of(float_signature(), policy))
    assert config.version_policy.WhichOneof("policy_choice") == expected[0]
    assert triton_json(config)["version_policy"] == expected[1]


def test_statistics_map_field_by_field() -> None:
    recorder = VersionStatistics("m", 3)
    recorder.queued(2, 30)
    recorder.executed(4, 2, input_ns=10, infer_ns=100, output_ns=5)
    recorder.executed(1, 1, input_ns=1, infer_ns=20, output_ns=2)
    recorder.succeeded(5, 1_000, now_ns=1_700_000_000_123_456_789)
    recorder.failed(40)
    statistics = model_statistics(recorder.snapshot())
    assert (statistics.name, statistics.version, statistics.last_inference) == ("m", "3", 1_700_000_000_123)
    assert (statistics.inference_count, statistics.execution_count) == (5, 2)
    stats = statistics.inference_stats
    durations = {kind: (getattr(stats, kind).count, getattr(stats, kind).ns) for kind in ("success", "fail", "queue")}
    assert durations == {"success": (1, 1_000), "fail": (1, 40), "queue": (2, 30)}
    assert (stats.compute_input.count, stats.compute_input.ns) == (3, 2 * 10 + 1)
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (3, 2 * 100 + 20)
    assert (stats.compute_output.count, stats.compute_output.ns) == (3, 2 * 5 + 2)
    assert [(b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in statistics.batch_stats] == [
        (1, 1, 20),
        (4, 1, 100),
    ]


def test_triton_json_prints_every_field_by_its_proto_name_and_64_bit_integers_as_numbers() -> None:
    recorder = VersionStatistics("m", 3)
    recorder.executed(4, 1, input_ns=10, infer_ns=100, output_ns=5)
    recorder.succeeded(4, 1_000, now_ns=2_000_000)
    printed = triton_json(ModelStatisticsResponse(model_stats=[model_statistics(recorder.snapshot())]))
    [stats] = printed["model_stats"]
    assert (stats["name"], stats["version"], stats["last_inference"], stats["inference_count"]) == ("m", "3", 2, 4)
    assert stats["inference_stats"]["success"] == {"count": 1, "ns": 1_000}
    assert stats["inference_stats"]["fail"] == {"count": 0, "ns": 0}, "fields left at zero are printed"
    assert stats["batch_stats"][0]["batch_size"] == 4 and stats["batch_stats"][0]["compute_infer"]["ns"] == 100
    config = triton_json(model_config(version_of(float_signature(shape=(-1, 28, 28)))))
    assert config["input"][0]["dims"] == [28, 28] and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["max_batch_size"] == 256 and config["platform"] == "tensorflow_savedmodel"
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024


def registry_with_every_state() -> ModelRegistry:
    registry = ModelRegistry()
    config, path = TensorgateModelConfig(), Path("/nowhere")
    servable = FakeServable()
    registry.put(ModelVersion("a", 1, path, VersionState.AVAILABLE, config, servable=servable))
    registry.put(ModelVersion("a", 2, path, VersionState.FAILED, config, error="bad graph"))
    registry.put(ModelVersion("a", 3, path, VersionState.LOADING, config, servable=servable))
    registry.put(ModelVersion("b", 1, path, VersionState.UNLOADING, config, servable=servable))
    registry.add_model("c")
    return registry


def test_the_repository_index_lists_every_version_with_its_state() -> None:
    index = repository_index(registry_with_every_state(), False, lambda model: True)
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
        ("a", "3", "LOADING", ""),
        ("a", "2", "UNAVAILABLE", "bad graph"),
        ("a", "1", "READY", ""),
        ("b", "1", "UNLOADING", ""),
        ("c", "", "UNAVAILABLE", "unloaded"),
    ]


def test_the_repository_index_of_ready_versions_and_of_the_models_a_caller_may_use() -> None:
    registry = registry_with_every_state()
    assert [(m.name, m.version) for m in repository_index(registry, True, lambda model: True).models] == [("a", "1")]
    allowed = repository_index(registry, False, lambda model: model != "a")
    assert [(m.name, m.state) for m in allowed.models] == [("b", "UNLOADING"), ("c", "UNAVAILABLE")]


def test_load_and_unload_parameters_other_than_unload_dependents_are_refused() -> None:
    check_parameters({}, ())
    check_parameters({UNLOAD_DEPENDENTS: True}, (UNLOAD_DEPENDENTS,))
    with pytest.raises(InvalidArgumentError, match=r"parameters 'config, file:1/model.savedmodel' are not supported"):
        check_parameters({"config": "{}", "file:1/model.savedmodel": b""}, ())
    with pytest.raises(InvalidArgumentError, match="accepted: none"):
        check_parameters([UNLOAD_DEPENDENTS], ())
