"""Regenerate (or check) everything derived from the protos.

    python protos/generate.py          # rewrite the generated files
    python protos/generate.py --check  # exit 1 when they differ from the protos

Outputs: the Python messages, typing stubs and gRPC stubs next to each
``protos/tensorgate/v1/*.proto`` (importable as ``tensorgate.v1``); the
descriptor set Envoy's gRPC-JSON transcoder reads, ``gateway/tensorgate.binpb``;
the OpenAPI 3 document ``gateway/openapi.json`` (grpc-gateway's
protoc-gen-swagger from the ``google.api.http`` rules, converted by
swagger2openapi, then completed with the error responses and the streaming
body that the generator cannot express); and the Swagger UI assets under
``gateway/docs/``; the Go and TypeScript clients under ``clients/go/tensorgatev1/`` and
``clients/ts/src/gen/`` (``buf generate`` with the local plugins of ``buf.gen.yaml``).
Generators are pinned (grpcio-tools in pyproject.toml, and an older one for the Python stubs in a cached
virtual environment of its own: PYTHON_STUB_TOOLS, see python_stub_protoc; npm packages in
package-lock.json, protoc-gen-swagger from Debian's golang-grpc-gateway,
protoc-gen-go and protoc-gen-go-grpc from Debian) so that output is reproducible.

The vendored protocols of other model servers (``protos/tensorgate/compat/``:
KServe v2 and TF Serving, served beside tensorgate.v1) get Python stubs only;
the KServe v2 service also goes into the descriptor set, for its REST paths.
"""

from __future__ import annotations

import argparse
import copy
import filecmp
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from tensorgate.server.models.model_config import MAX_LABEL_LENGTH
from tensorgate.server.models.repository import MAX_VERSION_DIGITS, MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
PACKAGE_DIR = PROTO_ROOT / "tensorgate" / "v1"
DESCRIPTOR_SET = ROOT / "gateway" / "tensorgate.binpb"
OPENAPI = ROOT / "gateway" / "openapi.json"
DOCS_DIR = ROOT / "gateway" / "docs"
SWAGGER_UI_DIR = ROOT / "node_modules" / "swagger-ui-dist"
SWAGGER_UI_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")
SWAGGER2OPENAPI = ROOT / "node_modules" / ".bin" / "swagger2openapi"
BUF_GEN_TEMPLATE = ROOT / "buf.gen.yaml"
GO_CLIENT_DIR = ROOT / "clients" / "go" / "tensorgatev1"
TS_CLIENT_DIR = ROOT / "clients" / "ts" / "src" / "gen"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# The generator of the Python stubs (see python_stub_protoc): its protobuf (5.29) and grpcio (1.71) are the oldest the
# client accepts, in pyproject.toml's dependencies.
PYTHON_STUB_TOOLS = "grpcio-tools==1.71.0"
STUB_TOOLS_DIR = Path.home() / ".cache" / "tensorgate" / PYTHON_STUB_TOOLS.replace("==", "-")
# Types the server packs into google.rpc.Status details: the transcoder must know them to render error bodies.
STATUS_DETAIL_PROTOS = ("google/rpc/error_details.proto",)
COMPAT_DIR = PROTO_ROOT / "tensorgate" / "compat"
# Transcoded to REST by Envoy (its /v2 routes), so in the descriptor set.
KSERVE_V2_PROTOS = ("tensorgate/compat/kserve_v2/grpc_service.proto",)
# TensorFlow's protos that the vendored TF Serving ones import (with their own imports), as the installed TensorFlow
# registers them: the generated code imports these very modules.
TENSORFLOW_PROTO_MODULES = (
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.protobuf.meta_graph_pb2",
    "tensorflow.core.protobuf.error_codes_pb2",
)


def _protoc_include() -> str:
    """Folder holding google/protobuf/*.proto as shipped with grpcio-tools."""
    return str(Path(protoc.__file__).parent / "_proto")


def python_stub_protoc() -> list[str]:
    """The protoc command that writes the Python stubs: PYTHON_STUB_TOOLS' grpcio-tools, in a virtual environment of
    its own under STUB_TOOLS_DIR (made with pip on first use, then reused).

    Generated Python code demands a protobuf runtime at least as new as the protoc that wrote it, and gRPC stubs a
    grpcio at least as new as their grpcio-tools: stubs from an older generator run on every newer runtime, so the
    client installs beside packages that pin older protobufs (tritonclient[grpc]: protobuf < 7). The server's own
    grpcio-tools (the dev extra) generates the rest: descriptor set, OpenAPI, Go and TypeScript.
    """
    python = STUB_TOOLS_DIR / "bin" / "python"
    if not python.exists():
        partial = STUB_TOOLS_DIR.with_name(f".{STUB_TOOLS_DIR.name}.{os.getpid()}")
        subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True)
        pip = [str(partial / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, PYTHON_STUB_TOOLS], check=True)
        partial.replace(STUB_TOOLS_DIR)  # complete or absent: an interrupted install is never taken for one
    return [str(python), "-m", "grpc_tools.protoc"]


