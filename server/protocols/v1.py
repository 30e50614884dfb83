"""tensorgate.v1: InferenceService (Predict, StreamPredict) and ModelService (status, metadata, admin).

Each handler maps its messages to the data plane's NumPy and back (``tensorgate.v1.codec``), or asks the
registry and manager; the corridor (``rpc``) does everything else. Outputs go back as raw bytes when every
input came raw, else in the typed fields (what JSON callers read through Envoy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc
import numpy as np

from tensorgate.server.errors import quote
from tensorgate.server.models.manager import ModelManager
from tensorgate.server.models.registry import ModelVersion, VersionState
from tensorgate.server.protocols.methods import V1_INFERENCE, V1_MODELS
from tensorgate.server.protocols.rpc import Call, Corridor, Failure, Stream
from tensorgate.server.runtimes.signature import TensorInfo
from tensorgate.server.serving.dataplane import Prediction
from tensorgate.v1 import codec, model_service_pb2, tensor_pb2
from tensorgate.v1.inference_service_pb2 import (
    PredictRequest,
    PredictResponse,
    StreamPredictRequest,
    StreamPredictResponse,
)
from tensorgate.v1.model_service_pb2 import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    GetModelStatusResponse,
    ListModelsRequest,
    ListModelsResponse,
    LoadModelRequest,
    LoadModelResponse,
    ModelVersionState,
    ReloadModelRequest,
    ReloadModelResponse,
    SetModelLabelsRequest,
    SetModelLabelsResponse,
    UnloadModelRequest,
    UnloadModelResponse,
)

_STATES = {
    VersionState.LOADING: ModelVersionState.MODEL_VERSION_STATE_LOADING,
    VersionState.AVAILABLE: ModelVersionState.MODEL_VERSION_STATE_AVAILABLE,
    VersionState.FAILED: ModelVersionState.MODEL_VERSION_STATE_FAILED,
    VersionState.UNLOADING: ModelVersionState.MODEL_VERSION_STATE_UNLOADING,
}


def _decode_inputs(tensors: Mapping[str, tensor_pb2.Tensor]) -> tuple[dict[str, np.ndarray], bool]:
    """Decoded inputs, and whether every one arrived as raw bytes (then outputs go back raw too)."""
    inputs = {name: codec.decode(tensor, f"input {quote(name)}") for name, tensor in tensors.items()}
    raw = bool(tensors) and all(tensor.raw_contents for tensor in tensors.values())
    return inputs, raw


def _fill_outputs(target: Mapping[str, tensor_pb2.Tensor], prediction: Prediction, raw: bool) -> None:
    for name, array in prediction.outputs.items():
        codec.encode_into(array, target[name], raw)


class InferenceServicer:
    """tensorgate.v1.InferenceService."""

    async def predict(self, request: PredictRequest, call: Call) -> PredictResponse:
        admission = call.admit(request.model, request.version)
        inputs, raw = _decode_inputs(request.inputs)
        prediction = await call.predict(admission, inputs, request.output_filter)
        response = PredictResponse(model=prediction.model, version=str(prediction.version))
        _fill_outputs(response.outputs, prediction, raw)
        return response

    async def stream_predict(self, request: StreamPredictRequest, call: Call) -> StreamPredictResponse:
        admission = call.admit(request.model, request.version)
        inputs, raw = _decode_inputs(request.inputs)
        prediction = await call.predict(admission, inputs, request.output_filter)
        response = StreamPredictResponse(id=request.id, model=request.model, version=str(prediction.version))
        _fill_outputs(response.outputs, prediction, raw)
        return response

    @staticmethod
    def stream_error(request: StreamPredictRequest | None, failed: Failure) -> StreamPredictResponse:
        """A failed request's answer in the stream, with its id, so that the stream goes on."""
        if request is None:
            return StreamPredictResponse(error=failed.status)
        return StreamPredictResponse(id=request.id, model=request.model, error=failed.status)

    @staticmethod
    def inherit_model() -> Callable[[StreamPredictRequest], None]:
        """A caller may name the model (and version) in the first message of a stream only."""
        previous = StreamPredictRequest()

        def fill(request: StreamPredictRequest) -> None:
            nonlocal previous
            if not request.model:
                request.model, request.version = previous.model, request.version or previous.version
            previous = request

        return fill


