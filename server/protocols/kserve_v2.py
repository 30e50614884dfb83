"""The Open Inference Protocol v2 on tensorgate's gRPC port: ``inference.GRPCInferenceService``.

Clients written for Triton, KServe or MLServer (``tritonclient.grpc`` and the
like) call this server unchanged. Each handler decodes the v2 request into NumPy
(``kserve_v2_codec``), calls the same ``DataPlane`` as tensorgate.v1 (registry,
validation, batching, limits) and encodes the answer back, all through the
same RPC corridor (``rpc``: span, authorization, gRPC status of each error,
metrics, and for ModelStreamInfer the stream window and time limit).

How tensorgate answers where the protocol leaves it open:

* health: ServerLive is true whenever the server answers; ServerReady is true
  once any model version can serve; ModelReady is true when the model (and
  version, number or label) resolves to an AVAILABLE version, false when it is
  unknown or not available. ServerLive and ServerReady need no credentials.
* outputs come back in ``raw_output_contents`` when the inputs came raw (as
  Triton's clients send them), else in typed contents (JSON through Envoy); an
  FP16 output, which has no typed field, makes every output raw.
* ModelStreamInfer answers each request in order; a request that fails gets a
  response with ``error_message`` set (and its id in ``infer_response``) and the
  stream goes on, as Triton does.
* request and tensor parameters are ignored, but for shared-memory inputs, which
  are refused; Triton's shared-memory, trace and logging methods are not in the
  vendored service, so gRPC answers them UNIMPLEMENTED.
* Triton's extensions (ModelConfig, ModelStatistics, RepositoryIndex,
  RepositoryModelLoad/Unload) are answered by ``triton_extensions``, which the
  REST side shares; its docstring says how tensorgate's models map onto them.
"""

from __future__ import annotations

import importlib.metadata

import grpc

from tensorgate.compat.kserve_v2.grpc_service_pb2 import (
    ModelConfigRequest,
    ModelConfigResponse,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ModelStatisticsRequest,
    ModelStatisticsResponse,
    ModelStreamInferResponse,
    RepositoryIndexRequest,
    RepositoryIndexResponse,
    RepositoryModelLoadRequest,
    RepositoryModelLoadResponse,
    RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)
from tensorgate.server.errors import NotFoundError, UnavailableError
from tensorgate.server.models.manager import ModelManager
from tensorgate.server.models.registry import ModelRegistry, VersionState
from tensorgate.server.protocols.kserve_v2_codec import datatype_of, decode_inputs, encode_outputs
from tensorgate.server.protocols.methods import KSERVE_V2
from tensorgate.server.protocols.rpc import Call, Corridor, Failure, Stream
from tensorgate.server.protocols.triton_extensions import PLATFORM, TritonExtensions
from tensorgate.server.runtimes.signature import TensorInfo

SERVER_NAME = "tensorgate"


def _tensor_metadata(info: TensorInfo) -> ModelMetadataResponse.TensorMetadata:
    # v2 has no "any rank": a signature that does not fix the rank shows one dimension of any size.
    shape = (-1,) if info.shape is None else info.shape
    return ModelMetadataResponse.TensorMetadata(name=info.name, datatype=datatype_of(info.dtype), shape=shape)