def run_stub_protoc(args: list[str]) -> None:
    """protoc of PYTHON_STUB_TOOLS with ``args`` (its own google/protobuf includes added last)."""
    command = python_stub_protoc()
    include = subprocess.run(
        [command[0], "-c", "import grpc_tools, pathlib; print(pathlib.Path(grpc_tools.__file__).parent / '_proto')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if subprocess.run([*command, *args, f"-I{include}"]).returncode != 0:
        raise SystemExit("protoc failed on the Python stubs")


def generate(out_dir: Path) -> list[Path]:
    """Write every generated file under ``out_dir`` (mirroring ROOT); return their paths."""
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PACKAGE_DIR.glob("*.proto"))
    descriptor = out_dir / DESCRIPTOR_SET.relative_to(ROOT)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    python_out = out_dir / "protos"
    python_out.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{PROTO_ROOT}", f"-I{THIRD_PARTY}", f"-I{_protoc_include()}"]
    python = [f"--python_out={python_out}", f"--pyi_out={python_out}", f"--grpc_python_out={python_out}"]
    run_stub_protoc([f"-I{PROTO_ROOT}", f"-I{THIRD_PARTY}", *python, *protos])
    descriptor_args = ["--include_imports", f"--descriptor_set_out={descriptor}"]
    if protoc.main(["protoc", *includes, *descriptor_args, *protos, *KSERVE_V2_PROTOS, *STATUS_DETAIL_PROTOS]) != 0:
        raise SystemExit("protoc failed")
    generated = [descriptor, *generate_openapi(out_dir, includes, protos), *generate_clients(out_dir)]
    for proto in protos:
        stem = proto.removesuffix(".proto")
        generated += [python_out / f"{stem}{suffix}" for suffix in GENERATED_SUFFIXES]
    generated += generate_compat(out_dir, python)
    return [p for p in generated if p.exists()]


def generate_compat(out_dir: Path, python: list[str]) -> list[Path]:
    """Python stubs of the vendored protocols under protos/tensorgate/compat/; return their paths.

    protoc reads TensorFlow's own protos (which TF Serving's import) as descriptors of the installed TensorFlow,
    since TensorFlow does not ship their source.
    """
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in COMPAT_DIR.rglob("*.proto"))
    tensorflow = out_dir / "tensorflow-protos.binpb"
    tensorflow.write_bytes(tensorflow_descriptors().SerializeToString())
    run_stub_protoc([f"-I{PROTO_ROOT}", f"-I{THIRD_PARTY}", f"--descriptor_set_in={tensorflow}", *python, *protos])
    python_out = out_dir / "protos"
    return [python_out / f"{p.removesuffix('.proto')}{suffix}" for p in protos for suffix in GENERATED_SUFFIXES]


