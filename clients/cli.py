"""The client commands of ``tensorgate``: predict, classify, models, and the admin commands load, unload, reload
and labels.

They need only the client package: nothing here imports the server (``tensorgate.server.commands.cli`` adds the
operator's commands, serve, train, keys, ..., to these for the installed ``tensorgate`` command).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata as distribution
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np
from tqdm import tqdm

from tensorgate.clients.client import ClientTls, TensorgateClient
from tensorgate.clients.datasets import DEFAULT_CACHE_DIR, Examples, load_examples, to_model_input
from tensorgate.v1 import codec
from tensorgate.v1.model_service_pb2 import GetModelMetadataResponse, Model, ModelVersionState

DEFAULT_TARGET = "127.0.0.1:8500"
REFERENCE_MODEL = "mnist"
# The admin commands that take a model and an optional version: the client's method, and what it does.
ADMIN_COMMANDS = {
    "load": ("load_model", "serve a version even where the version policy would not (or all the policy wants)"),
    "unload": ("unload_model", "stop serving a version (or the model) until the next reload"),
    "reload": ("reload_model", "re-read a model's configuration and load fresh copies of its versions"),
}

Command = Callable[[argparse.Namespace], int]
Subcommands = argparse._SubParsersAction  # what add_subparsers returns (argparse names no public type for it)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"server address (default {DEFAULT_TARGET})")
    parser.add_argument("--api-key", help="API key, when the server requires one (sent as x-api-key)")
    parser.add_argument("--token", help="JWT from your identity provider (sent as authorization: Bearer)")
    parser.add_argument("--ca-file", type=Path, help="CA of the server's certificate: connect over TLS")
    parser.add_argument("--cert-file", type=Path, help="client certificate, for an mTLS port")
    parser.add_argument("--key-file", type=Path, help="private key of --cert-file")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: the installed distribution's version."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {distribution.version('tensorgate')}")


def add_client_commands(commands: Subcommands) -> None:
    """Add the client's commands to ``commands``; each parser's ``run`` default is its handler."""
    predict = commands.add_parser("predict", help="classify one image (PNG, JPEG) or .npy file")
    predict.add_argument("file", type=Path)
    predict.add_argument("--model", default=REFERENCE_MODEL)
    predict.add_argument("--version", default="")
    _add_target(predict)
    predict.set_defaults(run=_predict)

    classify = commands.add_parser("classify", help="bulk-classify over StreamPredict")
    classify.add_argument("source", help="a directory of images, an .npy/.npz file, or 'mnist-test'")
    classify.add_argument("--output", type=Path, help="results file, .csv or .jsonl (default: stdout as CSV)")
    classify.add_argument("--model", default=REFERENCE_MODEL)
    classify.add_argument("--version", default="")
    classify.add_argument("--batch-size", type=int, default=256, help="examples per stream message")
    classify.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    _add_target(classify)
    classify.set_defaults(run=_classify)

    models = commands.add_parser("models", help="list models, or show one model's status and signature")
    models.add_argument("model", nargs="?")
    _add_target(models)
    models.set_defaults(run=_models)

    for name, (method, action) in ADMIN_COMMANDS.items():
        admin = commands.add_parser(name, help=f"{action} (admin scope)")
        admin.add_argument("model")
        admin.add_argument("model_version", nargs="?", default="", metavar="version", help="one version (default: all)")
        _add_target(admin)
        admin.set_defaults(run=_admin, method=method)

    labels = commands.add_parser("labels", help="point a model's labels at versions (admin scope)")
    labels.add_argument("model")
    labels.add_argument("labels", nargs="*", metavar="LABEL=VERSION", help="the model's labels, replacing all others")
    labels.add_argument("--clear", action="store_true", help="remove every label of the model")
    _add_target(labels)
    labels.set_defaults(run=_labels)


def build_parser() -> argparse.ArgumentParser:
    """The client commands alone (what a machine without the server's packages can run)."""
    parser = argparse.ArgumentParser(prog="tensorgate", description="The client commands of tensorgate.")
    add_version(parser)
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run the command ``args`` were parsed for: errors of the call or of the input become one line on stderr."""
    run: Command = args.run
    try:
        return run(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


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
    with _client(args) as client:
        metadata, input_name, dtype = _model_input(client, args.model, args.version)
        spec = metadata.inputs[0]
        examples = load_examples(args.file, image_input=spec)
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
    started = time.monotonic()
    with _client(args) as client:
        metadata, input_name, dtype = _model_input(client, args.model, args.version)
        examples = load_examples(args.source, cache_dir=args.cache_dir, image_input=metadata.inputs[0])
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
    if model.labels:
        print("  labels: " + " ".join(f"{label}={number}" for label, number in sorted(model.labels.items())))
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


def _admin(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_model(getattr(client, args.method)(args.model, args.model_version))
    return 0


def _parse_labels(pairs: Sequence[str]) -> dict[str, int]:
    """``stable=3 canary=4`` as {"stable": 3, "canary": 4}; ValueError naming a malformed pair."""
    labels = {}
    for pair in pairs:
        label, _, number = pair.partition("=")
        if not label or not number.isdigit() or int(number) < 1:
            raise ValueError(f"a label is LABEL=VERSION with a version number, e.g. stable=3; got {pair!r}")
        labels[label] = int(number)
    return labels


def _labels(args: argparse.Namespace) -> int:
    if bool(args.labels) == args.clear:
        raise ValueError("give LABEL=VERSION pairs, or --clear to remove every label")
    labels = _parse_labels(args.labels)
    with _client(args) as client:
        _print_model(client.set_model_labels(args.model, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
