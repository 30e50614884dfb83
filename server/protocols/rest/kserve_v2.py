"""The Open Inference Protocol's REST API (KServe v2, Triton's HTTP API) on the server's v2 REST port.

``tritonclient.http``, KServe's REST clients and the ``curl`` lines of the KServe and Triton documents call it
unchanged: health, server and model metadata, model readiness, and inference with JSON ``data`` (flat or nested,
row-major) or the binary tensor data extension (``Inference-Header-Content-Length``: the JSON header, then each
binary input's bytes in order, sized by its ``parameters.binary_data_size``). Outputs come back binary when the
request asks (``parameters.binary_data`` of an output, or ``binary_data_output`` of the request for every output:
what tritonclient.http asks by default), else as JSON ``data``. Tensors are decoded by the codec core's rules
(``tensorgate.v1.tensors``), run by the same data plane as every other protocol, and errors come back as
``{"error": "..."}`` with the status of their gRPC code (``http.HTTP_STATUS``).

Triton's extensions are answered by ``triton_extensions.TritonExtensions``, as over gRPC, with the JSON Triton's
HTTP API writes: the model configuration (``/v2/models/{m}[/versions/{v}]/config``), statistics
(``/v2/models[/{m}[/versions/{v}]]/stats``), and the model repository (``POST /v2/repository/index``, a list of
models; ``POST /v2/repository/models/{m}/load|unload``, admin scope, with an optional ``{"parameters": {...}}``).

Not supported: shared-memory inputs and outputs, the classification extension (``parameters.classification``),
compressed request bodies, and Triton's trace, logging and shared-memory extensions.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web

from tensorgate.server.errors import NotFoundError, UnavailableError, quote
from tensorgate.server.models.registry import ModelRegistry, VersionState
from tensorgate.server.protocols.rest.http import Route, json_response, parse_json
from tensorgate.server.protocols.rest.json_tensors import numbers_from_json, strings_to_json
from tensorgate.server.protocols.rpc import Call
from tensorgate.server.protocols.triton_extensions import PLATFORM, TritonExtensions, triton_json
from tensorgate.server.runtimes.signature import TensorInfo
from tensorgate.server.security.principal import ADMIN, PREDICT
from tensorgate.v1 import tensors
from tensorgate.v1.tensors import Dtype, TensorCodecError

SERVER_NAME = "tensorgate"
HEADER_LENGTH = "Inference-Header-Content-Length"
# The model paths: /v2/models/{model} with an optional /versions/{version} (a number or a label).
MODEL = "/v2/models/{model}{version:(/versions/[^/]+)?}"


def _version(request: web.Request) -> str:
    return request.match_info["version"].removeprefix("/versions/")


def _tensor_metadata(info: TensorInfo) -> dict[str, Any]:
    # v2 has no "any rank": a signature that does not fix the rank shows one dimension of any size.
    shape = [-1] if info.shape is None else list(info.shape)
    return {"name": info.name, "datatype": tensors.BY_V1[info.dtype].v2, "shape": shape}


def _field(container: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``container[key]``, INVALID_ARGUMENT unless it is there and of ``kind``."""
    value = container.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TensorCodecError(f"{where}: {key!r} is required and must be a {_kind_name(kind)}")
    return value


def _kind_name(kind: type) -> str:
    names: dict[type, str] = {list: "list", str: "string"}
    return names[kind]


