"""TensorFlow Serving's REST API on the server's TF Serving REST port (TF Serving's 8501 by default).

The requests of TF Serving's REST API document work unchanged: model status
(``GET /v1/models/{m}[/versions/{n}|/labels/{l}]``), metadata (``.../metadata``: the signature_def map as TF Serving
prints it) and ``POST .../{m}[...]:predict`` in the row format (``{"instances": [...]}``, answered with
``{"predictions": [...]}``) or the columnar one (``{"inputs": ...}``, answered with ``{"outputs": ...}``), with named
inputs or the only one, ``{"b64": ...}`` for bytes, and ``signature_name``. Values take the dtype of the
signature's input, with the codec core's checks (``json_tensors``). String outputs whose name ends in ``_bytes``,
and any that are not UTF-8, come back as ``{"b64": ...}``. Errors are ``{"error": "..."}`` with the status of their
gRPC code (``http.HTTP_STATUS``), as TF Serving maps its own.

Not supported: ``:classify`` and ``:regress`` (501: tensorgate serves predict signatures only) and a signature
other than the server's one (400), as on the gRPC side.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from aiohttp import web

from tensorgate.server.errors import InvalidArgumentError, NotFoundError, quote
from tensorgate.server.models.registry import ModelRegistry, ModelVersion, VersionState
from tensorgate.server.protocols.rest.http import Route, UnimplementedError, json_response, parse_json
from tensorgate.server.protocols.rest.json_tensors import numbers_from_json, strings_to_json
from tensorgate.server.protocols.rpc import Call
from tensorgate.server.runtimes.signature import Signature, TensorInfo
from tensorgate.v1 import tensors
from tensorgate.v1.tensors import TensorCodecError

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
# /v1/models/{model}, with an optional /versions/{number} or /labels/{label}.
MODEL = "/v1/models/{model:[^/:]+}{selector:(/versions/[0-9]+|/labels/[^/:]+)?}"
_STATES = {
    VersionState.LOADING: "LOADING",
    VersionState.AVAILABLE: "AVAILABLE",
    VersionState.UNLOADING: "UNLOADING",
    VersionState.FAILED: "END",
}


def _version(request: web.Request) -> str:
    """The version the path names, as tensorgate writes it: a number, a label, or "" for the newest."""
    selector: str = request.match_info["selector"]
    return selector.rpartition("/")[2]


def _signature(signature: Signature, model: str, requested: Any) -> Signature:
    if requested is not None and not isinstance(requested, str):
        raise InvalidArgumentError("'signature_name' must be a string")
    if requested and requested != signature.name:
        raise InvalidArgumentError(
            f"model {quote(model)} has no signature {quote(requested)}; it serves {signature.name!r}"
        )
    return signature


def _tensor_info(info: TensorInfo) -> dict[str, Any]:
    dims = [{"size": str(size), "name": ""} for size in info.shape or ()]
    return {
        "dtype": tensors.BY_V1[info.dtype].tf_name,
        "tensor_shape": {"dim": dims, "unknown_rank": info.shape is None},
        "name": info.name,
    }


def _version_status(version: ModelVersion) -> dict[str, Any]:
    failed = version.state is VersionState.FAILED
    status = {"error_code": "UNKNOWN" if failed else "OK", "error_message": version.error if failed else ""}
    return {"version": str(version.version), "state": _STATES[version.state], "status": status}


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _decode_value(value: Any, info: TensorInfo, name: str) -> np.ndarray:
    """One input's JSON value (for every row, or one row's) as an array of the signature's dtype."""
    dtype = tensors.BY_V1[info.dtype]
    if dtype.is_string:
        return _strings(value, name)
    return numbers_from_json(value, dtype, name)


def _strings(value: Any, name: str) -> np.ndarray:
    """Strings or ``{"b64": ...}`` objects (a value or nested lists of one shape) as an object array of bytes."""
    try:
        array = np.array(value, dtype=object)
    except ValueError:
        raise TensorCodecError(f"{name}: the values are not a rectangular array of strings") from None
    flat = [_bytes(element, name) for element in array.ravel()]
    return tensors.object_array(flat, array.shape)


def _bytes(element: Any, name: str) -> bytes:
    if isinstance(element, str):
        return element.encode()
    if _is_b64(element) and isinstance(element["b64"], str):
        try:
            return base64.b64decode(element["b64"], validate=True)
        except binascii.Error:
            raise TensorCodecError(f"{name}: a 'b64' value is not valid base64") from None
    raise TensorCodecError(f"{name}: DT_STRING takes strings or {{'b64': ...}} objects, got {type(element).__name__}")


def _named(value: Any) -> bool:
    """Whether a row or the columnar ``inputs`` names its inputs (an object that is not a b64 value)."""
    return isinstance(value, dict) and not _is_b64(value)


