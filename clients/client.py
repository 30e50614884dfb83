"""Typed Python client for tensorgate over the generated gRPC stubs.

Tensors travel as raw little-endian bytes both ways: no per-element work in
Python on either side.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from tensorgate.v1 import codec, inference_service_pb2_grpc, model_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import PredictRequest, StreamPredictRequest, StreamPredictResponse
from tensorgate.v1.model_service_pb2 import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    ListModelsRequest,
    Model,
)

MiB = 1024 * 1024
_tracer = trace.get_tracer("tensorgate.client")

# Every unary method is idempotent (inference included), so gRPC may retry it transparently. A server that
# is stopping refuses new calls with UNAVAILABLE and resets calls it had not yet started with RST_STREAM
# CANCEL, which clients see as CANCELLED although they cancelled nothing: both are safe to retry.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "tensorgate.v1.InferenceService", "method": "Predict"},
                    {"service": "tensorgate.v1.ModelService"},
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ]
    }
)


@dataclass(frozen=True)
class ClientTls:
    """TLS towards the server or Envoy: the CA that signed its certificate, and our own pair for mTLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from the PEM files."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


class StreamItemError(RuntimeError):
    """One request of a stream failed on the server; ``code`` is its gRPC status code."""

    def __init__(self, request_id: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"request {request_id}: {code.name}: {message}")
        self.request_id = request_id
        self.code = code


_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class _Stubs:
    """The stubs of one channel."""

    inference: inference_service_pb2_grpc.InferenceServiceStub
    models: model_service_pb2_grpc.ModelServiceStub


