"""The TensorFlow Serving API on tensorgate's gRPC port: ``tensorflow.serving.PredictionService`` (Predict,
GetModelMetadata) and ``tensorflow.serving.ModelService`` (GetModelStatus).

Code written against TF Serving (``tensorflow_serving.apis`` stubs, inputs made
with ``tf.make_tensor_proto``) calls this server unchanged. Each handler decodes
TensorProtos into NumPy (``tfserving_codec``), calls the same ``DataPlane`` as
tensorgate.v1 and encodes the answer back, through the same RPC corridor
(``rpc``: span, authorization, gRPC status of each error, metrics).

How tensorgate answers where it differs from a TF Serving model server:

* a model serves one signature (the server's ``signature_name``, by default
  ``serving_default``): a request naming it, or none, gets it; another name is
  INVALID_ARGUMENT. ``ModelSpec.version`` and ``version_label`` select a version
  as tensorgate's version numbers and labels do.
* GetModelMetadata returns that one signature as ``signature_def`` (method
  ``tensorflow/serving/predict``; each TensorInfo's ``name`` is the signature
  key, since tensorgate does not keep the graph's tensor names).
* GetModelStatus reports LOADING, AVAILABLE and UNLOADING as TF Serving does,
  and a version that failed to load as END with the reason in ``status``.
* Classify, Regress, MultiInference and the ModelService admin methods are not
  in the vendored services, so gRPC answers them UNIMPLEMENTED.
"""

from __future__ import annotations

import grpc
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2

from tensorgate.compat.tfserving.get_model_metadata_pb2 import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    SignatureDefMap,
)
from tensorgate.compat.tfserving.get_model_status_pb2 import (
    GetModelStatusRequest,
    GetModelStatusResponse,
    ModelVersionStatus,
)
from tensorgate.compat.tfserving.model_pb2 import ModelSpec
from tensorgate.compat.tfserving.predict_pb2 import PredictRequest, PredictResponse
from tensorgate.server.errors import InvalidArgumentError, NotFoundError, quote
from tensorgate.server.models.registry import AvailableVersion, ModelRegistry, ModelVersion, VersionState
from tensorgate.server.protocols.methods import TFS_MODELS, TFS_PREDICTION
from tensorgate.server.protocols.rpc import Call, Corridor
from tensorgate.server.protocols.tfserving_codec import decode, encode_into, tf_dtype_of
from tensorgate.server.runtimes.signature import Signature, TensorInfo

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
SIGNATURE_DEF_FIELD = "signature_def"

_STATES = {
    VersionState.LOADING: ModelVersionStatus.LOADING,
    VersionState.AVAILABLE: ModelVersionStatus.AVAILABLE,
    VersionState.UNLOADING: ModelVersionStatus.UNLOADING,
    VersionState.FAILED: ModelVersionStatus.END,
}


def _version(spec: ModelSpec) -> str:
    """The version a ModelSpec names, as tensorgate writes it: a number, a label, or "" for the newest."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return str(spec.version.value)
    return spec.version_label if choice == "version_label" else ""


def _signature(version: AvailableVersion, requested: str) -> Signature:
    signature = version.servable.signature
    if requested and requested != signature.name:
        raise InvalidArgumentError(
            f"model {quote(version.model)} has no signature {quote(requested)}; it serves {signature.name!r}"
        )
    return signature


def _tensor_info(info: TensorInfo) -> meta_graph_pb2.TensorInfo:
    shape = tensor_shape_pb2.TensorShapeProto(unknown_rank=info.shape is None)
    shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in info.shape or ())
    return meta_graph_pb2.TensorInfo(name=info.name, dtype=tf_dtype_of(info.dtype), tensor_shape=shape)


def _signature_def(signature: Signature) -> meta_graph_pb2.SignatureDef:
    definition = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD_NAME)
    for name, info in signature.inputs.items():
        definition.inputs[name].CopyFrom(_tensor_info(info))
    for name, info in signature.outputs.items():
        definition.outputs[name].CopyFrom(_tensor_info(info))
    return definition


def _version_status(version: ModelVersion) -> ModelVersionStatus:
    status = ModelVersionStatus(version=version.version, state=_STATES[version.state])
    status.status.SetInParent()  # error_code OK, as TF Serving sends it
    if version.state is VersionState.FAILED:
        status.status.error_code = error_codes_pb2.UNKNOWN
        status.status.error_message = version.error
    return status


class TFServingServicer:
    """tensorflow.serving.PredictionService and ModelService over the registry and data plane of tensorgate.v1."""

    def __init__(self, registry: ModelRegistry, max_tensor_elements: int) -> None:
        self._registry = registry
        self._max_tensor_elements = max_tensor_elements

    async def predict(self, request: PredictRequest, call: Call) -> PredictResponse:
        spec = request.model_spec
        admission = call.admit(spec.name, _version(spec))
        signature = _signature(admission.version, spec.signature_name)
        inputs = {
            name: decode(tensor, f"input {quote(name)}", self._max_tensor_elements)
            for name, tensor in request.inputs.items()
        }
        prediction = await call.predict(admission, inputs, request.output_filter)
        response = PredictResponse()
        response.model_spec.name = prediction.model
        response.model_spec.version.value = prediction.version
        response.model_spec.signature_name = signature.name
        for name, array in prediction.outputs.items():
            encode_into(array, response.outputs[name])
        return response

    async def get_model_metadata(self, request: GetModelMetadataRequest, call: Call) -> GetModelMetadataResponse:
        spec = request.model_spec
        call.select(spec.name)
        if not request.metadata_field:
            raise InvalidArgumentError(f"metadata_field is required; the one supported is {SIGNATURE_DEF_FIELD!r}")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise InvalidArgumentError(
                    f"metadata field {quote(field)} is not supported; use {SIGNATURE_DEF_FIELD!r}"
                )
        version = call.resolve(spec.name, _version(spec))
        signature = _signature(version, "")
        signatures = SignatureDefMap()
        signatures.signature_def[signature.name].CopyFrom(_signature_def(signature))
        response = GetModelMetadataResponse()
        response.model_spec.name = version.model
        response.model_spec.version.value = version.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
        return response

    async def get_model_status(self, request: GetModelStatusRequest, call: Call) -> GetModelStatusResponse:
        model = call.select(request.model_spec.name)
        version = _version(request.model_spec)
        versions = [self._registry.find(model, version)] if version else self._registry.versions(model)
        if not versions:
            raise NotFoundError(f"model {quote(model)} has no version")
        return GetModelStatusResponse(model_version_status=[_version_status(v) for v in versions])


def handlers(corridor: Corridor, max_tensor_elements: int) -> list[grpc.GenericRpcHandler]:
    """Both services' method handlers, through the corridor."""
    servicer = TFServingServicer(corridor.registry, max_tensor_elements)
    prediction = {
        "Predict": (PredictRequest, servicer.predict),
        "GetModelMetadata": (GetModelMetadataRequest, servicer.get_model_metadata),
    }
    models = {"GetModelStatus": (GetModelStatusRequest, servicer.get_model_status)}
    return [corridor.service(TFS_PREDICTION, prediction), corridor.service(TFS_MODELS, models)]
