"""The ``tensorgate`` command: the operator's commands (serve, envoy-config, train, keys, certs) and the client
commands of :mod:`tensorgate.clients.cli` (predict, classify, models)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tensorgate.clients.cli import REFERENCE_MODEL, Subcommands, add_client_commands, add_version, run_command
from tensorgate.clients.datasets import DEFAULT_CACHE_DIR
from tensorgate.server.commands.certs import create_dev_pki
from tensorgate.server.config import ServerConfig, load_config
from tensorgate.server.security.auth import hash_key, new_key, parse_key_file, write_key_file
from tensorgate.server.security.principal import SCOPES, Principal

log = logging.getLogger(__name__)

# serve's flags in --help, group by group; each table of ServerConfig (tls, batching, ...) is a group of its own,
# titled by its name and described by its field, shown after the group that lists it.
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "server": (
        "host",
        "port",
        "model_repository",
        "model_cache_dir",
        "model_name",
        "poll_interval_s",
        "signature_name",
        "replicas",
        "workers",
        "health_port",
        "rest_port",
        "tfserving_rest_port",
        "drain_delay_s",
        "shutdown_grace_s",
    ),
    "models and runtime": ("model_workers", "device", "runtime", "intra_op_threads", "inter_op_threads", "batching"),
    "limits": (
        "max_message_bytes",
        "max_examples_per_request",
        "max_tensor_elements",
        "reject_non_finite",
        "max_stream_duration_s",
        "max_request_timeout_s",
        "stream_window",
    ),
    "TLS": ("allow_plaintext", "tls", "gateway_tls", "upstream_tls"),
    "authentication and rate limits": (
        "api_keys_file",
        "rate_limit_per_key",
        "rate_limit_burst",
        "rate_limit_unit",
        "auth_failures_per_s",
        "auth_failure_burst",
        "trusted_proxies",
        "jwt",
    ),
    "gateway (Envoy)": (
        "gateway",
        "gateway_port",
        "gateway_admin_port",
        "gateway_admin_host",
        "gateway_upstream",
        "edge",
    ),
    "tracing": ("tracing_endpoint", "trace_sample_ratio", "service_name"),
    "metrics and logging": ("metrics_port", "log_level", "log_format"),
}
# Arguments of serve and envoy-config that are not ServerConfig fields.
NOT_CONFIG = ("command", "run", "config", "train_if_empty", "assets_dir", "worker_index")


def _help(description: str | None) -> str | None:
    """A field's description as argparse help text (which formats it with %: "95%" must be "95%%")."""
    return None if description is None else description.replace("%", "%%")


def _metavar(annotation: Any) -> str:
    """What a flag's value looks like, from the field's type: INT, NUMBER, PATH, TEXT, {a,b} or LIST,..."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "{" + ",".join(str(arg) for arg in args) + "}"
    if origin in (list, tuple):
        return f"{_metavar(args[0])},..."
    if origin is types.UnionType:  # X | None: None is the default, never typed
        return _metavar(next(arg for arg in args if arg is not type(None)))
    return {int: "INT", float: "NUMBER", Path: "PATH"}.get(annotation, "TEXT")


def _default(field: FieldInfo) -> str:
    """The "(default: ...)" ending of a flag's help, the value as one would type it; none for an unset default."""
    value = field.get_default(call_default_factory=True)
    if value is None or value in ("", ()):
        return ""
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, list | tuple):
        value = ",".join(str(item) for item in value)
    return f" (default: {value})"


