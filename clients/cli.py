"""The ``tensorgate`` command: serve, train, predict, classify, models."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import grpc
import numpy as np
from tqdm import tqdm

from tensorgate.clients.client import ClientTls, TensorgateClient
from tensorgate.clients.datasets import DEFAULT_CACHE_DIR, Examples, load_examples, to_model_input
from tensorgate.v1 import codec
from tensorgate.v1.model_service_pb2 import GetModelMetadataResponse, Model, ModelVersionState

if TYPE_CHECKING:  # the client commands never import the server's packages
    from tensorgate.server.config import ServerConfig

DEFAULT_TARGET = "127.0.0.1:8500"
REFERENCE_MODEL = "mnist"


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"server address (default {DEFAULT_TARGET})")
    parser.add_argument("--api-key", help="API key, when the server requires one (sent as x-api-key)")
    parser.add_argument("--token", help="JWT from your identity provider (sent as authorization: Bearer)")
    parser.add_argument("--ca-file", type=Path, help="CA of the server's certificate: connect over TLS")
    parser.add_argument("--cert-file", type=Path, help="client certificate, for an mTLS port")
    parser.add_argument("--key-file", type=Path, help="private key of --cert-file")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")


def _help(description: str | None) -> str | None:
    """A field's description as argparse help text (which formats it with %: "95%" must be "95%%")."""
    return None if description is None else description.replace("%", "%%")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field (``--batching-max-batch-size`` for nested ones), documented by the field."""
    from pydantic import BaseModel

    from tensorgate.server.config import ServerConfig

    for name, field in ServerConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub_name, sub_field in annotation.model_fields.items():
                flag = f"--{name}-{sub_name}".replace("_", "-")
                parser.add_argument(flag, dest=f"{name}.{sub_name}", default=None, help=_help(sub_field.description))
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=_help(field.description))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC model server")
    serve.add_argument("--config", type=Path, help="TOML configuration file (flags > TENSORGATE_* env > file)")
    serve.add_argument(
        "--train-if-empty",
        action="store_true",
        help=f"train the reference MNIST model into <repository>/{REFERENCE_MODEL} when the repository has no model",
    )
    serve.add_argument(
        "--worker-index", type=int, help="set by the supervisor on the worker processes it starts (--workers)"
    )
    _add_config_flags(serve)

    envoy_config = commands.add_parser(
        "envoy-config", help="print the Envoy configuration `serve` would run, for an Envoy deployed on its own"
    )
    envoy_config.add_argument("--config", type=Path, help="TOML configuration file (flags > TENSORGATE_* env > file)")
    envoy_config.add_argument(
        "--assets-dir", type=Path, help="where Envoy finds tensorgate.binpb, openapi.json and docs/ (a container path)"
    )
    _add_config_flags(envoy_config)

    train = commands.add_parser("train", help="train the reference MNIST model and export the next version")
    train.add_argument("--repository", type=Path, default=Path("models"), help="model repository root")
    train.add_argument("--model", default=REFERENCE_MODEL, help="model name (directory in the repository)")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the MNIST wheel is kept")

    predict = commands.add_parser("predict", help="classify one image (PNG, JPEG) or .npy file")
    predict.add_argument("file", type=Path)
    predict.add_argument("--model", default=REFERENCE_MODEL)
    predict.add_argument("--version", default="")
    _add_target(predict)

    classify = commands.add_parser("classify", help="bulk-classify over StreamPredict")
    classify.add_argument("source", help="a directory of images, an .npy/.npz file, or 'mnist-test'")
    classify.add_argument("--output", type=Path, help="results file, .csv or .jsonl (default: stdout as CSV)")
    classify.add_argument("--model", default=REFERENCE_MODEL)
    classify.add_argument("--version", default="")
    classify.add_argument("--batch-size", type=int, default=256, help="examples per stream message")
    classify.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    _add_target(classify)

    keys = commands.add_parser("keys", help="manage the API key file (hashes and scopes; keys are shown once)")
    keys.add_argument("action", choices=["add", "revoke", "list"])
    keys.add_argument("name", nargs="?", help="key name (letters, digits, - and _)")
    keys.add_argument("--file", type=Path, required=True, help="the server's --api-keys-file")
    keys.add_argument("--scopes", default="predict", help="comma-separated: predict, admin (default predict)")
    keys.add_argument("--models", default="", help="comma-separated models the key may use (default: all)")

    certs = commands.add_parser("certs", help="create a development CA and server, gateway and client certificates")
    certs.add_argument("--out", type=Path, default=Path("certs"), help="directory for the PEM files (default certs/)")
    certs.add_argument(
        "--hosts", default="localhost,127.0.0.1", help="comma-separated names and addresses of the certificates"
    )
    certs.add_argument("--days", type=int, default=365)

    models = commands.add_parser("models", help="list models, or show one model's status and signature")
    models.add_argument("model", nargs="?")
    _add_target(models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ logs out of the JSON log
    args = build_parser().parse_args(argv)
    try:
        return int(_COMMANDS[args.command](args) or 0)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# Arguments that are not ServerConfig fields.
NOT_CONFIG = ("command", "config", "train_if_empty", "assets_dir", "worker_index")


def _load_config(args: argparse.Namespace) -> ServerConfig:
    from tensorgate.server.config import load_config

    flags: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is not None and dest not in NOT_CONFIG:
            table, _, name = dest.rpartition(".")
            (flags.setdefault(table, {}) if table else flags)[name] = value
    return load_config(args.config, flags)


def _envoy_config(args: argparse.Namespace) -> int:
    from tensorgate.gateway.envoy import render_envoy_config

    print(render_envoy_config(_load_config(args), args.assets_dir), end="")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tensorgate.server.observability.json_logging import setup_logging

    config = _load_config(args)
    setup_logging(config.log_level, {} if args.worker_index is None else {"worker": args.worker_index})
    repository = config.model_repository
    if args.train_if_empty and not (repository.is_dir() and any(p.is_dir() for p in repository.iterdir())):
        from tensorgate.server.reference.training import train_mnist

        train_mnist(repository, REFERENCE_MODEL)
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} does not exist (use --train-if-empty to create one)")
    # The supervisor itself never imports TensorFlow: the server children do.
    if args.worker_index is None and (config.gateway or config.workers > 1):
        from tensorgate.gateway.supervisor import supervise

        return supervise(config, argv_of_serve(args))
    from tensorgate.server.app import run

    run(config)
    return 0


def argv_of_serve(args: argparse.Namespace) -> list[str]:
    """The serve flags given on the command line, to start the gRPC server child with the same settings."""
    argv = ["--config", str(args.config)] if args.config else []
    for dest, value in vars(args).items():
        if value is not None and dest not in NOT_CONFIG:
            argv += [f"--{dest.replace('.', '-').replace('_', '-')}", str(value)]
    return argv


def _train(args: argparse.Namespace) -> int:
    import logging

    from tensorgate.server.reference.training import train_mnist

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train_mnist(args.repository, args.model, epochs=args.epochs, seed=args.seed, cache_dir=args.cache_dir)
    print(f"test accuracy: {result.test_accuracy:.4f}")
    print(f"exported {args.model} version {result.version} to {result.path} ({result.train_seconds:.1f} s training)")
    return 0


def _client(args: argparse.Namespace) -> TensorgateClient:
    tls = ClientTls(args.ca_file, args.cert_file, args.key_file) if args.ca_file else None
    return TensorgateClient(args.target, timeout_s=args.timeout, api_key=args.api_key, token=args.token, tls=tls)


def _model_input(client: TensorgateClient, model: str, version: str) -> tuple[GetModelMetadataResponse, str, np.dtype]:
    metadata = client.model_metadata(model, version)
    if len(metadata.inputs) != 1:
        raise ValueError(f"model {model!r} takes {len(metadata.inputs)} inputs; predict and classify need one")
    spec = metadata.inputs[0]
    return metadata, spec.name, codec.numpy_dtype(spec.dtype)


def _as_batch(x: np.ndarray, rank: int | None) -> np.ndarray:
    """Add the batch axis to a single example (an image, or an .npy holding one example)."""
    return x[np.newaxis] if rank is not None and x.ndim == rank - 1 else x


def _predict(args: argparse.Namespace) -> int:
    examples = load_examples(args.file)
    with _client(args) as client:
        metadata, input_name, dtype = _model_input(client, args.model, args.version)
        spec = metadata.inputs[0]
        x = _as_batch(to_model_input(examples.x, dtype), None if spec.unknown_rank else len(spec.shape))
        outputs = client.predict_tensors(args.model, {input_name: x}, args.version)
    for name, value in outputs.items():
        if value.ndim == 2 and value.dtype.kind == "f":
            for row, probabilities in enumerate(value):
                print(f"{name}[{row}]: class {int(probabilities.argmax())}")
                print("  probabilities: " + " ".join(f"{i}:{p:.4f}" for i, p in enumerate(probabilities)))
        else:
            print(f"{name}: {value.tolist()}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    examples = load_examples(args.source, cache_dir=args.cache_dir)
    started = time.monotonic()
    with _client(args) as client:
        _, input_name, dtype = _model_input(client, args.model, args.version)
        x = to_model_input(examples.x, dtype)
        batches = ({input_name: x[i : i + args.batch_size]} for i in range(0, len(x), args.batch_size))
        results = client.stream_predict_batches(args.model, batches, args.version)
        out: TextIO = args.output.open("w", newline="") if args.output else sys.stdout
        try:
            correct = _write_results(results, examples, out, args.output, len(x))
        finally:
            if args.output:
                out.close()
    seconds = time.monotonic() - started
    summary = f"classified {len(x)} examples in {seconds:.1f} s ({len(x) / seconds:.0f}/s)"
    if examples.labels is not None:
        summary += f"; accuracy {correct / len(x):.4f}"
    print(summary, file=sys.stderr)
    return 0


def _write_results(
    results: Iterator[dict[str, np.ndarray]], examples: Examples, out: TextIO, path: Path | None, total: int
) -> int:
    """Write one row per example; return how many match their label."""
    jsonl = path is not None and path.suffix == ".jsonl"
    fields = ["name", "class", "probability"] + (["label"] if examples.labels is not None else [])
    writer = None if jsonl else csv.writer(out)
    if writer:
        writer.writerow(fields)
    correct = index = 0
    with tqdm(total=total, unit="ex", file=sys.stderr, disable=not sys.stderr.isatty()) as progress:
        for outputs in results:
            if len(outputs) != 1:
                raise ValueError(f"classify needs a model with one output, got {sorted(outputs)}")
            probabilities = next(iter(outputs.values()))
            classes = probabilities.argmax(axis=1)
            for row, cls in enumerate(classes):
                values: list[Any] = [examples.names[index], int(cls), round(float(probabilities[row, cls]), 6)]
                if examples.labels is not None:
                    label = int(examples.labels[index])
                    values.append(label)
                    correct += int(cls == label)
                if writer:
                    writer.writerow(values)
                else:
                    out.write(json.dumps(dict(zip(fields, values, strict=True))) + "\n")
                index += 1
            progress.update(len(classes))
    return correct


def _state_name(state: int) -> str:
    return ModelVersionState.Name(state).removeprefix("MODEL_VERSION_STATE_").lower()


def _print_model(model: Model) -> None:
    print(model.name)
    for version in model.versions:
        line = f"  version {version.version}: {_state_name(version.state)}"
        line += f" on {version.device}" if version.device else ""
        line += f" with {version.runtime}" if version.runtime else ""
        line += f" ({version.error})" if version.error else ""
        print(line)


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.model is None:
            for model in client.list_models():
                _print_model(model)
            return 0
        _print_model(client.model_status(args.model))
        metadata = client.model_metadata(args.model)
    print(f"  signature {metadata.signature_name!r} of version {metadata.version}:")
    for kind, specs in (("input", metadata.inputs), ("output", metadata.outputs)):
        for spec in specs:
            shape = "any rank" if spec.unknown_rank else list(spec.shape)
            print(f"    {kind} {spec.name}: {codec.dtype_name(spec.dtype)} {shape}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from tensorgate.server.security.auth import hash_key, new_key, parse_key_file, write_key_file
    from tensorgate.server.security.principal import Principal

    keys = parse_key_file(args.file.read_text()) if args.file.exists() else {}
    if args.action == "list":
        for principal in sorted(keys.values(), key=lambda p: p.name):
            print(f"{principal.name}: {', '.join(sorted(principal.scopes))}")
        return 0
    if not args.name or not args.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError("a key name of letters, digits, - and _ is required")
    keys = {digest: p for digest, p in keys.items() if p.name != args.name}
    if args.action == "add":
        key = new_key()
        models = frozenset(m.strip() for m in args.models.split(",") if m.strip())
        keys[hash_key(key)] = Principal(args.name, frozenset(s.strip() for s in args.scopes.split(",")), models)
        if not keys[hash_key(key)].scopes <= {"predict", "admin"}:
            raise ValueError(f"scopes must be among predict, admin; got {args.scopes}")
        write_key_file(args.file, keys)
        print(key)  # shown once: only its hash is stored
    else:
        write_key_file(args.file, keys)
    return 0


def _certs(args: argparse.Namespace) -> int:
    from tensorgate.server.security.certs import create_dev_pki

    pki = create_dev_pki(args.out, [h.strip() for h in args.hosts.split(",") if h.strip()], args.days)
    print(f"CA {pki.ca}")
    for name, pair in (("server", pki.server), ("gateway", pki.gateway), ("client", pki.client)):
        print(f"{name} {pair.cert} {pair.key}")
    return 0


_COMMANDS = {
    "serve": _serve,
    "train": _train,
    "predict": _predict,
    "classify": _classify,
    "models": _models,
    "keys": _keys,
    "certs": _certs,
    "envoy-config": _envoy_config,
}

if __name__ == "__main__":
    sys.exit(main())