class TensorgateClient:
    """A connection to one tensorgate server (or to Envoy in front of it)."""

    def __init__(
        self,
        target: str,
        timeout_s: float = 30.0,
        max_message_bytes: int = 64 * MiB,
        api_key: str | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        channels: int = 1,
    ) -> None:
        """``api_key`` travels as ``x-api-key``, a JWT ``token`` as ``authorization: Bearer``; ``tls`` = None is
        plaintext (loopback development).

        A channel is one HTTP/2 connection, which stays on one server process. ``channels`` > 1 opens that many
        connections, each in a subchannel pool of its own (otherwise gRPC would share one connection between
        them), and spreads calls over them round-robin, one stream per channel: that is how one client reaches
        every worker of a server started with ``--workers``.
        """
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ]
        if channels > 1:
            options.append(("grpc.use_local_subchannel_pool", 1))
        credentials = None if tls is None else tls.credentials()
        self._channels = [
            grpc.insecure_channel(target, options=options)
            if credentials is None
            else grpc.secure_channel(target, credentials, options=options)
            for _ in range(channels)
        ]
        self._stubs = [
            _Stubs(
                inference_service_pb2_grpc.InferenceServiceStub(channel),
                model_service_pb2_grpc.ModelServiceStub(channel),
            )
            for channel in self._channels
        ]
        self._next_stubs = itertools.cycle(self._stubs)
        self._timeout_s = timeout_s
        self._input_names: dict[tuple[str, str], str] = {}
        self._credentials = ((("x-api-key", api_key),) if api_key else ()) + (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    def __enter__(self) -> TensorgateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            channel.close()

    def predict(self, model: str, x: np.ndarray, version: str = "", output: str | None = None) -> np.ndarray:
        """Run a single-input model on the batch ``x``; returns its output (or the named one)."""
        outputs = self.predict_tensors(
            model, {self._input_name(model, version): x}, version, [output] if output else ()
        )
        return _single(outputs, output)

    def predict_tensors(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        version: str = "",
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Run a model on named inputs; returns its outputs by name."""
        request = PredictRequest(model=model, version=version, output_filter=output_filter)
        for name, array in inputs.items():
            codec.encode_into(np.asarray(array), request.inputs[name])
        with _tracer.start_as_current_span("tensorgate.v1.InferenceService/Predict", kind=SpanKind.CLIENT):
            response = self._pick().inference.Predict(request, timeout=self._timeout_s, metadata=self._metadata())
        return {name: codec.decode(tensor, name) for name, tensor in response.outputs.items()}

    def stream_predict(
        self,
        model: str,
        examples: Iterable[np.ndarray],
        batch_size: int = 256,
        version: str = "",
        output: str | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[np.ndarray]:
        """Stream single examples through StreamPredict; yields one result per example, in order.

        Examples are grouped into requests of ``batch_size``. Requests are
        produced lazily as the server reads them, so an endless iterable is
        fine: memory stays bounded by the server's stream window. A request
        that fails raises StreamItemError.
        """
        input_name = self._input_name(model, version)
        responses = self.stream_predict_batches(
            model, ({input_name: batch} for batch in _batches(examples, batch_size)), version, timeout_s
        )
        for response in responses:
            yield from _single(response, output)

    def stream_predict_batches(
        self,
        model: str,
        batches: Iterable[Mapping[str, np.ndarray]],
        version: str = "",
        timeout_s: float | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Stream batches of named inputs; yields each batch's outputs by name, in order."""

        def requests() -> Iterator[StreamPredictRequest]:
            for index, inputs in enumerate(batches):
                request = StreamPredictRequest(id=str(index), model=model, version=version)
                for name, array in inputs.items():
                    codec.encode_into(np.asarray(array), request.inputs[name])
                yield request

        with _tracer.start_as_current_span("tensorgate.v1.InferenceService/StreamPredict", kind=SpanKind.CLIENT):
            call = self._pick().inference.StreamPredict(requests(), timeout=timeout_s, metadata=self._metadata())
        try:
            for response in call:
                yield _outputs_of(response)
        finally:
            call.cancel()

    def list_models(self) -> list[Model]:
        """Every model of the server with its versions' states."""
        request = ListModelsRequest()
        return list(self._pick().models.ListModels(request, timeout=self._timeout_s, metadata=self._metadata()).models)

    def model_status(self, model: str, version: str = "") -> Model:
        """The state of a model's versions (or of one version)."""
        request = GetModelStatusRequest(model=model, version=version)
        return self._pick().models.GetModelStatus(request, timeout=self._timeout_s, metadata=self._metadata()).model

    def model_metadata(self, model: str, version: str = "") -> GetModelMetadataResponse:
        """The serving signature of a model version."""
        request = GetModelMetadataRequest(model=model, version=version)
        return self._pick().models.GetModelMetadata(request, timeout=self._timeout_s, metadata=self._metadata())

    def _pick(self) -> _Stubs:
        """The next channel's stubs, round-robin (``next`` on a cycle is atomic under the GIL: thread-safe)."""
        return next(self._next_stubs)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """Credentials and the W3C trace context of the current span."""
        return self._credentials + _trace_metadata()

    def _input_name(self, model: str, version: str) -> str:
        key = (model, version)
        if key not in self._input_names:
            inputs = self.model_metadata(model, version).inputs
            if len(inputs) != 1:
                names = [spec.name for spec in inputs]
                raise ValueError(f"model {model!r} takes {len(inputs)} inputs {names}; use predict_tensors")
            self._input_names[key] = inputs[0].name
        return self._input_names[key]


def _trace_metadata() -> tuple[tuple[str, str], ...]:
    """W3C trace context of the current span as gRPC metadata (empty when the application traces nothing)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


def _batches(examples: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    iterator = iter(examples)
    while chunk := list(itertools.islice(iterator, batch_size)):
        yield np.stack(chunk)


def _outputs_of(response: StreamPredictResponse) -> dict[str, np.ndarray]:
    if response.HasField("error"):
        raise StreamItemError(
            response.id, _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN), response.error.message
        )
    return {name: codec.decode(tensor, name) for name, tensor in response.outputs.items()}


def _single(outputs: dict[str, np.ndarray], name: str | None) -> np.ndarray:
    if name is not None:
        return outputs[name]
    if len(outputs) != 1:
        raise ValueError(f"the model returns {sorted(outputs)}; name one with output=")
    return next(iter(outputs.values()))
