"""Triton's model-configuration, statistics and model-repository extensions, for any protocol to serve.

``TritonExtensions`` answers the five calls over the registry, the statistics recorder and the manager, taking a
``Call`` (the caller, checked for the model it names) and plain names, and returning Triton's protobuf messages:
``kserve_v2`` answers the gRPC methods with them, and a REST route answers with the same message as JSON
(``triton_json``: Triton's HTTP API prints these messages with their proto field names and 64-bit integers as
numbers). The mappings themselves (``model_config``, ``model_statistics``, ``repository_index``) are functions of
what the server knows, with no caller, so they are tested on fakes.

How tensorgate's model maps onto Triton's:

* the configuration is built from the version's signature and its ``model.toml``: platform
  ``tensorflow_savedmodel``, backend ``tensorflow``; ``max_batch_size`` is the batcher's when it merges requests
  (batching on, and a batch dimension of any size first in every input and output), else 0; inputs and outputs
  without that batch dimension when ``max_batch_size`` > 0, as Triton writes them (a tensor of unknown rank shows
  one dimension of any size); ``dynamic_batching`` with the queue delay, the preferred sizes and the queue size;
  the version policy. A request names a version by number or label, or none for the one that serves;
* statistics are those of one version (named), of a model's AVAILABLE versions, or of the AVAILABLE versions of
  every model the caller may use (no model named), as Triton answers; they count from the server's start;
* the repository index lists every model of the repository: one entry per version the server holds (READY,
  LOADING, UNLOADING, or UNAVAILABLE with the reason it failed), or one UNAVAILABLE entry, reason "unloaded",
  for a model with none;
* load serves the model's versions by its policy (again after an unload; versions already loaded keep their
  copies: tensorgate.v1's ReloadModel loads fresh ones) and fails with the reason when no version can serve;
  unload stops serving all its versions until the next load. Both take no parameters but Triton's
  ``unload_dependents`` (a tensorgate model has no dependents); the repository name is ignored (the server has
  one repository).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tensorgate.compat.kserve_v2.grpc_service_pb2 import (
    InferBatchStatistics,
    InferStatistics,
    ModelStatistics,
    ModelStatisticsResponse,
    RepositoryIndexResponse,
    StatisticDuration,
)
from tensorgate.compat.kserve_v2.model_config_pb2 import (
    DataType,
    ModelConfig,
    ModelDynamicBatching,
    ModelInput,
    ModelOutput,
    ModelQueuePolicy,
    ModelVersionPolicy,
)
from tensorgate.server.errors import InvalidArgumentError, quote
from tensorgate.server.models.manager import ModelManager
from tensorgate.server.models.model_config import ModelConfig as TensorgateModelConfig
from tensorgate.server.models.registry import AvailableVersion, ModelRegistry, VersionState
from tensorgate.server.protocols.rpc import Call
from tensorgate.server.runtimes.signature import TensorInfo
from tensorgate.server.serving.batching import batchable
from tensorgate.server.serving.statistics import Duration, Snapshot, Statistics
from tensorgate.v1 import tensors

PLATFORM = "tensorflow_savedmodel"  # Triton's name for the platform of a SavedModel
BACKEND = "tensorflow"
# Triton's index states; a failed version is UNAVAILABLE with its reason, as in Triton.
_INDEX_STATES = {
    VersionState.LOADING: "LOADING",
    VersionState.AVAILABLE: "READY",
    VersionState.FAILED: "UNAVAILABLE",
    VersionState.UNLOADING: "UNLOADING",
}
READY = _INDEX_STATES[VersionState.AVAILABLE]
UNLOAD_DEPENDENTS = "unload_dependents"


def _data_type(dtype: int) -> DataType.ValueType:
    """Triton's configuration type of a ``tensorgate.v1.DataType``: ``TYPE_`` and the v2 datatype, but BYTES,
    which Triton's configuration calls TYPE_STRING."""
    datatype = tensors.BY_V1[dtype].v2
    return DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def _dims(info: TensorInfo, batched: bool) -> tuple[int, ...]:
    if info.shape is None:
        return (-1,)
    return info.shape[1:] if batched else info.shape


def _version_policy(config: TensorgateModelConfig) -> ModelVersionPolicy:
    if config.version_policy == "all":
        return ModelVersionPolicy(all=ModelVersionPolicy.All())
    if config.version_policy == "specific":
        return ModelVersionPolicy(specific=ModelVersionPolicy.Specific(versions=config.specific_versions))
    return ModelVersionPolicy(latest=ModelVersionPolicy.Latest(num_versions=config.latest_count))


def model_config(version: AvailableVersion) -> ModelConfig:
    """Triton's configuration of a served version (see the module's docstring for the mapping)."""
    batching = version.config.batching
    max_batch_size = batching.max_batch_size if batching.enabled and batchable(version.servable) else 0
    batched = max_batch_size > 0
    signature = version.servable.signature
    config = ModelConfig(
        name=version.model,
        platform=PLATFORM,
        backend=BACKEND,
        version_policy=_version_policy(version.config),
        max_batch_size=max_batch_size,
        input=[
            ModelInput(name=info.name, data_type=_data_type(info.dtype), dims=_dims(info, batched))
            for info in signature.inputs.values()
        ],
        output=[
            ModelOutput(name=info.name, data_type=_data_type(info.dtype), dims=_dims(info, batched))
            for info in signature.outputs.values()
        ],
    )
    if batched:
        config.dynamic_batching.CopyFrom(
            ModelDynamicBatching(
                preferred_batch_size=batching.preferred_batch_sizes,
                max_queue_delay_microseconds=batching.max_queue_delay_us,
                default_queue_policy=ModelQueuePolicy(max_queue_size=batching.max_queue_size),
            )
        )
    return config