def _parameters(tensor: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = tensor.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise TensorCodecError(f"{where}: 'parameters' must be an object")
    return parameters


def array_from_json(data: Any, dtype: Dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor's JSON ``data`` (flat or nested, row-major) as an array of ``dtype`` and ``shape``.

    Numbers must be of the datatype's kind (integers for integer types, true/false for BOOL), and narrow
    integers are range-checked; BYTES elements are strings (sent as UTF-8).
    """
    if not isinstance(data, list):
        raise TensorCodecError(f"{name}: 'data' must be a list")
    if dtype.is_string:
        flat: list[bytes] = []
        _flatten_strings(data, flat, name)
        array = tensors.object_array(flat, (len(flat),))
    else:
        array = numbers_from_json(data, dtype, name).ravel()
    count = tensors.element_count(shape)
    if array.size != count:
        raise TensorCodecError(f"{name}: shape {list(shape)} needs {count} values, got {array.size} in data")
    return array.reshape(shape)


def _flatten_strings(data: list[Any], into: list[bytes], name: str) -> None:
    for element in data:
        if isinstance(element, str):
            into.append(element.encode())
        elif isinstance(element, list):
            _flatten_strings(element, into, name)
        else:
            raise TensorCodecError(f"{name}: BYTES data holds strings, got {type(element).__name__}")


def _not_utf8(name: str) -> Callable[[bytes], Any]:
    def refuse(value: bytes) -> Any:
        raise TensorCodecError(f"{name} holds bytes that are not UTF-8: ask for it with binary_data")

    return refuse


class KServeV2Rest:
    """The v2 REST endpoints over the registry and data plane that every protocol uses."""

    def __init__(self, registry: ModelRegistry, triton: TritonExtensions) -> None:
        self._registry = registry
        self._triton = triton
        self._version = importlib.metadata.version("tensorgate")

    def routes(self) -> list[Route]:
        repository = "/v2/repository/models/{model}"
        return [
            Route("GET", "/v2/health/live", "kserve_rest_server_live", None, self.server_live),
            Route("GET", "/v2/health/ready", "kserve_rest_server_ready", None, self.server_ready),
            Route("GET", "/v2", "kserve_rest_server_metadata", PREDICT, self.server_metadata),
            # Before MODEL, which "stats" would match as a model's name (as in Triton).
            Route("GET", "/v2/models/stats", "kserve_rest_model_statistics", PREDICT, self.model_statistics),
            Route("GET", MODEL, "kserve_rest_model_metadata", PREDICT, self.model_metadata),
            Route("GET", MODEL + "/ready", "kserve_rest_model_ready", PREDICT, self.model_ready),
            Route("POST", MODEL + "/infer", "kserve_rest_model_infer", PREDICT, self.model_infer),
            Route("GET", MODEL + "/config", "kserve_rest_model_config", PREDICT, self.model_config),
            Route("GET", MODEL + "/stats", "kserve_rest_model_statistics", PREDICT, self.model_statistics),
            Route("POST", "/v2/repository/index", "kserve_rest_repository_index", PREDICT, self.repository_index),
            Route("POST", repository + "/load", "kserve_rest_repository_model_load", ADMIN, self.load),
            Route("POST", repository + "/unload", "kserve_rest_repository_model_unload", ADMIN, self.unload),
        ]

    async def server_live(self, request: web.Request, call: Call) -> web.Response:
        return json_response({"live": True})

    async def server_ready(self, request: web.Request, call: Call) -> web.Response:
        """200 once any model version can serve, else 400 (a 4xx is "false" in the protocol)."""
        ready = self._registry.has_available()
        return json_response({"ready": ready}, 200 if ready else 400)

    async def server_metadata(self, request: web.Request, call: Call) -> web.Response:
        return json_response({"name": SERVER_NAME, "version": self._version, "extensions": ["binary_tensor_data"]})

    async def model_ready(self, request: web.Request, call: Call) -> web.Response:
        try:
            call.resolve(request.match_info["model"], _version(request))
        except (NotFoundError, UnavailableError):
            return json_response({"ready": False}, 400)
        return json_response({"ready": True})

    async def model_metadata(self, request: web.Request, call: Call) -> web.Response:
        """The signature of the version that serves, and the model's AVAILABLE versions (the named one only when
        the path names one), newest first, as the gRPC ModelMetadata answers."""
        model, requested = request.match_info["model"], _version(request)
        version = call.resolve(model, requested)
        signature = version.servable.signature
        if requested:
            versions = [str(version.version)]
        else:
            available = (v for v in self._registry.versions(model) if v.state is VersionState.AVAILABLE)
            versions = [str(v.version) for v in available]
        return json_response(
            {
                "name": version.model,
                "versions": versions,
                "platform": PLATFORM,
                "inputs": [_tensor_metadata(info) for info in signature.inputs.values()],
                "outputs": [_tensor_metadata(info) for info in signature.outputs.values()],
            }
        )

    async def model_config(self, request: web.Request, call: Call) -> web.Response:
        """The version's ModelConfig itself, as Triton's HTTP API answers (not wrapped in a response)."""
        return json_response(triton_json(self._triton.config(call, request.match_info["model"], _version(request))))

    async def model_statistics(self, request: web.Request, call: Call) -> web.Response:
        model = request.match_info.get("model", "")
        version = _version(request) if model else ""
        return json_response(triton_json(self._triton.statistics(call, model, version)))

    async def repository_index(self, request: web.Request, call: Call) -> web.Response:
        """Triton's HTTP index: a JSON list of the models' entries (the body, optional, may ask ``ready`` only)."""
        body = await _optional_json(request, "repository index request")
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise TensorCodecError("'ready' must be true or false")
        return json_response(triton_json(self._triton.index(call, ready)).get("models", []))

    async def load(self, request: web.Request, call: Call) -> web.Response:
        parameters = _load_parameters(await _optional_json(request, "load request"))
        await self._triton.load(call, request.match_info["model"], parameters)
        return json_response({})

    async def unload(self, request: web.Request, call: Call) -> web.Response:
        parameters = _load_parameters(await _optional_json(request, "unload request"))
        await self._triton.unload(call, request.match_info["model"], parameters)
        return json_response({})

    async def model_infer(self, request: web.Request, call: Call) -> web.Response:
        admission = call.admit(request.match_info["model"], _version(request))
        body = memoryview(await request.read())
        header_length = _header_length(request, len(body))
        infer = parse_json(body[:header_length], "inference request")
        inputs = _decode_inputs(infer, body[header_length:])
        binary_default, outputs = _requested_outputs(infer)
        prediction = await call.predict(admission, inputs, list(outputs))
        answer: dict[str, Any] = {"model_name": prediction.model, "model_version": str(prediction.version)}
        if "id" in infer:
            answer["id"] = infer["id"]
        encoded, chunks = [], []
        for name, array in prediction.outputs.items():
            dtype = tensors.dtype_of_array(array)
            output: dict[str, Any] = {"name": name, "datatype": dtype.v2, "shape": list(array.shape)}
            if outputs.get(name, binary_default):
                chunks.append(tensors.to_raw(array, dtype))
                output["parameters"] = {"binary_data_size": len(chunks[-1])}
            elif dtype.is_string:
                output["data"] = strings_to_json(array.ravel(), _not_utf8(f"output {quote(name)}"))
            else:
                output["data"] = np.ascontiguousarray(array).ravel()
            encoded.append(output)
        answer["outputs"] = encoded
        if not chunks:
            return json_response(answer)
        response = json_response(answer)
        assert isinstance(response.body, bytes)
        header = response.body
        return web.Response(
            body=b"".join([header, *chunks]),
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(header))},
        )


async def _optional_json(request: web.Request, what: str) -> dict[str, Any]:
    """The JSON object of a body Triton's clients may leave empty ({} then)."""
    body = await request.read()
    return parse_json(body, what) if body.strip() else {}


def _load_parameters(body: dict[str, Any]) -> list[str]:
    """The names of a load or unload request's ``parameters`` (which ``TritonExtensions`` checks)."""
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise TensorCodecError("'parameters' must be an object")
    return list(parameters)


def _header_length(request: web.Request, body_length: int) -> int:
    """Bytes of JSON at the start of the body: ``Inference-Header-Content-Length``, or all of it."""
    given = request.headers.get(HEADER_LENGTH)
    if given is None:
        return body_length
    if not given.isdigit() or int(given) > body_length:
        raise TensorCodecError(f"{HEADER_LENGTH} {given!r} must be a byte count within the body's {body_length}")
    return int(given)


def _decode_inputs(infer: dict[str, Any], binary: memoryview) -> dict[str, np.ndarray]:
    """The request's inputs by name, from their JSON ``data`` or their share of the binary data after the JSON."""
    if infer.get("parameters") is not None and not isinstance(infer["parameters"], dict):
        raise TensorCodecError("'parameters' must be an object")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(_field(infer, "inputs", list, "inference request")):
        if not isinstance(tensor, dict):
            raise TensorCodecError(f"inputs[{index}] must be an object")
        name = f"input {quote(str(tensor.get('name')))}"
        key = _field(tensor, "name", str, f"inputs[{index}]")
        if key in inputs:
            raise TensorCodecError(f"{name} is given twice")
        datatype = _field(tensor, "datatype", str, name)
        dtype = tensors.BY_V2.get(datatype)
        if dtype is None:
            raise TensorCodecError(
                f"{name}: datatype {quote(datatype)} is not supported; use one of {sorted(tensors.BY_V2)}"
            )
        dims = _field(tensor, "shape", list, name)
        if not all(isinstance(dim, int) and not isinstance(dim, bool) for dim in dims):
            raise TensorCodecError(f"{name}: 'shape' must be a list of integers")
        shape = tensors.checked_shape(dims, name)
        parameters = _parameters(tensor, name)
        if "shared_memory_region" in parameters:
            raise TensorCodecError(f"{name}: shared-memory inputs are not supported; send the data")
        size = parameters.get("binary_data_size")
        if size is None:
            inputs[key] = array_from_json(tensor.get("data"), dtype, shape, name)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TensorCodecError(f"{name}: binary_data_size must be a byte count")
        if "data" in tensor:
            raise TensorCodecError(f"{name}: 'data' and binary_data_size are both set; use one")
        if offset + size > len(binary):
            raise TensorCodecError(
                f"{name}: binary_data_size {size} runs past the {len(binary)} bytes of binary data after the JSON"
            )
        raw = binary[offset : offset + size]
        offset += size
        inputs[key] = tensors.from_raw(bytes(raw) if dtype.is_string else raw, dtype, shape, name, "binary data")  # type: ignore[arg-type]
    if offset != len(binary):
        raise TensorCodecError(
            f"the body has {len(binary)} bytes after the JSON, and the inputs' binary_data_size add up to {offset}"
        )
    return inputs


def _requested_outputs(infer: dict[str, Any]) -> tuple[bool, dict[str, bool]]:
    """Whether outputs go back binary by default (``binary_data_output``), and the outputs the request names,
    each with whether it goes back binary."""
    binary_default = (infer.get("parameters") or {}).get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise TensorCodecError("binary_data_output must be true or false")
    requested = infer.get("outputs", [])
    if not isinstance(requested, list):
        raise TensorCodecError("'outputs' must be a list")
    outputs: dict[str, bool] = {}
    for index, output in enumerate(requested):
        if not isinstance(output, dict):
            raise TensorCodecError(f"outputs[{index}] must be an object")
        key = _field(output, "name", str, f"outputs[{index}]")
        name = f"output {quote(key)}"
        parameters = _parameters(output, name)
        if "shared_memory_region" in parameters:
            raise TensorCodecError(f"{name}: shared-memory outputs are not supported")
        if parameters.get("classification", 0):
            raise TensorCodecError(f"{name}: the classification extension is not supported")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise TensorCodecError(f"{name}: binary_data must be true or false")
        outputs[key] = binary
    return binary_default, outputs
