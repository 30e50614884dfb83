"""Regenerate (or check) everything derived from the protos.

    python protos/generate.py          # rewrite the generated files
    python protos/generate.py --check  # exit 1 when they differ from the protos

Outputs: the Python messages, typing stubs and gRPC stubs next to each
``protos/tensorgate/v1/*.proto`` (importable as ``tensorgate.v1``), and the
descriptor set Envoy's gRPC-JSON transcoder reads, ``gateway/tensorgate.binpb``.
The generator is the pinned ``grpcio-tools`` so that output is reproducible.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
PACKAGE_DIR = PROTO_ROOT / "tensorgate" / "v1"
DESCRIPTOR_SET = ROOT / "gateway" / "tensorgate.binpb"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# Types the server packs into google.rpc.Status details: the transcoder must know them to render error bodies.
STATUS_DETAIL_PROTOS = ("google/rpc/error_details.proto",)


def _protoc_include() -> str:
    """Folder holding google/protobuf/*.proto as shipped with grpcio-tools."""
    return str(Path(protoc.__file__).parent / "_proto")


def generate(out_dir: Path) -> list[Path]:
    """Write every generated file under ``out_dir`` (mirroring ROOT); return their paths."""
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PACKAGE_DIR.glob("*.proto"))
    descriptor = out_dir / DESCRIPTOR_SET.relative_to(ROOT)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    python_out = out_dir / "protos"
    python_out.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{PROTO_ROOT}", f"-I{THIRD_PARTY}", f"-I{_protoc_include()}"]
    python = [f"--python_out={python_out}", f"--pyi_out={python_out}", f"--grpc_python_out={python_out}"]
    descriptor_args = ["--include_imports", f"--descriptor_set_out={descriptor}"]
    for args in ([*python, *protos], [*descriptor_args, *protos, *STATUS_DETAIL_PROTOS]):
        if protoc.main(["protoc", *includes, *args]) != 0:
            raise SystemExit("protoc failed")
    generated = [descriptor]
    for proto in protos:
        stem = proto.removesuffix(".proto")
        generated += [python_out / f"{stem}{suffix}" for suffix in GENERATED_SUFFIXES]
    return [p for p in generated if p.exists()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        fresh = generate(tmp_root)
        expected = {ROOT / p.relative_to(tmp_root): p for p in fresh}
        committed = {p for p in PACKAGE_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
        committed.add(DESCRIPTOR_SET)
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
            shutil.copyfile(source, target)
            print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