def _add_field(group: argparse._ArgumentGroup, flag: str, dest: str, field: FieldInfo) -> None:
    # default=None: a flag left out must not override the file or the environment.
    help_text = _help((field.description or "") + _default(field))
    if field.annotation is bool:  # --gateway / --no-gateway
        group.add_argument(flag, dest=dest, default=None, action=argparse.BooleanOptionalAction, help=help_text)
    else:
        group.add_argument(flag, dest=dest, default=None, metavar=_metavar(field.annotation), help=help_text)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field (``--batching-max-batch-size`` for nested ones), documented by the field."""
    for title, names in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        tables = []
        for name in names:
            field = ServerConfig.model_fields[name]
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                tables.append((name, field.annotation, field.description))
            else:
                _add_field(group, f"--{name.replace('_', '-')}", name, field)
        for name, table, description in tables:
            group = parser.add_argument_group(name.replace("_", " "), description)
            for sub_name, sub_field in table.model_fields.items():
                _add_field(group, f"--{name}-{sub_name}".replace("_", "-"), f"{name}.{sub_name}", sub_field)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorgate", description=__doc__)
    add_version(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_operator_commands(commands)
    add_client_commands(commands)
    return parser


def _add_operator_commands(commands: Subcommands) -> None:
    serve = commands.add_parser("serve", help="run the gRPC model server")
    serve.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML configuration file (flags > TENSORGATE_* env > file)"
    )
    serve.add_argument(
        "--train-if-empty",
        action="store_true",
        help=f"train the reference MNIST model into <repository>/{REFERENCE_MODEL} when the repository has no model",
    )
    serve.add_argument(
        "--worker-index",
        type=int,
        metavar="INT",
        help="set by the supervisor on the worker processes it starts (--workers)",
    )
    _add_config_flags(serve)
    serve.set_defaults(run=_serve)

    envoy_config = commands.add_parser(
        "envoy-config", help="print the Envoy configuration `serve` would run, for an Envoy deployed on its own"
    )
    envoy_config.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML configuration file (flags > TENSORGATE_* env > file)"
    )
    envoy_config.add_argument(
        "--assets-dir",
        type=Path,
        metavar="PATH",
        help="where Envoy finds tensorgate.binpb, openapi.json and docs/ (a container path)",
    )
    _add_config_flags(envoy_config)
    envoy_config.set_defaults(run=_envoy_config)

    train = commands.add_parser("train", help="train the reference MNIST model and export the next version")
    train.add_argument("--repository", type=Path, default=Path("models"), help="model repository root")
    train.add_argument("--model", default=REFERENCE_MODEL, help="model name (directory in the repository)")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the MNIST wheel is kept")
    train.set_defaults(run=_train)

    keys = commands.add_parser("keys", help="manage the API key file (hashes and scopes; keys are shown once)")
    keys.add_argument("action", choices=["add", "revoke", "list"])
    keys.add_argument("name", nargs="?", help="key name (letters, digits, - and _)")
    keys.add_argument("--file", type=Path, required=True, help="the server's --api-keys-file")
    keys.add_argument("--scopes", default=SCOPES[0], help=f"comma-separated: {', '.join(SCOPES)} (default %(default)s)")
    keys.add_argument("--models", default="", help="comma-separated models the key may use (default: all)")
    keys.set_defaults(run=_keys)

    certs = commands.add_parser("certs", help="create a development CA and server, gateway and client certificates")
    certs.add_argument("--out", type=Path, default=Path("certs"), help="directory for the PEM files (default certs/)")
    certs.add_argument(
        "--hosts", default="localhost,127.0.0.1", help="comma-separated names and addresses of the certificates"
    )
    certs.add_argument("--days", type=int, default=365)
    certs.set_defaults(run=_certs)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ logs out of the JSON log
    return run_command(build_parser().parse_args(argv))


def config_of(args: argparse.Namespace) -> ServerConfig:
    """The configuration serve or envoy-config runs with: ``--config``, the environment, then the flags given."""
    flags: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is not None and dest not in NOT_CONFIG:
            table, _, name = dest.rpartition(".")
            (flags.setdefault(table, {}) if table else flags)[name] = value
    return load_config(args.config, flags)


def _envoy_config(args: argparse.Namespace) -> int:
    from tensorgate.gateway.envoy import render_envoy_config

    print(render_envoy_config(config_of(args), args.assets_dir), end="")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tensorgate.server.observability.logs import setup_logging

    config = config_of(args)
    worker = {} if args.worker_index is None else {"worker": args.worker_index}
    setup_logging(config.log_level, config.log_format, worker)
    if args.worker_index is None and (plaintext := config.exposed_plaintext()):  # once per stack, not per server
        log.warning(
            "plaintext on a non-loopback address, as allow_plaintext permits",
            extra={"fields": {"host": config.host, "listeners": plaintext}},
        )
    repository = config.model_repository
    if isinstance(repository, Path):
        if args.train_if_empty and not (repository.is_dir() and any(p.is_dir() for p in repository.iterdir())):
            from tensorgate.server.reference.training import train_mnist

            train_mnist(repository, REFERENCE_MODEL)
        if not repository.is_dir():
            raise FileNotFoundError(
                f"model repository {repository} does not exist (use --train-if-empty to create one)"
            )
        if config.model_name is not None and not (repository / config.model_name).is_dir():
            raise FileNotFoundError(f"model {config.model_name} (model_name) is not a directory of {repository}")
    elif args.train_if_empty:
        raise ValueError(f"--train-if-empty needs a local model repository, not {repository}")
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
            flag = dest.replace(".", "-").replace("_", "-")
            argv += [f"--{'' if value else 'no-'}{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return argv


def _train(args: argparse.Namespace) -> int:
    from tensorgate.server.reference.training import train_mnist

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train_mnist(args.repository, args.model, epochs=args.epochs, seed=args.seed, cache_dir=args.cache_dir)
    print(f"test accuracy: {result.test_accuracy:.4f}")
    print(f"exported {args.model} version {result.version} to {result.path} ({result.train_seconds:.1f} s training)")
    return 0


def _keys(args: argparse.Namespace) -> int:
    keys = parse_key_file(args.file.read_text()) if args.file.exists() else {}
    if args.action == "list":
        for principal in sorted(keys.values(), key=lambda p: p.name):
            allowed = ", ".join(sorted(principal.models)) if principal.models else "all"
            print(f"{principal.name}: {', '.join(sorted(principal.scopes))} (models: {allowed})")
        return 0
    if not args.name or not args.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError("a key name of letters, digits, - and _ is required")
    known = any(p.name == args.name for p in keys.values())
    if args.action == "revoke" and not known:
        raise ValueError(f"no key named {args.name!r} in {args.file}: nothing revoked")
    keys = {digest: p for digest, p in keys.items() if p.name != args.name}
    if args.action == "add":
        scopes = frozenset(s.strip() for s in args.scopes.split(","))
        if not scopes <= set(SCOPES):
            raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {args.scopes}")
        key = new_key()
        models = frozenset(m.strip() for m in args.models.split(",") if m.strip())
        keys[hash_key(key)] = Principal(args.name, scopes, models)
        write_key_file(args.file, keys)
        print(key)  # shown once: only its hash is stored
        if known:  # on stderr: stdout is the key alone, for scripts
            print(f"replaced the key of {args.name!r}: the old key no longer works", file=sys.stderr)
    else:
        write_key_file(args.file, keys)
        print(f"revoked the key of {args.name!r}", file=sys.stderr)
    return 0


def _certs(args: argparse.Namespace) -> int:
    pki = create_dev_pki(args.out, [h.strip() for h in args.hosts.split(",") if h.strip()], args.days)
    print(f"CA {pki.ca}")
    for name, pair in (("server", pki.server), ("gateway", pki.gateway), ("client", pki.client)):
        print(f"{name} {pair.cert} {pair.key}")
    return 0
