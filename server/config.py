"""The server's one typed configuration: defaults, then a TOML file, then
environment variables (TF Serving's ``MODEL_BASE_PATH``/``MODEL_NAME``, then
``TENSORGATE_*``), then command-line flags.

Every knob is a field of :class:`ServerConfig`; the ``serve`` command builds its
flags from these fields, so a knob is documented once, here. pydantic-settings'
sources read the file and the environment (:func:`load_config`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "TENSORGATE_"
# TF Serving's container variables, read as TF Serving's image reads them: MODEL_BASE_PATH (the repository) and
# MODEL_NAME (the one model of it to serve); TENSORGATE_MODEL_REPOSITORY and TENSORGATE_MODEL_NAME win over them.
TF_SERVING_VARIABLES = {"MODEL_BASE_PATH": "model_repository", "MODEL_NAME": "model_name"}
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"  # a directory name of the repository that names a model
NESTED = "__"  # TENSORGATE_BATCHING__MAX_BATCH_SIZE sets batching.max_batch_size
MiB = 1024 * 1024
DEVICE_PATTERN = r"^(auto|cpu|gpu:\d+)$"
Runtime = Literal["auto", "tensorflow", "tflite"]
RUNTIME_DESCRIPTION = (
    "What runs a model on the CPU: tensorflow; tflite (or fail to load); auto = tflite when it converts and "
    "matches TensorFlow's outputs at warm-up. GPUs always run TensorFlow."
)
# Kubernetes sets TENSORGATE_PORT=tcp://10.0.0.1:8500 in every pod of a namespace with a Service named tensorgate
# (service links): such values are addresses of Services, never settings.
SERVICE_LINK_SCHEMES = ("tcp://", "udp://", "sctp://")
DEFAULT_TRACE_SAMPLE_RATIO = 0.1  # share of new traces sampled when neither the settings nor OTEL_* choose


def _split_commas(value: Any) -> Any:
    """ "a, b" as ["a", "b"]: how the environment and flags spell a list (a TOML file writes a list)."""
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    """A name as written in any case: ``debug`` is ``DEBUG``."""
    return value.upper() if isinstance(value, str) else value


def _empty_as_unset(value: Any) -> Any:
    """An empty value (``TENSORGATE_JWT__JWKS_FILE=``) unsets an optional file: the environment can turn off what a
    mounted configuration file turns on, e.g. JWTs in a stack that has no identity provider's JWKS."""
    return None if value == "" else value