def _row_inputs(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    """The row format: one entry per example, each the only input's value or an object of named values."""
    if not isinstance(instances, list) or not instances:
        raise InvalidArgumentError("'instances' must be a non-empty list")
    if not _named(instances[0]):
        info = _only_input(signature)
        return {info.name: _decode_value(instances, info, f"input {quote(info.name)}")}
    names = list(instances[0])
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if not _named(instance) or set(instance) != set(names):
            raise InvalidArgumentError(f"instances[{index}] must name the same inputs as instances[0]: {names}")
        for name in names:
            columns[name].append(instance[name])
    return {
        name: _decode_value(values, _input(signature, name), f"input {quote(name)}") for name, values in columns.items()
    }


def _columnar_inputs(inputs: Any, signature: Signature) -> dict[str, np.ndarray]:
    """The columnar format: the only input's value, or an object of each input's value."""
    if not _named(inputs):
        info = _only_input(signature)
        return {info.name: _decode_value(inputs, info, f"input {quote(info.name)}")}
    return {
        name: _decode_value(value, _input(signature, name), f"input {quote(name)}") for name, value in inputs.items()
    }


def _only_input(signature: Signature) -> TensorInfo:
    if len(signature.inputs) != 1:
        raise InvalidArgumentError(
            f"the signature has {len(signature.inputs)} inputs {sorted(signature.inputs)}: name each input"
        )
    return next(iter(signature.inputs.values()))


def _input(signature: Signature, name: str) -> TensorInfo:
    info = signature.inputs.get(name)
    if info is None:
        raise InvalidArgumentError(
            f"input {quote(name)} is not in the signature; its inputs: {sorted(signature.inputs)}"
        )
    return info


def _output_json(array: np.ndarray, name: str) -> Any:
    """An output as JSON: numbers as they are, strings as text, or ``{"b64": ...}`` for a name ending in
    ``_bytes`` (TF Serving's rule) and for bytes that are not UTF-8."""
    if not tensors.dtype_of_array(array).is_string:
        return np.ascontiguousarray(array)
    if name.endswith("_bytes"):
        return _b64_tree(array)
    return strings_to_json(array, lambda value: {"b64": base64.b64encode(value).decode()})


def _b64_tree(array: np.ndarray) -> Any:
    def encode(value: Any) -> Any:
        if isinstance(value, list):
            return [encode(element) for element in value]
        return {"b64": base64.b64encode(tensors.as_bytes([value])[0]).decode()}

    return encode(array.tolist())


class TFServingRest:
    """TF Serving's REST endpoints over the registry and data plane that every protocol uses."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def routes(self) -> list[Route]:
        return [
            Route("GET", MODEL, "tfserving_rest_get_model_status", "predict", self.model_status),
            Route("GET", MODEL + "/metadata", "tfserving_rest_get_model_metadata", "predict", self.model_metadata),
            Route("POST", MODEL + ":predict", "tfserving_rest_predict", "predict", self.predict),
            Route(
                "POST", MODEL + ":{verb:classify|regress}", "tfserving_rest_unsupported", "predict", self.unsupported
            ),
        ]

    async def model_status(self, request: web.Request, call: Call) -> web.Response:
        model = call.select(request.match_info["model"])
        version = _version(request)
        versions = [self._registry.find(model, version)] if version else self._registry.versions(model)
        if not versions:
            raise NotFoundError(f"model {quote(model)} has no version")
        return json_response({"model_version_status": [_version_status(v) for v in versions]})

    async def model_metadata(self, request: web.Request, call: Call) -> web.Response:
        version = call.resolve(request.match_info["model"], _version(request))
        signature = version.servable.signature
        definition = {
            "inputs": {name: _tensor_info(info) for name, info in signature.inputs.items()},
            "outputs": {name: _tensor_info(info) for name, info in signature.outputs.items()},
            "method_name": PREDICT_METHOD_NAME,
        }
        return json_response(
            {
                "model_spec": {"name": version.model, "signature_name": "", "version": str(version.version)},
                "metadata": {"signature_def": {"signature_def": {signature.name: definition}}},
            }
        )

    async def predict(self, request: web.Request, call: Call) -> web.Response:
        admission = call.admit(request.match_info["model"], _version(request))
        body = parse_json(await request.read(), "predict request")
        signature = _signature(
            admission.version.servable.signature, admission.version.model, body.get("signature_name")
        )
        if ("instances" in body) == ("inputs" in body):
            raise InvalidArgumentError(
                "the request needs exactly one of 'instances' (row format) and 'inputs' (columnar)"
            )
        rows = "instances" in body
        inputs = _row_inputs(body["instances"], signature) if rows else _columnar_inputs(body["inputs"], signature)
        prediction = await call.predict(admission, inputs)
        outputs = {name: _output_json(array, name) for name, array in prediction.outputs.items()}
        if not rows:
            return json_response({"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs})
        if len(outputs) == 1:
            return json_response({"predictions": next(iter(outputs.values()))})
        batch = {len(value) if isinstance(value, (list, np.ndarray)) else -1 for value in outputs.values()}
        if len(batch) != 1 or -1 in batch:
            raise InvalidArgumentError(
                "the outputs do not share a batch size, which the row format needs: use the columnar format ('inputs')"
            )
        rows_out = [{name: value[index] for name, value in outputs.items()} for index in range(batch.pop())]
        return json_response({"predictions": rows_out})

    async def unsupported(self, request: web.Request, call: Call) -> web.Response:
        call.select(request.match_info["model"])
        verb = request.match_info["verb"]
        raise UnimplementedError(f"{verb} is not supported: tensorgate serves predict signatures; use :predict")
