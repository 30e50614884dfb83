"""The protos: buf lint, generated code in sync, a comment on every element, an HTTP rule on every RPC."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_buf_lint_passes() -> None:
    buf = shutil.which("buf", path=str(BIN)) or shutil.which("buf")
    assert buf, "buf is installed by the dev extra (buf-bin)"
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([buf, "build", "-o", "/dev/null"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _version_key(image: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in image.stem.rsplit("-", 1)[1].split("."))


def test_no_breaking_change_against_the_last_released_contract() -> None:
    """`buf breaking` (FILE rules) against the newest image in protos/released/: a change that would break
    existing callers (a removed RPC or field, a renumbered field, a changed type) fails here."""
    buf = shutil.which("buf", path=str(BIN)) or shutil.which("buf")
    assert buf, "buf is installed by the dev extra (buf-bin)"
    released = max((ROOT / "protos" / "released").glob("tensorgate-v1-*.binpb"), key=_version_key)
    result = subprocess.run(
        [buf, "breaking", "protos", "--against", str(released)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, f"breaking change against {released.name}:\n{result.stdout}{result.stderr}"


def test_generated_code_matches_the_protos() -> None:
    result = subprocess.run([sys.executable, "protos/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _descriptors(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "set.binpb"
    # tensorgate's own contract; the vendored protocols under protos/tensorgate/compat keep their upstream style.
    own = (ROOT / "protos" / "tensorgate" / "v1").rglob("*.proto")
    protos = sorted(p.relative_to(ROOT / "protos").as_posix() for p in own)
    args = [
        "protoc",
        f"-I{ROOT / 'protos'}",
        f"-I{ROOT / 'third_party' / 'googleapis'}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *protos,
    ]
    assert protoc.main(args) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_every_element_has_a_comment(tmp_path: Path) -> None:
    # Source-location paths: 4 = message_type, 2 = field, 5 = enum_type, 2 = value, 6 = service, 2 = method.
    missing = []
    for file in _descriptors(tmp_path).file:
        commented = {tuple(loc.path) for loc in file.source_code_info.location if loc.leading_comments.strip()}
        for m, message in enumerate(file.message_type):
            if (4, m) not in commented:
                missing.append(message.name)
            missing += [
                f"{message.name}.{f.name}" for i, f in enumerate(message.field) if (4, m, 2, i) not in commented
            ]
        for e, enum in enumerate(file.enum_type):
            if (5, e) not in commented:
                missing.append(enum.name)
            missing += [f"{enum.name}.{v.name}" for i, v in enumerate(enum.value) if (5, e, 2, i) not in commented]
        for s, service in enumerate(file.service):
            if (6, s) not in commented:
                missing.append(service.name)
            missing += [
                f"{service.name}.{r.name}" for i, r in enumerate(service.method) if (6, s, 2, i) not in commented
            ]
    assert missing == []


def test_every_rpc_has_a_resource_oriented_http_rule(tmp_path: Path) -> None:
    rules = {}
    for file in _descriptors(tmp_path).file:
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                pattern = getattr(rule, rule.WhichOneof("pattern"))
                rules[f"{service.name}.{method.name}"] = pattern
    assert rules == {
        "InferenceService.Predict": "/v1/models/{model}:predict",
        "InferenceService.StreamPredict": "/v1/models:streamPredict",
        "ModelService.ListModels": "/v1/models",
        "ModelService.GetModelStatus": "/v1/models/{model}",
        "ModelService.GetModelMetadata": "/v1/models/{model}/metadata",
        "ModelService.LoadModel": "/v1/models/{model}:load",
        "ModelService.UnloadModel": "/v1/models/{model}:unload",
        "ModelService.ReloadModel": "/v1/models/{model}:reload",
        "ModelService.SetModelLabels": "/v1/models/{model}:setLabels",
    }
