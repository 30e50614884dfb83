"""The Open Inference Protocol v2 on tensorgate's gRPC port: ``inference.GRPCInferenceService``.

Clients written for Triton, KServe or MLServer (``tritonclient.grpc`` and the
like) call this server unchanged. Each handler decodes the v2 request into NumPy
(``kserve_v2_codec``), calls the same ``DataPlane`` as tensorgate.v1 (registry,
validation, batching, limits) and encodes the answer back, inside the same
``rpc_method`` wrapper (span, authorization, gRPC status of each error,
metrics) and, for ModelStreamInfer, the same ``serve_stream`` window and time
limit as StreamPredict.

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
  are refused; Triton's other methods (ModelConfig, statistics, repository,
  shared memory, trace, logging) are not in the vendored service, so gRPC answers
  them UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator

import grpc

from tensorgate.compat.kserve_v2 import grpc_service_pb2
from tensorgate.compat.kserve_v2.grpc_service_pb2 import (
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ModelStreamInferResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)
from tensorgate.server.errors import InvalidArgumentError, NotFoundError, ServingError, UnavailableError
from tensorgate.server.models.registry import ModelRegistry, VersionState
from tensorgate.server.protocols.kserve_v2_codec import datatype_of, decode_inputs, encode_outputs
from tensorgate.server.protocols.v1 import (
    CallLimits,
    current_caller,
    label_version,
    parse_request,
    record_request,
    rejection_reason,
    rpc_method,
    select_model,
    serve_stream,
    unary_handlers,
)
from tensorgate.server.runtimes.signature import TensorInfo
from tensorgate.server.security.auth import Authenticator
from tensorgate.server.serving.dataplane import DataPlane
from tensorgate.v1.tensors import TensorCodecError

log = logging.getLogger(__name__)

SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "tensorgate"
PLATFORM = "tensorflow_savedmodel"  # Triton's name for the platform of a SavedModel
STREAM_METHOD = "kserve_model_stream_infer"


def _tensor_metadata(info: TensorInfo) -> ModelMetadataResponse.TensorMetadata:
    # v2 has no "any rank": a signature that does not fix the rank shows one dimension of any size.
    shape = (-1,) if info.shape is None else info.shape
    return ModelMetadataResponse.TensorMetadata(name=info.name, datatype=datatype_of(info.dtype), shape=shape)


class KServeV2Servicer:
    """inference.GRPCInferenceService over the registry and data plane that tensorgate.v1 uses."""

    def __init__(
        self,
        dataplane: DataPlane,
        registry: ModelRegistry,
        limits: CallLimits,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._dataplane = dataplane
        self._registry = registry
        self._limits = limits
        self.authenticator = authenticator
        self._version = importlib.metadata.version("tensorgate")

    @rpc_method("kserve_server_live", scope=None)
    async def server_live(self, data: bytes, context: grpc.aio.ServicerContext) -> ServerLiveResponse:
        parse_request(ServerLiveRequest, data)
        return ServerLiveResponse(live=True)

    @rpc_method("kserve_server_ready", scope=None)
    async def server_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> ServerReadyResponse:
        parse_request(ServerReadyRequest, data)
        return ServerReadyResponse(ready=self._registry.has_available())

    @rpc_method("kserve_model_ready")
    async def model_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> ModelReadyResponse:
        request = parse_request(ModelReadyRequest, data)
        select_model(self._registry, request.name)
        try:
            self._registry.resolve(request.name, request.version)
        except (NotFoundError, UnavailableError):
            return ModelReadyResponse(ready=False)
        return ModelReadyResponse(ready=True)

    @rpc_method("kserve_server_metadata")
    async def server_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> ServerMetadataResponse:
        parse_request(ServerMetadataRequest, data)
        return ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    @rpc_method("kserve_model_metadata")
    async def model_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> ModelMetadataResponse:
        """The signature of the version that serves, and the model's AVAILABLE versions (the named one only when
        the request names one), newest first: the first is the one that answers requests naming no version."""
        request = parse_request(ModelMetadataRequest, data)
        select_model(self._registry, request.name)
        version = self._registry.resolve(request.name, request.version)
        assert version.servable is not None, "the registry resolves only AVAILABLE versions, which hold a servable"
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

    @rpc_method("kserve_model_infer")
    async def model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> ModelInferResponse:
        return await self._infer(parse_request(ModelInferRequest, data), context)

    async def _infer(self, request: ModelInferRequest, context: grpc.aio.ServicerContext) -> ModelInferResponse:
        select_model(self._registry, request.model_name)
        admission = self._dataplane.admit(request.model_name, request.model_version, current_caller())
        try:
            inputs, raw = decode_inputs(request)
        except TensorCodecError as exc:
            raise InvalidArgumentError(str(exc)) from None
        prediction = await self._dataplane.predict(
            admission,
            inputs,
            [output.name for output in request.outputs],
            self._limits.time_left(context),
        )
        label_version(prediction.version)
        response = ModelInferResponse(model_name=prediction.model, model_version=str(prediction.version), id=request.id)
        encode_outputs(response, prediction.outputs, raw)
        return response

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ModelStreamInferResponse]:
        """Triton's bidirectional stream: one response per request, in order, errors in ``error_message``."""

        def start(data: bytes, refusal: ServingError | None) -> asyncio.Future[ModelStreamInferResponse]:
            return asyncio.create_task(self._stream_answer(data, context, refusal))

        stream = serve_stream(
            self,
            requests,
            context,
            start,
            method=STREAM_METHOD,
            rpc="ModelStreamInfer",
            limits=self._limits,
        )
        async with contextlib.aclosing(stream):
            async for response in stream:
                yield response

    async def _stream_answer(
        self, data: bytes, context: grpc.aio.ServicerContext, refusal: ServingError | None
    ) -> ModelStreamInferResponse:
        started, code, rejection = time.perf_counter(), grpc.StatusCode.OK, ""
        response = ModelStreamInferResponse()
        try:
            request = parse_request(ModelInferRequest, data)
            response.infer_response.id, response.infer_response.model_name = request.id, request.model_name
            if refusal is not None:
                raise refusal
            response.infer_response.CopyFrom(await self._infer(request, context))
        except ServingError as exc:
            code, rejection = exc.code, rejection_reason(exc)
            response.error_message = str(exc)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error in a ModelStreamInfer request")
            response.error_message = "internal error; the server log has the details"
        record_request(STREAM_METHOD, code, started, rejection)
        return response


def generic_handler(servicer: KServeV2Servicer) -> grpc.GenericRpcHandler:
    """The service's method handlers; requests stay bytes until the servicer parses them."""
    methods = unary_handlers(
        {
            "ServerLive": (servicer.server_live, ServerLiveResponse),
            "ServerReady": (servicer.server_ready, ServerReadyResponse),
            "ModelReady": (servicer.model_ready, ModelReadyResponse),
            "ServerMetadata": (servicer.server_metadata, ServerMetadataResponse),
            "ModelMetadata": (servicer.model_metadata, ModelMetadataResponse),
            "ModelInfer": (servicer.model_infer, ModelInferResponse),
        }
    )
    methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.model_stream_infer, response_serializer=ModelStreamInferResponse.SerializeToString
    )
    return grpc.method_handlers_generic_handler(SERVICE, methods)