class KServeV2Servicer:
    """inference.GRPCInferenceService over the registry and data plane that tensorgate.v1 uses."""

    def __init__(self, registry: ModelRegistry, triton: TritonExtensions) -> None:
        self._registry = registry
        self._triton = triton
        self._version = importlib.metadata.version("tensorgate")

    async def server_live(self, request: ServerLiveRequest, call: Call) -> ServerLiveResponse:
        return ServerLiveResponse(live=True)

    async def server_ready(self, request: ServerReadyRequest, call: Call) -> ServerReadyResponse:
        return ServerReadyResponse(ready=self._registry.has_available())

    async def model_ready(self, request: ModelReadyRequest, call: Call) -> ModelReadyResponse:
        try:
            call.resolve(request.name, request.version)
        except (NotFoundError, UnavailableError):
            return ModelReadyResponse(ready=False)
        return ModelReadyResponse(ready=True)

    async def server_metadata(self, request: ServerMetadataRequest, call: Call) -> ServerMetadataResponse:
        return ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    async def model_metadata(self, request: ModelMetadataRequest, call: Call) -> ModelMetadataResponse:
        """The signature of the version that serves, and the model's AVAILABLE versions (the named one only when
        the request names one), newest first: the first is the one that answers requests naming no version."""
        version = call.resolve(request.name, request.version)
        signature = version.servable.signature
        if request.version:
            versions = [str(version.version)]
        else:
            available = (v for v in self._registry.versions(request.name) if v.state is VersionState.AVAILABLE)
            versions = [str(v.version) for v in available]
        return ModelMetadataResponse(
            name=version.model,
            versions=versions,
            platform=PLATFORM,
            inputs=[_tensor_metadata(info) for info in signature.inputs.values()],
            outputs=[_tensor_metadata(info) for info in signature.outputs.values()],
        )

    async def model_infer(self, request: ModelInferRequest, call: Call) -> ModelInferResponse:
        admission = call.admit(request.model_name, request.model_version)
        inputs, raw = decode_inputs(request)
        prediction = await call.predict(admission, inputs, [output.name for output in request.outputs])
        response = ModelInferResponse(model_name=prediction.model, model_version=str(prediction.version), id=request.id)
        encode_outputs(response, prediction.outputs, raw)
        return response

    async def model_stream_infer(self, request: ModelInferRequest, call: Call) -> ModelStreamInferResponse:
        return ModelStreamInferResponse(infer_response=await self.model_infer(request, call))

    async def model_config(self, request: ModelConfigRequest, call: Call) -> ModelConfigResponse:
        return ModelConfigResponse(config=self._triton.config(call, request.name, request.version))

    async def model_statistics(self, request: ModelStatisticsRequest, call: Call) -> ModelStatisticsResponse:
        return self._triton.statistics(call, request.name, request.version)

    async def repository_index(self, request: RepositoryIndexRequest, call: Call) -> RepositoryIndexResponse:
        return self._triton.index(call, request.ready)

    async def repository_model_load(
        self, request: RepositoryModelLoadRequest, call: Call
    ) -> RepositoryModelLoadResponse:
        await self._triton.load(call, request.model_name, request.parameters)
        return RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: RepositoryModelUnloadRequest, call: Call
    ) -> RepositoryModelUnloadResponse:
        await self._triton.unload(call, request.model_name, request.parameters)
        return RepositoryModelUnloadResponse()

    @staticmethod
    def stream_error(request: ModelInferRequest | None, failed: Failure) -> ModelStreamInferResponse:
        """Triton's in-stream error: ``error_message`` set, the request's id in ``infer_response``."""
        response = ModelStreamInferResponse(error_message=failed.message)
        if request is not None:
            response.infer_response.id, response.infer_response.model_name = request.id, request.model_name
        return response


def handlers(corridor: Corridor, manager: ModelManager) -> list[grpc.GenericRpcHandler]:
    """The service's method handlers, through the corridor."""
    triton = TritonExtensions(corridor.registry, corridor.dataplane.statistics, manager)
    servicer = KServeV2Servicer(corridor.registry, triton)
    unary = {
        "ServerLive": (ServerLiveRequest, servicer.server_live),
        "ServerReady": (ServerReadyRequest, servicer.server_ready),
        "ModelReady": (ModelReadyRequest, servicer.model_ready),
        "ServerMetadata": (ServerMetadataRequest, servicer.server_metadata),
        "ModelMetadata": (ModelMetadataRequest, servicer.model_metadata),
        "ModelInfer": (ModelInferRequest, servicer.model_infer),
        "ModelConfig": (ModelConfigRequest, servicer.model_config),
        "ModelStatistics": (ModelStatisticsRequest, servicer.model_statistics),
        "RepositoryIndex": (RepositoryIndexRequest, servicer.repository_index),
        "RepositoryModelLoad": (RepositoryModelLoadRequest, servicer.repository_model_load),
        "RepositoryModelUnload": (RepositoryModelUnloadRequest, servicer.repository_model_unload),
    }
    stream = Stream(ModelInferRequest, servicer.model_stream_infer, servicer.stream_error)
    return [corridor.service(KSERVE_V2, unary, {"ModelStreamInfer": stream})]