def _spec(info: TensorInfo) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(
        name=info.name, dtype=info.dtype, shape=info.shape or (), unknown_rank=info.shape is None
    )


def _version_status(version: ModelVersion) -> model_service_pb2.ModelVersionStatus:
    return model_service_pb2.ModelVersionStatus(
        version=str(version.version),
        state=_STATES[version.state],
        error=version.error,
        device=version.servable.device if version.servable else "",
        runtime=version.servable.runtime if version.servable else "",
    )


class ModelServicer:
    """tensorgate.v1.ModelService: status and metadata from the registry, admin calls through the manager."""

    def __init__(self, corridor: Corridor, manager: ModelManager) -> None:
        self._registry = corridor.registry
        self._manager = manager

    def _model(self, name: str) -> model_service_pb2.Model:
        versions = [_version_status(v) for v in self._registry.versions(name)]
        return model_service_pb2.Model(name=name, versions=versions, labels=self._registry.labels(name))

    async def list_models(self, request: ListModelsRequest, call: Call) -> ListModelsResponse:
        names = [name for name in self._registry.model_names() if call.may_use(name)]
        return ListModelsResponse(models=[self._model(name) for name in names])

    async def load_model(self, request: LoadModelRequest, call: Call) -> LoadModelResponse:
        await self._manager.load(call.select(request.model), request.version)
        return LoadModelResponse(model=self._model(request.model))

    async def unload_model(self, request: UnloadModelRequest, call: Call) -> UnloadModelResponse:
        await self._manager.unload(call.select(request.model), request.version)
        return UnloadModelResponse(model=self._model(request.model))

    async def reload_model(self, request: ReloadModelRequest, call: Call) -> ReloadModelResponse:
        await self._manager.reload(call.select(request.model), request.version)
        return ReloadModelResponse(model=self._model(request.model))

    async def set_model_labels(self, request: SetModelLabelsRequest, call: Call) -> SetModelLabelsResponse:
        await self._manager.set_labels(call.select(request.model), dict(request.labels))
        return SetModelLabelsResponse(model=self._model(request.model))

    async def get_model_status(self, request: GetModelStatusRequest, call: Call) -> GetModelStatusResponse:
        model = call.select(request.model)
        versions = [self._registry.find(model, request.version)] if request.version else self._registry.versions(model)
        statuses = [_version_status(v) for v in versions]
        return GetModelStatusResponse(
            model=model_service_pb2.Model(name=model, versions=statuses, labels=self._registry.labels(model))
        )

    async def get_model_metadata(self, request: GetModelMetadataRequest, call: Call) -> GetModelMetadataResponse:
        version = call.resolve(request.model, request.version)
        signature = version.servable.signature
        return GetModelMetadataResponse(
            model=version.model,
            version=str(version.version),
            signature_name=signature.name,
            inputs=[_spec(info) for info in signature.inputs.values()],
            outputs=[_spec(info) for info in signature.outputs.values()],
        )


def handlers(corridor: Corridor, manager: ModelManager) -> list[grpc.GenericRpcHandler]:
    """Both services' method handlers, through the corridor."""
    inference, models = InferenceServicer(), ModelServicer(corridor, manager)
    stream = Stream(
        StreamPredictRequest, inference.stream_predict, inference.stream_error, prepare=inference.inherit_model
    )
    return [
        corridor.service(
            V1_INFERENCE,
            {"Predict": (PredictRequest, inference.predict)},
            {"StreamPredict": stream},
        ),
        corridor.service(
            V1_MODELS,
            {
                "ListModels": (ListModelsRequest, models.list_models),
                "GetModelStatus": (GetModelStatusRequest, models.get_model_status),
                "GetModelMetadata": (GetModelMetadataRequest, models.get_model_metadata),
                "LoadModel": (LoadModelRequest, models.load_model),
                "UnloadModel": (UnloadModelRequest, models.unload_model),
                "ReloadModel": (ReloadModelRequest, models.reload_model),
                "SetModelLabels": (SetModelLabelsRequest, models.set_model_labels),
            },
        ),
    ]