CommaList = Annotated[list[str], BeforeValidator(_split_commas)]
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_as_unset)]
S3_SCHEME = "s3://"
# S3's bucket naming rules (3-63 characters: lower-case letters, digits, dots, hyphens).
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix without slashes at either end). Raises ValueError."""
    if not url.startswith(S3_SCHEME):
        raise ValueError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
    if not S3_BUCKET.match(bucket):
        raise ValueError(f"{url!r}: {bucket!r} is not a valid S3 bucket name")
    return bucket, prefix.strip("/")


def _repository_location(value: Any) -> Any:
    """A local directory as a Path, an object-store URL (``s3://bucket/prefix``, checked) as the text it is."""
    if not isinstance(value, str):
        return value
    if value.startswith(S3_SCHEME):
        parse_s3_url(value)
        return value
    if "://" in value:
        raise ValueError(f"{value!r}: a model repository is a local directory or an s3://bucket/prefix URL")
    return Path(value)


RepositoryLocation = Annotated[Path | str, BeforeValidator(_repository_location)]


class BatchingConfig(BaseModel):
    """Batching knobs of one model (Triton's dynamic batcher and TF Serving's batching options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Merge concurrent requests; false runs every request alone.")
    max_batch_size: int = Field(256, ge=1, description="Most examples in one model call.")
    max_queue_delay_us: int = Field(
        0,
        ge=0,
        description=(
            "Longest a request waits for others to join its batch, in microseconds. 0 (Triton's default) merges "
            "only what queued while the workers were busy: no added latency at low load, big batches under load."
        ),
    )
    adaptive_delay_us: int = Field(
        500,
        ge=0,
        description=(
            "Longest a request may wait for a batch as full as the recent ones, in microseconds, when arrivals are "
            "dense (recent batches held several requests); never at low load. 0 turns it off."
        ),
    )
    max_queue_size: int = Field(
        1024, ge=1, description="Requests that may wait; beyond it requests are refused with RESOURCE_EXHAUSTED."
    )
    preferred_batch_sizes: Annotated[tuple[int, ...], BeforeValidator(_split_commas)] = Field(
        (),
        description="Batch sizes to pad merged batches up to (e.g. for XLA or a GPU), comma-separated in env/flags; "
        "empty pads nothing.",
    )

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sorted_positive(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(size < 1 for size in sizes):
            raise ValueError("preferred batch sizes must be positive")
        return tuple(sorted(set(sizes)))


class ConfigError(ValueError):
    """The configuration file, environment or flags hold an invalid value."""


class TlsConfig(BaseModel):
    """Certificates of one TLS endpoint, as PEM files. No certificate file = plaintext."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: OptionalPath = Field(None, description="PEM certificate chain this side presents.")
    key_file: OptionalPath = Field(None, description="PEM private key of cert_file.")
    ca_file: OptionalPath = Field(
        None,
        description="PEM CA bundle: on a listener, callers must present a certificate it signed (mTLS); "
        "on the gateway's upstream side, it verifies the server's certificate.",
    )

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def check_files(self) -> None:
        """ValueError unless every file named here exists (checked by whoever uses them: the server or Envoy)."""
        for path in (self.cert_file, self.key_file, self.ca_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a readable file")

    @property
    def enabled(self) -> bool:
        """Whether this endpoint speaks TLS."""
        return self.cert_file is not None


class JwtConfig(BaseModel):
    """JSON Web Tokens from an identity provider, verified against its public keys (JWKS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jwks_file: OptionalPath = Field(None, description="JWKS file of the issuer's public keys; unset = JWTs off.")
    issuer: str = Field("", description="Required `iss` claim.")
    audiences: CommaList = Field(["tensorgate"], description="Accepted `aud` values (comma-separated in env/flags).")
    algorithms: CommaList = Field(["RS256", "ES256"], description="Signature algorithms accepted (allow-list).")
    leeway_s: float = Field(30.0, ge=0, description="Clock skew tolerated on exp/nbf, in seconds.")

    @model_validator(mode="after")
    def _issuer_with_keys(self) -> JwtConfig:
        if self.jwks_file is not None and not self.issuer:
            raise ValueError("jwt.issuer is required with jwt.jwks_file")
        return self


class EdgeConfig(BaseModel):
    """Limits Envoy enforces on the callers of its listener (Envoy's edge-proxy best practices)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_headers_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a caller may take to send a request's headers (slowloris); then 408."
    )
    stream_idle_timeout_s: float = Field(
        300.0, gt=0, description="Seconds a request or stream may pass with no data either way; then it is reset."
    )
    idle_timeout_s: float = Field(3600.0, gt=0, description="Seconds a connection may stay open with no request.")
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest a unary call may take at Envoy, upload to answer; streams have max_stream_duration_s.",
    )
    max_request_headers_kb: int = Field(
        16,
        ge=1,
        le=30,
        description="Largest request header block (URL included), in KiB; larger gets 431. At most 30: Envoy "
        "copies a REST path into x-envoy-original-path, and the server refuses metadata over 64 KiB.",
    )
    max_connections: int = Field(10_000, ge=1, description="Connections the listener holds at once; more are closed.")
    max_global_connections: int = Field(
        50_000, ge=1, description="Downstream connections Envoy holds at once over all its listeners."
    )
    max_heap_bytes: int = Field(
        1024 * MiB,
        ge=64 * MiB,
        description="Envoy's heap budget: at 95% it frees memory and closes idle keep-alives, at 98% it refuses "
        "new requests (503).",
    )
    rate_limit_per_address: int = Field(
        0,
        ge=0,
        description="Requests per second (and burst) one client address may send through Envoy, gRPC stream "
        "messages not counted; over it 429 / RESOURCE_EXHAUSTED. 0 = unlimited (on loopback every caller is "
        "one address).",
    )


class ServerConfig(BaseModel):
    """Settings of one tensorgate server process. Defaults work on a laptop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds (0.0.0.0 for every interface).")
    port: int = Field(8500, ge=0, le=65535, description="gRPC port; 0 picks a free port and logs it.")
    model_repository: RepositoryLocation = Field(
        Path("models"),
        description="Root of the model repository: <root>/<model>/<version>/, a directory or s3://bucket/prefix.",
    )
    model_cache_dir: Path = Field(
        Path(tempfile.gettempdir()) / "tensorgate-model-cache",
        description="Where versions of an s3:// model repository are downloaded before they load.",
    )
    model_name: Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)] | None = Field(
        None,
        examples=["mnist"],
        description="Serve only this model of model_repository (TF Serving's MODEL_NAME); unset = every model.",
    )
    poll_interval_s: float = Field(
        2.0, ge=0, description="Seconds between scans of the repository for new or removed versions; 0 never scans."
    )
    signature_name: str = Field("serving_default", description="SavedModel signature to serve.")
    gateway: bool = Field(True, description="Also run Envoy (REST/JSON, OpenAPI, docs) under one supervisor.")
    gateway_port: int = Field(8080, ge=0, le=65535, description="Envoy listener: gRPC and REST on one port.")
    gateway_admin_port: int = Field(9901, ge=0, le=65535, description="Envoy admin port (stats, readiness).")
    gateway_admin_host: str = Field(
        "127.0.0.1", description="Address of Envoy's admin port; it can change Envoy's state, so loopback by default."
    )
    replicas: int = Field(
        1, ge=1, description="Servers behind the one Envoy; replica i (all its workers) uses port+i, metrics_port+i."
    )
    workers: int = Field(
        1,
        ge=1,
        description="Server processes sharing each replica's gRPC, health and metrics ports (SO_REUSEPORT), "
        "each with its own model copy and batcher; 'auto' = one per core.",
    )
    gateway_upstream: str = Field(
        "",
        description="host:port Envoy sends to when the servers run elsewhere (e.g. a headless Service resolving "
        "to every pod); empty = the replicas this command starts.",
    )
    health_port: int = Field(
        0, ge=0, le=65535, description="Plaintext port serving only grpc.health.v1 (kubelet probes); 0 = none."
    )
    drain_delay_s: float = Field(
        0.0, ge=0, description="On SIGTERM, seconds between reporting NOT_SERVING and refusing new calls."
    )
    tracing_endpoint: str = Field(
        "",
        description="Plaintext OTLP/gRPC collector (host:port) for traces of the server and Envoy; empty = the "
        "server traces only when OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is set, https:// for TLS.",
    )
    trace_sample_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        examples=[0.5],
        description=f"Share of new traces sampled (callers' decisions kept); unset = OTEL_TRACES_SAMPLER if set, "
        f"else {DEFAULT_TRACE_SAMPLE_RATIO}.",
    )
    service_name: str = Field(
        "", description="service.name of the server's spans; empty = OTEL_SERVICE_NAME, else tensorgate."
    )
    api_keys_file: OptionalPath = Field(
        None, description="TOML file of hashed API keys and their scopes; unset = no authentication (loopback)."
    )
    rate_limit_per_key: float = Field(
        0, ge=0, description="Requests per second each API key may make (0 = unlimited); needs api_keys_file."
    )
    rate_limit_burst: int = Field(20, ge=1, description="Requests an API key may make at once above its rate.")
    rate_limit_unit: Literal["request", "example"] = Field(
        "request",
        description="What one rate-limit token buys: a request (a unary call or one message of a stream), or "
        "one example of an inference request (a call without examples costs one); rate and burst count it.",
    )
    auth_failures_per_s: float = Field(
        1.0,
        ge=0,
        description="Failed authentications per second a client address may make once its burst is spent; beyond, "
        "its calls are refused with RESOURCE_EXHAUSTED before their credentials are checked (0 = unthrottled).",
    )
    auth_failure_burst: int = Field(
        50, ge=1, description="Failed authentications a client address may make at once before it is throttled."
    )
    trusted_proxies: CommaList = Field(
        ["127.0.0.0/8", "::1/128"],
        examples=[["10.0.0.0/8", "fd00::/8"]],
        description="Networks of proxies (the gateway) whose last x-forwarded-for hop is taken as the client's "
        "address (comma-separated in env/flags).",
    )
    jwt: JwtConfig = Field(default_factory=JwtConfig, description="JWT authentication (with or without API keys).")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS of the gRPC port; ca_file makes it mTLS.")
    gateway_tls: TlsConfig = Field(
        default_factory=TlsConfig, description="TLS of Envoy's listener (REST and gRPC, HTTP/2 by ALPN)."
    )
    upstream_tls: TlsConfig = Field(
        default_factory=TlsConfig,
        description="Envoy's side towards a TLS server: its client certificate, and the CA of the server's.",
    )
    edge: EdgeConfig = Field(default_factory=EdgeConfig, description="Envoy's limits on its callers (timeouts, sizes).")
    allow_plaintext: bool = Field(
        False, description="Allow listeners without TLS on non-loopback addresses (e.g. behind a mesh sidecar)."
    )
    rest_port: int = Field(
        8000, ge=0, le=65535, description="Port of the Open Inference Protocol (KServe v2, Triton) REST API; 0 = off."
    )
    tfserving_rest_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of TF Serving's REST API; 0 = off. TF Serving's is 8501, which the container image sets "
        "(off by default here: replica i takes port+i, and 8501 is the second replica's gRPC port).",
    )
    metrics_port: int = Field(8502, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint.")
    model_workers: int = Field(2, ge=1, description="Model calls run at once, on threads off the event loop.")
    device: str = Field(
        "auto", pattern=DEVICE_PATTERN, examples=["gpu:1"], description="Default device: auto, cpu or gpu:N."
    )
    runtime: Runtime = Field("auto", description=f"Default runtime. {RUNTIME_DESCRIPTION}")
    intra_op_threads: int = Field(0, ge=0, description="TensorFlow threads within one op; 0 = one per core.")
    inter_op_threads: int = Field(0, ge=0, description="TensorFlow ops run in parallel; 0 = TensorFlow's choice.")
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="Default batching knobs; <model>/model.toml overrides them."
    )
    max_message_bytes: int = Field(64 * MiB, ge=1024, description="Largest gRPC message accepted or sent, in bytes.")
    max_examples_per_request: int = Field(4096, ge=1, description="Largest batch (first dimension) of one request.")
    max_tensor_elements: int = Field(16 * MiB, ge=1, description="Largest number of elements of one input tensor.")
    reject_non_finite: bool = Field(True, description="Refuse NaN and infinite values in floating-point inputs.")
    max_stream_duration_s: float = Field(
        3600.0, gt=0, description="Longest a StreamPredict stream may stay open; then DEADLINE_EXCEEDED."
    )
    max_request_timeout_s: float = Field(
        300.0, gt=0, description="Deadline of a unary call that sets none, and the most one may set."
    )
    stream_window: int = Field(
        8, ge=1, description="Requests of one StreamPredict stream worked on at once; reading pauses when full."
    )
    shutdown_grace_s: float = Field(30.0, ge=0, description="Seconds in-flight calls may take to finish on SIGTERM.")
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = Field(
        "INFO", description="Lowest level logged (any case)."
    )
    log_format: Literal["json", "text", "auto"] = Field(
        "auto", description="Log lines on stderr: JSON objects, or text for people; auto = text on a terminal."
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network)  # ValueError names the bad one
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _resolve_workers(cls, value: Any) -> Any:
        """'auto' becomes the number of cores this process may run on (its CPU affinity, which containers
        narrow), here and nowhere else."""
        return len(os.sched_getaffinity(0)) if value == "auto" else value

    @model_validator(mode="after")
    def _no_silent_plaintext(self) -> ServerConfig:
        """Plaintext beyond loopback is a decision someone writes down, never what happens by default."""
        exposed = self.exposed_plaintext()
        if exposed and not self.allow_plaintext:
            raise ValueError(f"host {self.host} is not loopback: configure {exposed[0]} (or set allow_plaintext)")
        return self

    def exposed_plaintext(self) -> list[str]:
        """The listeners (named by their TLS table) that speak plaintext on a non-loopback address; only
        allow_plaintext permits any, and serve logs them when it does."""
        if is_loopback(self.host):
            return []
        listeners = {"tls": self.tls, "gateway_tls": self.gateway_tls} if self.gateway else {"tls": self.tls}
        return [name for name, tls in listeners.items() if not tls.enabled]

    @model_validator(mode="after")
    def _tls_files_exist(self) -> ServerConfig:
        """The server's own files always; Envoy's only where this process runs Envoy (a server pod has no key
        of Envoy's)."""
        self.tls.check_files()
        if self.gateway:
            self.gateway_tls.check_files()
            self.upstream_tls.check_files()
        return self

    @model_validator(mode="after")
    def _ports_do_not_overlap(self) -> ServerConfig:
        """Replica i takes port+i, metrics_port+i, health_port+i and its REST ports +i: no two may collide."""
        ranges = {
            "port": self.port,
            "metrics_port": self.metrics_port,
            "health_port": self.health_port,
            "rest_port": self.rest_port,
            "tfserving_rest_port": self.tfserving_rest_port,
        }
        taken: dict[int, str] = {}
        for name, first in ranges.items():
            for port in range(first, first + self.replicas) if first else ():
                if port in taken:
                    raise ValueError(f"{name} {first} and {taken[port]} overlap over {self.replicas} replica(s)")
                taken[port] = name
        if self.gateway:
            for name in ("gateway_port", "gateway_admin_port"):
                if (port := getattr(self, name)) and port in taken:
                    raise ValueError(f"{name} {port} is also the {taken[port]} of a replica")
        return self

    @model_validator(mode="after")
    def _workers_share_fixed_ports(self) -> ServerConfig:
        """Workers share their ports by binding the same number: port 0 would give each a port of its own."""
        if self.workers > 1:
            for name in ("port", "metrics_port"):
                if getattr(self, name) == 0:
                    raise ValueError(f"{name} 0 picks a port per process: workers > 1 need a fixed {name}")
        return self

    @model_validator(mode="after")
    def _upstream_matches_server(self) -> ServerConfig:
        if not (self.gateway and self.tls.enabled):
            return self
        if self.upstream_tls.ca_file is None:
            raise ValueError("tls on the server needs upstream_tls.ca_file, so that Envoy can verify it")
        if self.tls.ca_file is not None and not self.upstream_tls.enabled:
            raise ValueError("tls.ca_file requires client certificates: set upstream_tls cert and key for Envoy")
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _SettingsShape(ServerConfig, BaseSettings):
    """ServerConfig's fields as pydantic-settings' sources read them: ``TENSORGATE_<FIELD>``,
    ``TENSORGATE_<FIELD>__<SUBFIELD>``, values never JSON-decoded (lists are comma-separated).

    Only the sources use this class: ServerConfig itself stays a plain model, so that building one in code never
    reads the environment.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED, enable_decoding=False)


class _Environment(EnvSettingsSource):
    """The ``TENSORGATE_*`` variables of ``environ``, less Kubernetes service links (see SERVICE_LINK_SCHEMES)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_SettingsShape)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        """The variables this source reads (EnvSettingsSource's hook: it reads os.environ, DotEnvSettingsSource a
        file), names in lower case as the source matches them (case-insensitively, pydantic-settings' default)."""
        return {
            key.lower(): value for key, value in self._environ.items() if not value.startswith(SERVICE_LINK_SCHEMES)
        }


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``environ`` holds, as nested values (``TENSORGATE_JWT__ISSUER`` as ``{"jwt": {"issuer": ...}}``):
    TF Serving's variables (TF_SERVING_VARIABLES), then the ``TENSORGATE_*`` ones over them."""
    tf_serving = {field: environ[name] for name, field in TF_SERVING_VARIABLES.items() if environ.get(name)}
    return merge_nested(tf_serving, _Environment(environ)())


def merge_nested(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; nested tables merge key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        inner = merged.get(key)
        merged[key] = merge_nested(inner, value) if isinstance(value, Mapping) and isinstance(inner, dict) else value
    return merged


def load_config(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Merge defaults < ``config_file`` (TOML) < environment (``os.environ`` unless given) < ``flags`` into one
    validated config.

    ``flags`` may nest (``{"batching": {"enabled": "false"}}``); None values are ignored.
    """
    sources: list[PydanticBaseSettingsSource] = []
    if config_file is not None:
        if not config_file.is_file():  # the TOML source would read a missing file as an empty one
            raise ConfigError(f"cannot read configuration file {config_file}: no such file")
        try:
            sources.append(TomlConfigSettingsSource(_SettingsShape, config_file))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {config_file}: {exc}") from exc
    values: dict[str, Any] = {}
    try:
        for source in sources:
            values = merge_nested(values, source())
        values = merge_nested(values, environment_values(os.environ if environ is None else environ))
        return ServerConfig.model_validate(merge_nested(values, _without_none(flags or {})))
    except (ValidationError, SettingsError) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    cleaned = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            value = _without_none(value)
        if value is not None and value != {}:
            cleaned[key] = value
    return cleaned
