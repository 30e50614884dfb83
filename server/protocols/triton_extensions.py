"""Triton's model-configuration, statistics and model-repository extensions, as protobuf messages.

Functions of what the server knows (a served version, the statistics recorder, the registry), with no transport:
``kserve_v2`` answers the gRPC methods with them, and a REST route answers with the same message rendered by
``google.protobuf.json_format.MessageToJson`` (``preserving_proto_field_name=True`` gives Triton's field names).

How tensorgate's model maps onto Triton's:

* the configuration is built from the version's signature and its ``model.toml``: platform
  ``tensorflow_savedmodel``, backend ``tensorflow``; ``max_batch_size`` is the batcher's when it merges requests
  (batching on, and a batch dimension of any size first in every input and output), else 0; inputs and outputs
  without that batch dimension when ``max_batch_size`` > 0, as Triton writes them (a tensor of unknown rank shows
  one dimension of any size); ``dynamic_batching`` with the queue delay, the preferred sizes and the queue size;
  the version policy;
* the repository index lists every model of the repository: one entry per version the server holds (READY,
  LOADING, UNLOADING, or UNAVAILABLE with the reason it failed), or one UNAVAILABLE entry, reason "unloaded",
  for a model with none;
* load and unload take no parameters but Triton's ``unload_dependents`` (a tensorgate model has no dependents).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tensorgate.compat.kserve_v2.grpc_service_pb2 import (
    InferBatchStatistics,
    InferStatistics,
    ModelRepositoryParameter,
    ModelStatistics,
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
from tensorgate.server.models.model_config import ModelConfig as TensorgateModelConfig
from tensorgate.server.models.registry import AvailableVersion, ModelRegistry, VersionState
from tensorgate.server.runtimes.signature import TensorInfo
from tensorgate.server.serving.batching import batchable
from tensorgate.server.serving.statistics import Duration, Snapshot
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


def check_parameters(parameters: Mapping[str, ModelRepositoryParameter], allowed: tuple[str, ...]) -> None:
    """INVALID_ARGUMENT for a load or unload parameter other than ``allowed``, which tensorgate cannot honour."""
    refused = sorted(set(parameters) - set(allowed))
    if refused:
        accepted = ", ".join(allowed) or "none"
        raise InvalidArgumentError(
            f"parameters {quote(', '.join(refused))} are not supported (accepted: {accepted}): a model's "
            "configuration is its model.toml and its files are those of the repository"
        )