def _duration(duration: Duration) -> StatisticDuration:
    return StatisticDuration(count=duration.count, ns=duration.ns)


def model_statistics(snapshot: Snapshot) -> ModelStatistics:
    """Triton's statistics of one version from the recorder's snapshot."""
    return ModelStatistics(
        name=snapshot.model,
        version=str(snapshot.version),
        last_inference=snapshot.last_inference_ms,
        inference_count=snapshot.inference_count,
        execution_count=snapshot.execution_count,
        inference_stats=InferStatistics(
            success=_duration(snapshot.success),
            fail=_duration(snapshot.fail),
            queue=_duration(snapshot.queue),
            compute_input=_duration(snapshot.compute_input),
            compute_infer=_duration(snapshot.compute_infer),
            compute_output=_duration(snapshot.compute_output),
        ),
        batch_stats=[
            InferBatchStatistics(
                batch_size=batch.batch_size,
                compute_input=_duration(batch.compute_input),
                compute_infer=_duration(batch.compute_infer),
                compute_output=_duration(batch.compute_output),
            )
            for batch in snapshot.batches
        ],
    )


def repository_index(registry: ModelRegistry, ready: bool, may_use: Callable[[str], bool]) -> RepositoryIndexResponse:
    """Every model of the repository that ``may_use`` allows, by name, its versions newest first; only the READY
    versions when ``ready``."""
    index = RepositoryIndexResponse()
    for model in registry.model_names():
        if not may_use(model):
            continue
        versions = registry.versions(model)
        for version in versions:
            state = _INDEX_STATES[version.state]
            if not ready or state == READY:
                index.models.add(name=model, version=str(version.version), state=state, reason=version.error)
        if not versions and not ready:
            index.models.add(name=model, state="UNAVAILABLE", reason="unloaded")
    return index


def check_parameters(parameters: Iterable[str], allowed: tuple[str, ...]) -> None:
    """INVALID_ARGUMENT for a load or unload parameter (by name) other than ``allowed``, which tensorgate cannot
    honour."""
    refused = sorted(set(parameters) - set(allowed))
    if refused:
        accepted = ", ".join(allowed) or "none"
        raise InvalidArgumentError(
            f"parameters {quote(', '.join(refused))} are not supported (accepted: {accepted}): a model's "
            "configuration is its model.toml and its files are those of the repository"
        )


class TritonExtensions:
    """Triton's ModelConfig, ModelStatistics, RepositoryIndex and RepositoryModelLoad/Unload over the server's
    registry, statistics and manager, for any protocol: each takes the ``Call`` (so that the caller is checked for
    the model it names and the request is counted under it) and plain names."""

    def __init__(self, registry: ModelRegistry, statistics: Statistics, manager: ModelManager) -> None:
        self._registry = registry
        self._statistics = statistics
        self._manager = manager

    def config(self, call: Call, model: str, version: str = "") -> ModelConfig:
        """The configuration of ``model``'s ``version`` (number or label; "" for the one that serves)."""
        return model_config(call.resolve(model, version))

    def statistics(self, call: Call, model: str = "", version: str = "") -> ModelStatisticsResponse:
        """A named version's statistics, or those of every AVAILABLE version of the model (of every model the
        caller may use when ``model`` is "")."""
        if version:
            served = call.resolve(model, version)
            versions = [(served.model, served.version)]
        else:
            names = [call.select(model)] if model else self._registry.model_names()
            versions = [
                (name, found.version)
                for name in names
                if call.may_use(name)
                for found in self._registry.versions(name)
                if found.state is VersionState.AVAILABLE
            ]
        snapshots = (self._statistics.snapshot(name, number) for name, number in versions)
        return ModelStatisticsResponse(model_stats=[model_statistics(snapshot) for snapshot in snapshots])

    def index(self, call: Call, ready: bool = False) -> RepositoryIndexResponse:
        """The repository's models that the caller may use (only the READY versions when ``ready``)."""
        return repository_index(self._registry, ready, call.may_use)

    async def load(self, call: Call, model: str, parameters: Iterable[str] = ()) -> None:
        """Serve ``model`` by its policy; UNAVAILABLE, with each version's reason, when no version can serve."""
        check_parameters(parameters, ())
        name = call.select(model)
        await self._manager.load(name, "")
        self._registry.resolve(name, "")

    async def unload(self, call: Call, model: str, parameters: Iterable[str] = ()) -> None:
        """Stop serving every version of ``model`` until the next load."""
        check_parameters(parameters, (UNLOAD_DEPENDENTS,))
        await self._manager.unload(call.select(model), "")


_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def triton_json(message: Message) -> dict[str, Any]:
    """``message`` as Triton's HTTP API prints it: the protobuf JSON mapping with the proto field names and every
    field, but 64-bit integers as JSON numbers (protobuf's mapping writes them as strings, which perf_analyzer and
    model-analyzer do not read)."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(message.DESCRIPTOR, data)
    return data


def _int64_as_numbers(descriptor: Descriptor, data: dict[str, Any]) -> None:
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                value[key] = _converted(entry, item)
        elif field.is_repeated:
            data[field.name] = [_converted(field, item) for item in value]
        else:
            data[field.name] = _converted(field, value)


def _converted(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64_TYPES:
        return int(value)
    if field.message_type is not None and isinstance(value, dict):
        _int64_as_numbers(field.message_type, value)
    return value