def tensorflow_descriptors() -> descriptor_pb2.FileDescriptorSet:
    """The files of TENSORFLOW_PROTO_MODULES and their imports (but google/protobuf's, which protoc has)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # importing TensorFlow's modules loads TensorFlow
    files: dict[str, bytes] = {}

    def add(file: Any) -> None:
        if file.name not in files and not file.name.startswith("google/protobuf/"):
            for dependency in file.dependencies:
                add(dependency)
            files[file.name] = file.serialized_pb

    for module in TENSORFLOW_PROTO_MODULES:
        add(importlib.import_module(module).DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(
        file=[descriptor_pb2.FileDescriptorProto.FromString(f) for f in files.values()]
    )


def generate_openapi(out_dir: Path, includes: list[str], protos: list[str]) -> list[Path]:
    """Write gateway/openapi.json and the Swagger UI assets under ``out_dir``."""
    plugin = shutil.which("protoc-gen-swagger")
    if plugin is None:
        raise SystemExit("protoc-gen-swagger not found: apt-get install golang-grpc-gateway")
    if not SWAGGER2OPENAPI.exists():
        raise SystemExit("swagger2openapi not found: npm ci")
    swagger_dir = out_dir / "swagger"
    swagger_dir.mkdir()
    options = "allow_merge=true,merge_file_name=tensorgate,json_names_for_fields=true"
    args = [f"--plugin=protoc-gen-swagger={plugin}", f"--swagger_out={options}:{swagger_dir}", *protos]
    if protoc.main(["protoc", *includes, *args]) != 0:
        raise SystemExit("protoc-gen-swagger failed")
    converted = swagger_dir / "openapi3.json"
    subprocess.run(
        [str(SWAGGER2OPENAPI), str(swagger_dir / "tensorgate.swagger.json"), "--outfile", str(converted)], check=True
    )
    openapi = out_dir / OPENAPI.relative_to(ROOT)
    openapi.write_text(json.dumps(complete_openapi(json.loads(converted.read_text())), indent=2) + "\n")
    docs = out_dir / DOCS_DIR.relative_to(ROOT)
    docs.mkdir(parents=True, exist_ok=True)
    for asset in SWAGGER_UI_ASSETS:
        shutil.copyfile(SWAGGER_UI_DIR / asset, docs / asset)
    return [openapi, *(docs / asset for asset in SWAGGER_UI_ASSETS)]


def generate_clients(out_dir: Path) -> list[Path]:
    """Write the Go and TypeScript clients under ``out_dir`` with ``buf generate`` (plugins in buf.gen.yaml)."""
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if buf is None:
        raise SystemExit("buf not found: pip install -e '.[dev]' (buf-bin)")
    for plugin, package in (("protoc-gen-go", "protoc-gen-go"), ("protoc-gen-go-grpc", "protoc-gen-go-grpc")):
        if shutil.which(plugin) is None:
            raise SystemExit(f"{plugin} not found: apt-get install {package}")
    if not (ROOT / "node_modules" / ".bin" / "protoc-gen-es").exists():
        raise SystemExit("protoc-gen-es not found: npm ci")
    command = [buf, "generate", "--template", str(BUF_GEN_TEMPLATE), "--output", str(out_dir)]
    subprocess.run(command, cwd=ROOT, check=True)
    go_dir, ts_dir = (out_dir / d.relative_to(ROOT) for d in (GO_CLIENT_DIR, TS_CLIENT_DIR))
    return sorted([*go_dir.glob("*.pb.go"), *ts_dir.rglob("*_pb.ts")])


ERROR_RESPONSES = {
    "400": "INVALID_ARGUMENT: the request does not fit the model's signature or limits, or the JSON is malformed.",
    "404": "NOT_FOUND: unknown model or version (or an unknown path).",
    "429": "RESOURCE_EXHAUSTED: the model's queue is full; `details` holds a google.rpc.RetryInfo with the delay.",
    "503": "UNAVAILABLE: no version can serve (loading or failed: the message says why), or the server is stopping.",
    "504": "DEADLINE_EXCEEDED: the deadline (grpc-timeout header) passed before the model ran.",
}


def complete_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Add what protoc-gen-swagger leaves out: error responses, the server URL, the real shape of the streaming
    endpoint (a JSON array in, newline-delimited JSON out), what the server enforces, examples, and the security
    schemes."""
    spec["info"] = {
        "title": "tensorgate",
        "version": "v1",
        "description": "REST/JSON facade of the tensorgate gRPC API, transcoded by Envoy from the same protos.",
    }
    spec["openapi"] = "3.1.0"  # JSON Schema 2020-12: null and property names can be stated
    spec["servers"] = [{"url": "/"}]
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/rpcStatus"}}}}
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            responses.pop("default", None)
            for code, description in ERROR_RESPONSES.items():
                if code != "429" or path.endswith("predict") or path.endswith(":streamPredict"):
                    responses[code] = {"description": description, **error}
    stream = spec["paths"]["/v1/models:streamPredict"]["post"]
    item = {"$ref": "#/components/schemas/v1StreamPredictRequest"}
    stream["requestBody"] = {
        "required": True,
        "description": "A JSON array of requests; name the model in the first one.",
        "content": {"application/json": {"schema": {"type": "array", "items": item}}},
    }
    stream["responses"]["200"] = {
        "description": (
            "One JSON object per line, one per request, in request order, written as each is computed. "
            "A failed request is a line with `error` set. If the stream itself fails midway the status stays 200 "
            "and the body ends early: the ids without an answer must be retried."
        ),
        "content": {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/v1StreamPredictResponse"}}},
    }
    state_what_the_server_enforces(spec)
    add_security(spec)
    add_examples(spec, mnist_example_tensor())
    return spec


# What the server refuses, as JSON Schema (the rules live in the server: tensorgate.server.models).
VERSION_NUMBER = rf"[1-9][0-9]{{0,{MAX_VERSION_DIGITS - 1}}}"
LABEL = rf"[A-Za-z_.-][A-Za-z0-9_.-]{{0,{MAX_LABEL_LENGTH - 1}}}"  # a label in a URL: not a number, URL-safe
VERSION_OR_LABEL = f"^({VERSION_NUMBER}|{LABEL})$"
OPTIONAL_VERSION = f"^({VERSION_NUMBER}|{LABEL})?$"
FLOAT32_MAX = 3.4028234663852886e38
SCALAR_RULES: dict[str, dict[str, Any]] = {
    "float": {"minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
    "int32": {"minimum": -(2**31), "maximum": 2**31 - 1},
    "uint32": {"minimum": 0, "maximum": 2**32 - 1},
    "int64": {"pattern": "^-?[0-9]{1,18}$"},
    "uint64": {"pattern": "^[0-9]{1,19}$"},
    "byte": {"pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"},
}
AUTH_RESPONSES = {
    "401": "UNAUTHENTICATED: the server requires credentials (an API key or a JWT) and got none that are valid.",
    "403": "PERMISSION_DENIED: the credentials lack the method's scope (predict or admin) or the model.",
}


def constrain(schema: dict[str, Any]) -> None:
    """State the protobuf JSON mapping the transcoder applies, recursively: every scalar bounded to what its type
    holds; ``null`` accepted for every field (it means the default value) and dropped from lists; a single value
    where a list is expected read as a list of one; a field name is never empty; other unknown fields are ignored,
    so messages stay open."""
    properties = schema.get("properties", {})
    if properties:
        schema["propertyNames"] = {"minLength": 1}
    for name, field in properties.items():
        constrain(field)
        properties[name] = nullable(field)
    for nested in (schema.get("items"), schema.get("additionalProperties")):
        if isinstance(nested, dict):
            constrain(nested)
    schema.update(SCALAR_RULES.get(schema.get("format", ""), {}))


def nullable(field: dict[str, Any]) -> dict[str, Any]:
    """``field`` or ``null``; for a list of scalars, also a single scalar, and null items."""
    if "$ref" in field:
        return {"anyOf": [{"$ref": field.pop("$ref")}, {"type": "null"}], **field}
    items = field.get("items", {})
    if field["type"] == "array" and "type" in items:
        # JSON Schema applies each keyword to the types it is about (pattern to strings, minimum to numbers), so
        # the item's rules join the list's and hold for a single value.
        rules = {key: value for key, value in items.items() if key not in ("type", "description")}
        items["type"] = [items["type"], "null"]
        return {**rules, **field, "type": ["array", items["type"][0], "null"]}
    return {**field, "type": [field["type"], "null"]}


def require(message: dict[str, Any], *fields: str) -> None:
    """Make ``fields`` of ``message`` required, and so never ``null``."""
    message["required"] = list(fields)
    for name in fields:
        field = message["properties"][name]
        if "anyOf" in field:
            message["properties"][name] = {"$ref": field.pop("anyOf")[0]["$ref"], **field}
        else:
            field["type"] = [kind for kind in field["type"] if kind != "null"]


def state_what_the_server_enforces(spec: dict[str, Any]) -> None:
    """Patterns for model names, versions and labels; no field both in the path and in the body; required
    inputs; no unspecified data type; no negative dimension; bounded scalars."""
    schemas = spec["components"]["schemas"]
    for schema in schemas.values():
        constrain(schema)
    dtype = schemas["v1DataType"]
    dtype["enum"].remove("DATA_TYPE_UNSPECIFIED")
    dtype.pop("default")
    require(schemas["v1PredictRequest"], "inputs")
    schemas["v1PredictRequest"]["properties"]["inputs"]["minProperties"] = 1
    require(schemas["v1Tensor"], "dtype", "shape")
    shape = schemas["v1Tensor"]["properties"]["shape"]
    shape["pattern"] = shape["items"]["pattern"] = "^[0-9]{1,18}$"
    for name in ("v1PredictRequest", "v1StreamPredictRequest", "v1LoadModelRequest", "v1UnloadModelRequest"):
        schemas[name]["properties"]["version"]["pattern"] = OPTIONAL_VERSION
    schemas["v1ReloadModelRequest"]["properties"]["version"]["pattern"] = OPTIONAL_VERSION
    labels = schemas["v1SetModelLabelsRequest"]["properties"]["labels"]
    labels["additionalProperties"]["pattern"] = f"^{VERSION_NUMBER}$"
    labels["propertyNames"] = {"pattern": f"^{LABEL}$"}
    model_name = {"type": "string", "pattern": MODEL_NAME.pattern}
    for operations in spec["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "model":
                    parameter["schema"] = dict(model_name)
                elif parameter["name"] == "version":
                    pattern = VERSION_OR_LABEL if parameter["in"] == "path" else OPTIONAL_VERSION
                    parameter["schema"] = {"type": "string", "pattern": pattern}
            in_path = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            body = operation.get("requestBody")
            if body is not None and in_path:
                operation["requestBody"] = body_without(spec, body, in_path)
    spec["components"].pop("requestBodies", None)


def body_without(spec: dict[str, Any], body: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """The request body with the fields the path already binds left out: the transcoder refuses a body that
    repeats them with another value."""
    if "$ref" in body:
        body = spec["components"]["requestBodies"][body["$ref"].rsplit("/", 1)[1]]
    reference = body["content"]["application/json"]["schema"]["$ref"]
    message = copy.deepcopy(spec["components"]["schemas"][reference.rsplit("/", 1)[1]])
    for field in fields:
        message["properties"].pop(field, None)
    message["required"] = [f for f in message.get("required", []) if f not in fields]
    if not message["required"]:
        message.pop("required")
    return {"required": True, "content": {"application/json": {"schema": message}}}


def add_security(spec: dict[str, Any]) -> None:
    """The API key header and bearer tokens (API keys or JWTs), optional as a whole: a server without keys or JWTs
    takes calls without credentials."""
    spec["components"]["securitySchemes"] = {
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "An API key."},
        "bearer": {"type": "http", "scheme": "bearer", "description": "A JWT (or an API key) as a bearer token."},
    }
    spec["security"] = [{"apiKey": []}, {"bearer": []}, {}]
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/rpcStatus"}}}}
    for operations in spec["paths"].values():
        for operation in operations.values():
            for code, description in AUTH_RESPONSES.items():
                operation["responses"][code] = {"description": description, **error}


def mnist_example_tensor() -> dict[str, Any]:
    """The first MNIST test image (a 7) as the reference model's input, in [0, 1] as it was trained."""
    from tensorgate.clients.datasets import load_mnist

    image = load_mnist().x_test[0].astype("float64") / 255
    values = [round(float(v), 4) for v in image.ravel()]
    return {"dtype": "DATA_TYPE_FLOAT32", "shape": ["1", "28", "28"], "floatValues": values}


def add_examples(spec: dict[str, Any], image: dict[str, Any]) -> None:
    """A working example for every operation, on the reference model ``mnist`` (``tensorgate train``)."""
    inputs = {"keras_tensor": image}
    bodies = {
        "/v1/models/{model}:predict": {"inputs": inputs},
        "/v1/models/{model}/versions/{version}:predict": {"inputs": inputs},
        "/v1/models:streamPredict": [{"id": "7", "model": "mnist", "inputs": inputs}],
        "/v1/models/{model}:load": {"version": "1"},
        "/v1/models/{model}:unload": {"version": "1"},
        "/v1/models/{model}:reload": {"version": "1"},
        "/v1/models/{model}:setLabels": {"labels": {"stable": "1"}},
    }
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                parameter["example"] = {"model": "mnist", "version": "1"}[parameter["name"]]
            if path in bodies:
                operation["requestBody"]["content"]["application/json"]["example"] = bodies[path]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        fresh = generate(tmp_root)
        expected = {ROOT / p.relative_to(tmp_root): p for p in fresh}
        committed = {p for p in PACKAGE_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
        committed |= {p for p in COMPAT_DIR.rglob("*") if p.name.endswith(GENERATED_SUFFIXES)}
        committed |= {DESCRIPTOR_SET, OPENAPI, *(DOCS_DIR / asset for asset in SWAGGER_UI_ASSETS)}
        committed |= {*GO_CLIENT_DIR.glob("*.pb.go"), *TS_CLIENT_DIR.rglob("*_pb.ts")}
        if args.check:
            stale = sorted(
                str(path.relative_to(ROOT))
                for path in committed | expected.keys()
                if path not in expected or not path.exists() or not filecmp.cmp(path, expected[path], shallow=False)
            )
            if stale:
                print("generated files differ from the protos; run `python protos/generate.py`:", *stale, sep="\n  ")
                return 1
            print("generated files are up to date")
            return 0
        for path in committed - expected.keys():
            path.unlink()
        for target, source in expected.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
