"""Every RPC the server's protocols answer: its gRPC path (its spans' name), its metrics' name, and who may call it.

One table, read by the RPC corridor (which authorizes each call for its method's scope) and by the Envoy
renderer (which lets the public ones through without credentials), so the two can never disagree. It imports no
protobuf module, so the gateway reads it without loading the protocols (``tests/server/protocols`` checks it
against the services' descriptors).
"""

from __future__ import annotations

from dataclasses import dataclass

from tensorgate.server.security.principal import ADMIN, PREDICT

V1_INFERENCE = "tensorgate.v1.InferenceService"
V1_MODELS = "tensorgate.v1.ModelService"
KSERVE_V2 = "inference.GRPCInferenceService"
TFS_PREDICTION = "tensorflow.serving.PredictionService"
TFS_MODELS = "tensorflow.serving.ModelService"


@dataclass(frozen=True)
class Method:
    """One RPC: ``/{service}/{rpc}`` on the wire and in spans, ``name`` in metrics, ``scope`` None when public."""

    service: str
    rpc: str
    name: str
    scope: str | None
    streams: bool = False  # a bidirectional stream (bounded by the stream duration, not the request timeout)
    rest_paths: tuple[str, ...] = ()  # the REST paths Envoy maps onto a public method, which stay public too

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.rpc}"


METHODS: tuple[Method, ...] = (
    Method(V1_INFERENCE, "Predict", "predict", PREDICT),
    Method(V1_INFERENCE, "StreamPredict", "stream_predict", PREDICT, streams=True),
    Method(V1_MODELS, "ListModels", "list_models", PREDICT),
    Method(V1_MODELS, "GetModelStatus", "get_model_status", PREDICT),
    Method(V1_MODELS, "GetModelMetadata", "get_model_metadata", PREDICT),
    Method(V1_MODELS, "LoadModel", "load_model", ADMIN),
    Method(V1_MODELS, "UnloadModel", "unload_model", ADMIN),
    Method(V1_MODELS, "ReloadModel", "reload_model", ADMIN),
    Method(V1_MODELS, "SetModelLabels", "set_model_labels", ADMIN),
    Method(KSERVE_V2, "ServerLive", "kserve_server_live", None, rest_paths=("/v2/health/live",)),
    Method(KSERVE_V2, "ServerReady", "kserve_server_ready", None, rest_paths=("/v2/health/ready",)),
    Method(KSERVE_V2, "ModelReady", "kserve_model_ready", PREDICT),
    Method(KSERVE_V2, "ServerMetadata", "kserve_server_metadata", PREDICT),
    Method(KSERVE_V2, "ModelMetadata", "kserve_model_metadata", PREDICT),
    Method(KSERVE_V2, "ModelInfer", "kserve_model_infer", PREDICT),
    Method(KSERVE_V2, "ModelStreamInfer", "kserve_model_stream_infer", PREDICT, streams=True),
    Method(KSERVE_V2, "ModelConfig", "kserve_model_config", PREDICT),
    Method(KSERVE_V2, "ModelStatistics", "kserve_model_statistics", PREDICT),
    Method(KSERVE_V2, "RepositoryIndex", "kserve_repository_index", PREDICT),
    Method(KSERVE_V2, "RepositoryModelLoad", "kserve_repository_model_load", ADMIN),
    Method(KSERVE_V2, "RepositoryModelUnload", "kserve_repository_model_unload", ADMIN),
    Method(TFS_PREDICTION, "Predict", "tfserving_predict", PREDICT),
    Method(TFS_PREDICTION, "GetModelMetadata", "tfserving_get_model_metadata", PREDICT),
    Method(TFS_MODELS, "GetModelStatus", "tfserving_get_model_status", PREDICT),
)
_BY_PATH = {method.path: method for method in METHODS}


def method(service: str, rpc: str) -> Method:
    """The table's entry for ``/{service}/{rpc}`` (KeyError for a method that is not in it)."""
    return _BY_PATH[f"/{service}/{rpc}"]


def public_paths() -> tuple[str, ...]:
    """gRPC and REST paths of the methods that need no credentials."""
    return tuple(path for m in METHODS if m.scope is None for path in (m.path, *m.rest_paths))
