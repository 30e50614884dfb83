"""Property-based fuzzing of both listeners: the server's own gRPC port and Envoy's (gRPC and REST/JSON).

Hypothesis throws random bytes, byte-mutated valid requests and well-formed requests with wild contents (unknown
models, odd versions, every dtype, negative and huge dimensions, raw contents of the wrong length, NaN) at every
gRPC method, and random JSON, mutated predict bodies, random bytes and random paths at the REST routes. Every answer
must be one the API documents: over gRPC a status of ALLOWED_CODES, over REST a 2xx, a 4xx or a 503. Afterwards the
server is healthy and still predicts, no process of the stack died, and the server's memory did not grow with the
number of requests.

Every gRPC example goes to both listeners in turn, one call at a time: overload is test_gateway's subject. Runs are
derandomized, so CI sends the same inputs every time.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tensorgate.clients.client import TensorgateClient
from tensorgate.v1 import codec
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
    ReloadModelRequest,
    SetModelLabelsRequest,
    UnloadModelRequest,
)
from tensorgate.v1.tensor_pb2 import DataType, Tensor

from conftest import ServerProcess

Code = grpc.StatusCode
CODES = {code.value[0]: code for code in Code}  # google.rpc.Code number -> status, for errors inside streams

# What a fuzzed gRPC call may answer. Every entry is a status the server (errors.py, through protocols/rpc.py)
# or grpc itself gives for a request that is wrong, or for load; nothing here means "the server broke".
ALLOWED_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        # The fuzzed request happens to be valid (a mutation inside an image's pixels, a well-formed request).
        Code.OK,
        # InvalidArgumentError: bytes that do not parse (rpc.parse_request), a tensor that does not decode
        # (codec: dtype, shape, encodings, counts), inputs that do not fit the signature or the limits
        # (validation: names, dtypes, shapes, NaN), a missing model name or a version that is not a number.
        Code.INVALID_ARGUMENT,
        # NotFoundError: an unknown model, version or label (registry, manager).
        Code.NOT_FOUND,
        # UnavailableError: the stack's `broken` model never loads. grpc also says UNAVAILABLE when the server is
        # gone, so every UNAVAILABLE is followed by a health check of the server.
        Code.UNAVAILABLE,
        # ResourceExhaustedError: a full batch queue (`slow` queues a single request, which an earlier test's
        # calls may still hold); grpc's own answer to a message over max_message_bytes.
        Code.RESOURCE_EXHAUSTED,
        # Our own per-call timeout on a loaded machine, or DeadlineExceededError for a request that expired queued.
        Code.DEADLINE_EXCEEDED,
        # A method the server does not have; only accepted for those (see Fuzzer.call).
        Code.UNIMPLEMENTED,
    }
)
# Never accepted: INTERNAL and UNKNOWN (an exception the server did not expect), FAILED_PRECONDITION and OUT_OF_RANGE
# (no ServingError maps to them), UNAUTHENTICATED and PERMISSION_DENIED (the stack runs without authentication),
# CANCELLED (these calls are never cancelled).


PREDICT = "/tensorgate.v1.InferenceService/Predict"
STREAM_PREDICT = "/tensorgate.v1.InferenceService/StreamPredict"
MODEL_SERVICE = "/tensorgate.v1.ModelService"
# Read-only ModelService methods: fuzzed with well-formed requests too.
READ_METHODS: dict[str, type[Message]] = {
    f"{MODEL_SERVICE}/ListModels": ListModelsRequest,
    f"{MODEL_SERVICE}/GetModelStatus": GetModelStatusRequest,
    f"{MODEL_SERVICE}/GetModelMetadata": GetModelMetadataRequest,
}
# Admin methods change what is served: fuzzed with bytes only, never naming a stack model (admin_call_changes_models).
ADMIN_METHODS: dict[str, type[Message]] = {
    f"{MODEL_SERVICE}/LoadModel": LoadModelRequest,
    f"{MODEL_SERVICE}/UnloadModel": UnloadModelRequest,
    f"{MODEL_SERVICE}/ReloadModel": ReloadModelRequest,
    f"{MODEL_SERVICE}/SetModelLabels": SetModelLabelsRequest,
}
RESPONSE_TYPES: dict[str, type[Message]] = {
    PREDICT: PredictResponse,
    f"{MODEL_SERVICE}/ListModels": ListModelsResponse,
    f"{MODEL_SERVICE}/GetModelStatus": GetModelStatusResponse,
    f"{MODEL_SERVICE}/GetModelMetadata": GetModelMetadataResponse,
}
KNOWN_METHODS = frozenset({PREDICT, STREAM_PREDICT, *READ_METHODS, *ADMIN_METHODS})
STACK_MODELS = ("mnist", "scorer", "broken", "slow")

GRPC_TIMEOUT_S = 10.0
REST_TIMEOUT_S = 10.0
# How much the server's resident memory may grow over the main fuzzing, which starts after a warm-up of every kind
# of request. Of the ~10,000 fuzzed calls about 7,000 reach the server (the rest Envoy answers itself: unknown
# routes, JSON that does not parse), so a leak of 2.4 KB per call would cross 16 MiB: less than one MNIST request's
# 3 KB of pixels, or a retained exception with its traceback and frames. After the warm-up the growth measured on
# the 2-core CI machine was below 3 MiB.
RSS_GROWTH_LIMIT_BYTES = 16 << 20
MIN_REQUESTS_FOR_MEMORY_CHECK = 8000  # fewer (a single test selected) would not make a leak show

# A fixed image (multiples of 1/8, short in JSON) and the requests built from it: the seeds of the mutations.
IMAGE = ((np.arange(28 * 28) % 9) / 8).astype(np.float32).reshape(1, 28, 28)


def _mnist_request(raw: bool) -> PredictRequest:
    request = PredictRequest(model="mnist")
    request.inputs["keras_tensor"].CopyFrom(codec.encode(IMAGE, raw=raw))
    return request


def _scorer_request() -> PredictRequest:
    request = PredictRequest(model="scorer", version="1", output_filter=["total"])
    request.inputs["features"].CopyFrom(codec.encode(np.array([[1.0, -2.0, 3.0]]), raw=False))
    request.inputs["tag"].CopyFrom(codec.encode(np.array([b"h\xc3\xa9llo"], dtype=object), raw=False))
    request.inputs["counts"].CopyFrom(codec.encode(np.array([[4, 5]], np.int32), raw=True))
    return request


def _stream_request(request: PredictRequest, request_id: str) -> StreamPredictRequest:
    stream = StreamPredictRequest(id=request_id, model=request.model, version=request.version)
    for name, tensor in request.inputs.items():
        stream.inputs[name].CopyFrom(tensor)
    stream.output_filter.extend(request.output_filter)
    return stream


SEED_REQUESTS: dict[str, bytes] = {
    "mnist raw": _mnist_request(raw=True).SerializeToString(),
    "mnist typed": _mnist_request(raw=False).SerializeToString(),
    "scorer": _scorer_request().SerializeToString(),
}
SEED_STREAM_REQUESTS: list[bytes] = [
    _stream_request(_mnist_request(raw=True), "a").SerializeToString(),
    _stream_request(_scorer_request(), "b").SerializeToString(),
]
SEED_MODEL_REQUESTS: dict[str, bytes] = {
    f"{MODEL_SERVICE}/GetModelStatus": GetModelStatusRequest(model="mnist", version="1").SerializeToString(),
    f"{MODEL_SERVICE}/GetModelMetadata": GetModelMetadataRequest(model="scorer").SerializeToString(),
    f"{MODEL_SERVICE}/LoadModel": LoadModelRequest(model="nope", version="1").SerializeToString(),
    f"{MODEL_SERVICE}/SetModelLabels": SetModelLabelsRequest(model="nope", labels={"stable": 1}).SerializeToString(),
}
VALID_JSON_BODY: dict[str, Any] = {
    "inputs": {
        "keras_tensor": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 28, 28], "floatValues": IMAGE.ravel().tolist()}
    }
}


# --- Byte mutations ---------------------------------------------------------------------------------------------

# Bytes that mean something in the protobuf wire format (small varints, the tags of fields 1 to 4 as varint and
# length-delimited, continuation bits) or in JSON, so that mutations change structure rather than only values.
INTERESTING_BYTES = b'\x00\x01\x02\x08\x0a\x10\x12\x18\x1a\x22\x7f\x80\xff{}[]",:0-9e'


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    """Apply byte mutations in order. ``position`` is taken modulo the current length, ``arg`` per kind."""
    buffer = bytearray(data)
    for kind, position, arg in mutations:
        at = position % (len(buffer) + 1)
        if kind == "flip" and at < len(buffer):
            buffer[at] ^= arg % 255 + 1
        elif kind == "set" and at < len(buffer):
            buffer[at] = INTERESTING_BYTES[arg % len(INTERESTING_BYTES)]
        elif kind == "insert":
            buffer[at:at] = bytes([INTERESTING_BYTES[arg % len(INTERESTING_BYTES)]]) * (arg % 7 + 1)
        elif kind == "delete":
            del buffer[at : at + arg % 16 + 1]
        elif kind == "truncate":
            del buffer[at:]
        elif kind == "duplicate":  # repeat a span: repeated fields, fields set twice, longer varints
            buffer[at:at] = buffer[at : at + arg % 32 + 1]
    return bytes(buffer)


MUTATION_KINDS = ("flip", "set", "insert", "delete", "truncate", "duplicate")
mutations = st.lists(
    st.tuples(
        st.sampled_from(MUTATION_KINDS),
        # Half the positions within the first 64 bytes, where a request's names, tags and lengths are.
        st.one_of(st.integers(0, 63), st.integers(0, 1 << 16)),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=4,
)


def random_mutations(rng: random.Random) -> list[tuple[str, int, int]]:
    """What ``mutations`` draws, from a seeded Random (for the warm-up, which runs outside Hypothesis)."""
    return [
        (rng.choice(MUTATION_KINDS), rng.choice([rng.randrange(64), rng.randrange(1 << 16)]), rng.randrange(256))
        for _ in range(rng.randint(1, 4))
    ]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    return mutate(draw(st.sampled_from(seeds)), draw(mutations))


# --- Well-formed requests with wild contents -------------------------------------------------------------------

MODEL_NAMES = st.one_of(
    st.sampled_from([*STACK_MODELS, "", "nope", "MNIST", "mnist ", "../mnist", "mnist/1", "."]),
    st.text(max_size=16),
)
VERSIONS = st.one_of(
    st.sampled_from(["", "1", "2", "0", "00", "01", "-1", "+1", "1.0", " 1", "stable", "9" * 30, "\u0661", "\u00b2"]),
    st.text(max_size=6),
)
INPUT_NAMES = st.one_of(st.sampled_from(["keras_tensor", "features", "tag", "counts", "x", ""]), st.text(max_size=8))
OUTPUT_NAMES = st.one_of(st.sampled_from(["output_0", "total", "y", ""]), st.text(max_size=8))
# Every DataType, and values proto3 lets through although the enum does not name them.
DTYPES = st.one_of(st.sampled_from(DataType.values()), st.sampled_from([-1, 14, 99, 2**31 - 1]))
DIMENSIONS = st.one_of(
    st.integers(-2, 5), st.sampled_from([28, 784, 4096, 4097, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63)])
)
SHAPES = st.one_of(
    st.lists(DIMENSIONS, max_size=6),
    st.integers(1, 4).map(lambda n: [n, 28, 28]),
    st.integers(60, 70).map(lambda rank: [1] * rank),  # more dimensions than numpy has
)
# Per typed field: values of any size its protobuf type holds.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "float_values": st.floats(width=32),
    "double_values": st.floats(),
    "int_values": st.integers(-(2**31), 2**31 - 1),
    "int64_values": st.integers(-(2**63), 2**63 - 1),
    "uint64_values": st.integers(0, 2**64 - 1),
    "bool_values": st.booleans(),
    "string_values": st.text(max_size=8),
    "bytes_values": st.binary(max_size=8),
}
MAX_FILLED_ELEMENTS = 4 * 28 * 28  # shapes of more elements get a short count: their requests must stay small


def _raw_fill(dtype: int, count: int, kind: str, seed: int) -> bytes:
    """``count`` elements of ``dtype`` as raw bytes: zeros, noise, or noise with a NaN or an infinity (floats)."""
    numpy = codec.numpy_dtype(dtype) if dtype in DataType.values() and dtype else np.dtype("<f4")
    if numpy.kind == "O":  # strings: 4-byte little-endian lengths, each followed by its bytes
        return b"".join(len(b"ab").to_bytes(4, "little") + b"ab" for _ in range(count))
    rng = np.random.default_rng(seed)
    array = np.zeros(count, numpy) if kind == "zeros" else rng.integers(0, 256, count * numpy.itemsize, np.uint8)
    array = np.frombuffer(array.tobytes(), numpy).copy()
    if numpy.kind == "f" and count and kind in ("nan", "inf"):
        array[rng.integers(count)] = np.nan if kind == "nan" else np.inf
    return array.tobytes()


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    """A Tensor of any dtype and shape, its values in the right encoding or not, in the right number or not."""
    dtype, shape = draw(DTYPES), draw(SHAPES)
    tensor = Tensor(dtype=dtype, shape=shape)
    exact = int(np.prod(shape, dtype=object)) if all(dim >= 0 for dim in shape) else None
    if exact is None or exact > MAX_FILLED_ELEMENTS:
        count = draw(st.integers(0, 8))
    else:
        count = max(0, exact + draw(st.sampled_from([0, 0, 0, 0, 1, -1, 7])))
    encoding = draw(st.sampled_from(["raw", "raw", "typed", "typed", "both", "none"]))
    if encoding in ("raw", "both"):
        raw = _raw_fill(dtype, count, draw(st.sampled_from(["zeros", "noise", "nan", "inf"])), draw(st.integers(0, 99)))
        tensor.raw_contents = raw[: len(raw) - draw(st.sampled_from([0, 0, 0, 1, 3]))]
    if encoding in ("typed", "both"):
        typed_field = draw(st.sampled_from(sorted(FIELD_VALUES)))
        values = [draw(FIELD_VALUES[typed_field])] * count
        for _ in range(draw(st.integers(0, 2)) if count else 0):
            values[draw(st.integers(0, count - 1))] = draw(FIELD_VALUES[typed_field])
        getattr(tensor, typed_field).extend(values)
    return tensor


@st.composite
def predict_requests(draw: st.DrawFn) -> PredictRequest:
    """Any model, version, input names, tensors and output filter."""
    request = PredictRequest(model=draw(MODEL_NAMES), version=draw(VERSIONS))
    for name in draw(st.lists(INPUT_NAMES, max_size=3, unique=True)):
        request.inputs[name].CopyFrom(draw(tensors()))
    request.output_filter.extend(draw(st.lists(OUTPUT_NAMES, max_size=2)))
    return request


@st.composite
def mnist_like_requests(draw: st.DrawFn) -> PredictRequest:
    """MNIST-shaped requests, so that many get past decoding: to the signature checks, the NaN check, the model."""
    batch = draw(st.integers(1, 4))
    raw = _raw_fill(DataType.DATA_TYPE_FLOAT32, batch * 784, draw(st.sampled_from(["zeros", "nan", "inf", "noise"])), 0)
    image = np.frombuffer(raw, np.float32).reshape(batch, 28, 28)
    request = PredictRequest(model="mnist", version=draw(st.sampled_from(["", "1"])))
    request.inputs["keras_tensor"].CopyFrom(codec.encode(image, raw=draw(st.booleans())))
    request.output_filter.extend(draw(st.lists(st.sampled_from(["output_0", "output_1"]), max_size=1)))
    return request


PREDICT_BODIES = st.one_of(
    st.binary(max_size=256),
    mutated(list(SEED_REQUESTS.values())),
    mnist_like_requests().map(PredictRequest.SerializeToString),
    predict_requests().map(PredictRequest.SerializeToString),
)


@st.composite
def stream_messages(draw: st.DrawFn) -> bytes:
    """One serialized StreamPredictRequest of any kind above, or bytes that are none."""
    choice = draw(st.sampled_from(["bytes", "mutated", "wild", "mnist"]))
    if choice == "bytes":
        return draw(st.binary(max_size=64))
    if choice == "mutated":
        return draw(mutated(SEED_STREAM_REQUESTS))
    request = draw(predict_requests() if choice == "wild" else mnist_like_requests())
    return _stream_request(request, draw(st.text(max_size=4))).SerializeToString()


# --- JSON --------------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# Values to put where a predict body has (or lacks) a field: wrong types, numbers beyond int64 and uint64, numbers
# as strings (protobuf JSON takes "NaN" and "Infinity" for floats), enum names and numbers, deep nesting, long shapes.
WEIRD_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(),  # NaN and the infinities come out as bare NaN / Infinity: not JSON at all
    st.sampled_from(
        [
            *("NaN", "Infinity", "-Infinity", "1e999", "-1", "0", "9223372036854775808", "18446744073709551616"),
            *("0x10", "1.5", "", " ", "AAAA", "not base64!", *DataType.keys()),
        ]
    ),
    st.text(max_size=12),
    st.integers(1, 200).map(_nested),
    st.lists(st.integers(-2, 2**63 - 1), max_size=70),
    json_values,
)
TENSOR = ("inputs", "keras_tensor")
JSON_PLACES: list[tuple[str | int, ...]] = [
    (),
    ("inputs",),
    TENSOR,
    (*TENSOR, "dtype"),
    (*TENSOR, "shape"),
    (*TENSOR, "shape", 0),
    (*TENSOR, "shape", 2),
    (*TENSOR, "floatValues"),
    (*TENSOR, "floatValues", 0),
    (*TENSOR, "floatValues", -1),
    (*TENSOR, "float_values"),
    (*TENSOR, "doubleValues"),
    (*TENSOR, "rawContents"),
    (*TENSOR, "unknownField"),
    ("inputs", "other"),
    ("inputs", ""),
    ("model",),
    ("version",),
    ("outputFilter",),
    ("extra",),
]
DELETE = object()


def replace_at(body: Any, place: tuple[str | int, ...], value: Any) -> Any:
    """``body`` with the value at ``place`` replaced, added or (for DELETE) removed; unchanged if ``place`` is gone."""
    if not place:
        return {} if value is DELETE else value
    node = body
    for key in place[:-1]:
        if isinstance(node, dict) and isinstance(key, str) and key in node:
            node = node[key]
        else:
            return body
    last = place[-1]
    if isinstance(node, dict) and isinstance(last, str):
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and node:
        if value is DELETE:
            del node[last % len(node)]
        else:
            node[last % len(node)] = value
    return body


@st.composite
def mutated_predict_bodies(draw: st.DrawFn) -> Any:
    """The valid MNIST predict body with one to three fields replaced by WEIRD_JSON, added, or removed."""
    body = json.loads(json.dumps(VALID_JSON_BODY))
    for _ in range(draw(st.integers(1, 3))):
        value = DELETE if draw(st.integers(0, 4)) == 0 else draw(WEIRD_JSON)
        body = replace_at(body, draw(st.sampled_from(JSON_PLACES)), value)
    return body


def _segment(text: str) -> str:
    return quote(text, safe="")


PREDICT_PATHS = st.one_of(
    st.just("/v1/models/mnist:predict"),
    st.builds(lambda model: f"/v1/models/{_segment(model)}:predict", MODEL_NAMES),
    st.builds(lambda m, v: f"/v1/models/{_segment(m)}/versions/{_segment(v)}:predict", MODEL_NAMES, VERSIONS),
)
# Printable ASCII without the space: what an HTTP request line can carry unescaped, odd characters included.
PATH_CHARACTERS = string.ascii_letters + string.digits + "-._~:@!$&'()*+,;=%/?#[]{}|^`\"<>\\"
PATH_SEGMENTS = st.one_of(
    MODEL_NAMES.map(_segment), VERSIONS.map(_segment), st.text(PATH_CHARACTERS, max_size=12), st.just("versions")
)
REST_PATHS = st.one_of(
    st.builds(
        lambda segments, suffix: "/v1/models/" + "/".join(segments) + suffix,
        st.lists(PATH_SEGMENTS, max_size=4),
        st.one_of(
            st.sampled_from(["", ":predict", ":streamPredict", "/metadata", ":nope", "?model=mnist", "?x=1"]),
            st.sampled_from([":load", ":unload", ":reload", ":setLabels"]),
            st.text(PATH_CHARACTERS, max_size=6),
        ),
    ),
    st.sampled_from(["/v1/models", "/v1/models:streamPredict", "/v1", "/", "/openapi.json", PREDICT]),
    st.text(PATH_CHARACTERS, max_size=24).map(lambda text: "/" + text),
)
HTTP_METHODS = st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
ADMIN_ROUTE = re.compile(r"[:/](un|re)?load|setlabels", re.IGNORECASE)


def changes_models(path: str, body: bytes | None) -> bool:
    """Whether a REST call might load, unload, reload or relabel a model of the stack: such calls are not sent.

    Deliberately broad (any admin verb and any stack model's name anywhere, in any case, once or twice unescaped),
    since the other tests of the session rely on what is served.
    """
    text = (unquote(unquote(path)) + (body or b"").decode("latin-1")).lower()
    return bool(ADMIN_ROUTE.search(text)) and any(model in text for model in STACK_MODELS)


def admin_call_changes_models(method: str, data: bytes) -> bool:
    """Whether bytes sent to an admin method parse as a request that names a model of the stack."""
    try:
        request = ADMIN_METHODS[method].FromString(data)
    except DecodeError:
        return False
    return any(model in request.model.lower() for model in STACK_MODELS)


# --- The harness -------------------------------------------------------------------------------------------------


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def child_pids(stack: ServerProcess) -> dict[str, int]:
    """Pids of the supervisor's children (server and Envoy), from its "stack started" log line."""
    line = next(line for line in stack.log().splitlines() if '"stack started"' in line)
    return json.loads(line)["pids"]


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@dataclass
class Fuzzer:
    """Sends fuzzed requests to the stack and judges every answer."""

    stack: ServerProcess
    channels: dict[str, grpc.Channel]  # listener name -> channel
    rest: http.client.HTTPConnection
    server_pid: int
    envoy_pid: int
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "gRPC NOT_FOUND", "HTTP 400", ...: what was covered
    _log_offset: int = 0
    _tracebacks: list[str] = field(default_factory=list)

    # gRPC

    def call(self, listener: str, method: str, data: bytes) -> grpc.StatusCode:
        """One unary call with raw request bytes; the status must be allowed for ``method``."""
        self.requests += 1
        try:
            response = self.channels[listener].unary_unary(method)(data, timeout=GRPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        else:
            code, details = Code.OK, ""
            if method in RESPONSE_TYPES:
                RESPONSE_TYPES[method].FromString(response)  # a valid answer, not garbage
        self.judge_code(code, f"{method} via {listener} answered {code.name}: {details}\nrequest: {data!r}")
        if code is Code.UNIMPLEMENTED:
            assert method not in KNOWN_METHODS, f"{method} via {listener}: UNIMPLEMENTED: {details}"
        elif method not in KNOWN_METHODS:
            assert code is Code.UNIMPLEMENTED, f"unknown {method} via {listener} answered {code.name}: {details}"
        return code

    def stream(self, listener: str, messages: list[bytes]) -> None:
        """One StreamPredict call: one answer per message, in order, each with an allowed status."""
        self.requests += 1
        call = self.channels[listener].stream_stream(STREAM_PREDICT)
        try:
            answers = [StreamPredictResponse.FromString(data) for data in call(iter(messages), timeout=GRPC_TIMEOUT_S)]
        except grpc.RpcError as exc:
            self.judge_code(exc.code(), f"StreamPredict via {listener}: {exc.code().name}: {exc.details()}")
            return
        where = f"StreamPredict via {listener}, messages {messages!r}"
        assert len(answers) == len(messages), f"{where}: {len(answers)} answers"
        for message, answer in zip(messages, answers, strict=True):
            code = CODES.get(answer.error.code, Code.UNKNOWN) if answer.HasField("error") else Code.OK
            self.judge_code(code, f"{where}: message {message!r} answered {code.name}: {answer.error.message}")
            assert code is not Code.UNIMPLEMENTED, where

    def judge_code(self, code: grpc.StatusCode, what: str) -> None:
        self.outcomes[f"gRPC {code.name}"] += 1
        if code in (Code.INTERNAL, Code.UNKNOWN):
            self.fail_internal_error(what)
        else:
            assert code in ALLOWED_CODES, what
        if code is Code.UNAVAILABLE:
            self.assert_healthy(what)

    # REST

    def http(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """One REST call through Envoy; the status must be 2xx, 4xx, or 503 with the server still healthy."""
        self.requests += 1
        headers = {"content-type": "application/json"}
        for attempt in range(2):
            try:
                self.rest.request(method, path, body=body, headers=headers)
                response = self.rest.getresponse()
                status, text = response.status, response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.rest.close()  # Envoy closed the kept-alive connection: the next request reconnects
                if attempt:
                    raise
        self.outcomes[f"HTTP {status}"] += 1
        what = f"{method} {path} answered {status}: {text[:500]!r}\nbody: {(body or b'')[:2000]!r}"
        if status == 500:
            self.fail_internal_error(what)
        else:
            assert 200 <= status < 500 or status == 503, what
        if status == 503:
            self.assert_healthy(what)
        if status == 200 and urlsplit(path).path.endswith(":streamPredict"):
            self.judge_ndjson(text, what)
        return status, text

    def judge_ndjson(self, text: bytes, what: str) -> None:
        """StreamPredict over REST: every line's error code must be allowed, like a gRPC status."""
        for line in text.splitlines():
            try:
                answer = json.loads(line)
            except ValueError:
                continue  # a stream cut short ends with whatever Envoy had; the status already said 200
            error = answer.get("error") if isinstance(answer, dict) else None
            if isinstance(error, dict):
                code = CODES.get(error.get("code", 0), Code.UNKNOWN)
                self.judge_code(code, f"{what}\nline: {line!r}")

    # Health and the server's log

    def assert_healthy(self, after: str) -> None:
        assert self.stack.process.poll() is None, f"the supervisor exited after {after}"
        assert alive(self.server_pid) and alive(self.envoy_pid), f"a child of the supervisor died after {after}"
        with grpc.insecure_channel(self.stack.target) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, f"not SERVING after {after}"

    def unexpected_errors(self) -> list[str]:
        """Tracebacks of unexpected errors the server logged and no INTERNAL answer has accounted for yet."""
        with self.stack.log_path.open("rb") as log:
            log.seek(self._log_offset)
            text = log.read()
        complete = text[: text.rfind(b"\n") + 1]  # a line still being written is read next time
        self._log_offset += len(complete)
        for line in complete.splitlines():
            if b"unexpected error" in line and line.startswith(b"{"):
                record = json.loads(line)
                if str(record.get("message", "")).startswith("unexpected error"):
                    self._tracebacks.append(record.get("exception", ""))
        return self._tracebacks

    def fail_internal_error(self, what: str) -> None:
        """An INTERNAL (or HTTP 500) is a server bug: fail with the traceback the server logged for it (written
        before the answer is sent)."""
        tracebacks = self.unexpected_errors()
        pytest.fail(f"SERVER BUG: {what}\nserver traceback:\n{tracebacks[0] if tracebacks else '(none logged)'}")

    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing example
        return "Fuzzer(...)"


def warm_up(fuzzer: Fuzzer, rounds: int) -> None:
    """Every kind of request ``rounds`` times or more, from a seeded Random: first-use allocations happen here."""
    rng = random.Random(0)
    seeds = list(SEED_REQUESTS.values())
    for i in range(rounds):
        for listener in fuzzer.channels:
            fuzzer.call(listener, PREDICT, rng.randbytes(rng.randrange(128)))
            fuzzer.call(listener, PREDICT, mutate(rng.choice(seeds), random_mutations(rng)))
            fuzzer.call(listener, PREDICT, seeds[i % len(seeds)])
            image = np.full((1 + i % 4, 28, 28), 0.5, np.float32)
            request = PredictRequest(model="mnist")
            request.inputs["keras_tensor"].CopyFrom(codec.encode(image, raw=i % 2 == 0))
            fuzzer.call(listener, PREDICT, request.SerializeToString())
            method, seed = rng.choice(list(SEED_MODEL_REQUESTS.items()))
            data = mutate(seed, random_mutations(rng))
            if not (method in ADMIN_METHODS and admin_call_changes_models(method, data)):
                fuzzer.call(listener, method, data)
            fuzzer.call(listener, f"{MODEL_SERVICE}/ListModels", b"")
            fuzzer.stream(listener, [rng.choice(SEED_STREAM_REQUESTS), rng.randbytes(rng.randrange(32))])
        valid = json.dumps(VALID_JSON_BODY).encode()
        fuzzer.http("POST", "/v1/models/mnist:predict", valid)
        fuzzer.http("POST", "/v1/models/mnist:predict", mutate(valid, random_mutations(rng)))
        fuzzer.http("POST", "/v1/models:streamPredict", b"[" + valid[:-1] + b', "model": "mnist"}]')
        fuzzer.http("GET", rng.choice(["/v1/models", "/v1/models/mnist", "/v1/models/nope/metadata"]), None)


@dataclass
class Baseline:
    rss_bytes: int
    requests: int


@pytest.fixture(scope="module")
def fuzzer(stack: ServerProcess) -> Iterator[Fuzzer]:
    pids = child_pids(stack)
    gateway = urlsplit(stack.gateway_url)
    assert gateway.hostname and gateway.port
    channels = {"server": grpc.insecure_channel(stack.target), "gateway": grpc.insecure_channel(stack.gateway_target)}
    rest = http.client.HTTPConnection(gateway.hostname, gateway.port, timeout=REST_TIMEOUT_S)
    fuzzer = Fuzzer(stack, channels, rest, pids["server"], pids["envoy"])
    fuzzer.unexpected_errors().clear()  # start reading the log from here: earlier tests' errors are theirs
    try:
        yield fuzzer
    finally:
        rest.close()
        for channel in channels.values():
            channel.close()


@pytest.fixture(scope="module")
def baseline(fuzzer: Fuzzer) -> Baseline:
    """The server's RSS after a warm-up of every kind of request, taken before the first fuzz test."""
    warm_up(fuzzer, rounds=60)
    return Baseline(rss_bytes(fuzzer.server_pid), fuzzer.requests)


# --- gRPC --------------------------------------------------------------------------------------------------------


@fuzz_settings(examples=2000)
@given(data=PREDICT_BODIES)
def test_grpc_predict(fuzzer: Fuzzer, baseline: Baseline, data: bytes) -> None:
    """Random bytes, mutated valid requests and wild well-formed requests to Predict, on both listeners."""
    for listener in fuzzer.channels:
        fuzzer.call(listener, PREDICT, data)


MODEL_SERVICE_CALLS = st.one_of(
    st.tuples(st.sampled_from(sorted(READ_METHODS)), st.binary(max_size=64)),
    st.tuples(st.sampled_from(sorted(ADMIN_METHODS)), st.binary(max_size=64)),
    st.sampled_from(sorted(SEED_MODEL_REQUESTS.items())).flatmap(
        lambda item: st.tuples(st.just(item[0]), mutated([item[1]]))
    ),
    st.builds(
        lambda method, model, version: (method, READ_METHODS[method](model=model, version=version).SerializeToString()),
        st.sampled_from([f"{MODEL_SERVICE}/GetModelStatus", f"{MODEL_SERVICE}/GetModelMetadata"]),
        MODEL_NAMES,
        VERSIONS,
    ),
    # Methods the server does not have.
    st.tuples(
        st.one_of(
            st.sampled_from(["/tensorgate.v1.InferenceService/Nope", "/tensorgate.v2.ModelService/ListModels"]),
            st.text(string.ascii_letters + "._/", min_size=1, max_size=24).map(lambda name: f"/{name}/Method"),
        ),
        st.binary(max_size=16),
    ),
)


@fuzz_settings(examples=600)
@given(call=MODEL_SERVICE_CALLS)
def test_grpc_model_service_and_unknown_methods(fuzzer: Fuzzer, baseline: Baseline, call: tuple[str, bytes]) -> None:
    """Bytes and well-formed requests to ModelService (admin methods never for a model of the stack), and calls
    to methods that do not exist, on both listeners."""
    method, data = call
    assume(not (method in ADMIN_METHODS and admin_call_changes_models(method, data)))
    for listener in fuzzer.channels:
        fuzzer.call(listener, method, data)


@fuzz_settings(examples=400)
@given(messages=st.lists(stream_messages(), min_size=1, max_size=4))
def test_grpc_stream_predict(fuzzer: Fuzzer, baseline: Baseline, messages: list[bytes]) -> None:
    """A stream of fuzzed messages: one answer per message, each with an allowed status, and the stream goes on."""
    for listener in fuzzer.channels:
        fuzzer.stream(listener, messages)


# --- REST --------------------------------------------------------------------------------------------------------


@fuzz_settings(examples=800)
@given(path=PREDICT_PATHS, body=json_values)
def test_rest_predict_random_json(fuzzer: Fuzzer, baseline: Baseline, path: str, body: Any) -> None:
    fuzzer.http("POST", path, json.dumps(body).encode())


@fuzz_settings(examples=1500)
@given(path=PREDICT_PATHS, body=mutated_predict_bodies())
def test_rest_predict_mutated_bodies(fuzzer: Fuzzer, baseline: Baseline, path: str, body: Any) -> None:
    """The valid predict body with fields of the wrong type, missing, huge, as strings, deeply nested."""
    fuzzer.http("POST", path, json.dumps(body).encode())


@fuzz_settings(examples=1000)
@given(
    method=HTTP_METHODS,
    path=REST_PATHS,
    body=st.one_of(
        st.none(),
        st.binary(max_size=256),
        mutated([json.dumps(VALID_JSON_BODY).encode(), b'[{"model": "mnist", "inputs": {}}]', b"{}"]),
    ),
)
def test_rest_random_paths_and_bytes(
    fuzzer: Fuzzer, baseline: Baseline, method: str, path: str, body: bytes | None
) -> None:
    assume(not changes_models(path, body))
    fuzzer.http(method, path, body)


@st.composite
def stream_bodies(draw: st.DrawFn) -> Any:
    """JSON arrays of predict bodies (valid, mutated, or any JSON) with ids and models, or any JSON at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(json_values)
    messages = []
    for i in range(draw(st.integers(0, 4))):
        message = draw(st.one_of(mutated_predict_bodies(), st.just(VALID_JSON_BODY), json_values))
        if isinstance(message, dict):
            message = {**message, "id": str(i)}
            if i == 0 or draw(st.booleans()):
                message.setdefault("model", draw(st.one_of(st.just("mnist"), MODEL_NAMES)))
        messages.append(message)
    return messages


@fuzz_settings(examples=500)
@given(body=stream_bodies())
def test_rest_stream_predict(fuzzer: Fuzzer, baseline: Baseline, body: Any) -> None:
    fuzzer.http("POST", "/v1/models:streamPredict", json.dumps(body).encode())


# --- Known bugs ----------------------------------------------------------------------------------------------------


def _predict_bytes(tensor: Tensor, version: str = "") -> bytes:
    request = PredictRequest(model="mnist", version=version)
    request.inputs["keras_tensor"].CopyFrom(tensor)
    return request.SerializeToString()


# Inputs this fuzzing once turned into INTERNAL errors (fixed): (gRPC method, request bytes).
# "²".isdigit() is true but int() refuses it; numpy refuses more than 64 dimensions, and an empty shape whose other
# dimensions multiply past int64.
FOUND_BY_FUZZING: dict[str, tuple[str, bytes]] = {
    "unicode digit version (Predict)": (PREDICT, _predict_bytes(codec.encode(IMAGE), version="\u00b2")),
    "unicode digit version (GetModelStatus)": (
        f"{MODEL_SERVICE}/GetModelStatus",
        GetModelStatusRequest(model="mnist", version="\u00b2").SerializeToString(),
    ),
    "more than 64 dimensions": (
        PREDICT,
        _predict_bytes(Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[1] * 65, float_values=[0.5])),
    ),
    "empty shape overflowing int64": (
        PREDICT,
        _predict_bytes(Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[2**62, 2**62, 0])),
    ),
}


@pytest.mark.parametrize("case", sorted(FOUND_BY_FUZZING))
def test_inputs_found_by_fuzzing(stack: ServerProcess, case: str) -> None:
    method, data = FOUND_BY_FUZZING[case]
    with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(method)(data, timeout=GRPC_TIMEOUT_S)
    # "²" is not a version number, so it names a label, which mnist does not have.
    expected = Code.NOT_FOUND if "version" in case else Code.INVALID_ARGUMENT
    assert raised.value.code() is expected, raised.value.details()


# --- After the fuzzing -------------------------------------------------------------------------------------------


def test_stack_survives_fuzzing_without_memory_growth(fuzzer: Fuzzer, baseline: Baseline) -> None:
    """Runs last: health, a correct prediction on both listeners, every process alive, no unknown traceback in the
    log, and the server's RSS within RSS_GROWTH_LIMIT_BYTES of the baseline taken after the warm-up."""
    fuzzer.assert_healthy("fuzzing")
    with grpc.insecure_channel(fuzzer.stack.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        service = health_pb2.HealthCheckRequest(service="tensorgate.v1.InferenceService")
        assert health.Check(service, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    for target in (fuzzer.stack.target, fuzzer.stack.gateway_target):
        with TensorgateClient(target) as client:
            probabilities = client.predict("mnist", np.repeat(IMAGE, 3, axis=0))
        assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    unaccounted = fuzzer.unexpected_errors()  # logged, but never answered as INTERNAL: as bad
    assert unaccounted == [], f"unexpected errors in the server log after fuzzing: {unaccounted}"
    fuzzed = fuzzer.requests - baseline.requests
    grown = rss_bytes(fuzzer.server_pid) - baseline.rss_bytes
    print(
        f"fuzz: {baseline.requests} warm-up and {fuzzed} fuzzed requests; server RSS {baseline.rss_bytes >> 20} MiB "
        f"after warm-up, grew {grown / (1 << 20):+.1f} MiB; "
        f"outcomes: {dict(sorted(fuzzer.outcomes.items()))}"
    )
    if fuzzed < MIN_REQUESTS_FOR_MEMORY_CHECK:
        pytest.skip(f"only {fuzzed} fuzzed requests (run the whole module): too few to judge memory growth")
    assert grown < RSS_GROWTH_LIMIT_BYTES, f"server RSS grew {grown >> 20} MiB over {fuzzed} fuzzed requests"
