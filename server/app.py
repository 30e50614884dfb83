"""The server process: wires configuration, registry, loader and gRPC services, and shuts down cleanly.

Start-up: the port opens at once with health NOT_SERVING, models load in the
background, then health turns SERVING. Shutdown on SIGTERM or SIGINT follows
grpcio-health-checking's order: report NOT_SERVING, stop taking calls and let
in-flight ones finish (``shutdown_grace_s``), then release the model workers.

With ``workers`` > 1 this process is one of the workers of a replica, started by
the supervisor: the workers bind the same gRPC, health and metrics ports with
SO_REUSEPORT and the kernel spreads connections over them. One worker alone
keeps SO_REUSEPORT off, so that a second server never shares its port by
accident.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from concurrent.futures import ThreadPoolExecutor

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from tensorgate.server.config import ServerConfig, TlsConfig
from tensorgate.server.models.loader import load_version
from tensorgate.server.models.manager import ModelManager
from tensorgate.server.models.mirror import open_repository
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.registry import ModelRegistry
from tensorgate.server.observability.metrics import metrics_registry, record_build_info, start_metrics_server
from tensorgate.server.observability.tracing import setup_tracing, shutdown_tracing
from tensorgate.server.protocols import kserve_v2, tfserving, v1
from tensorgate.server.protocols.methods import KSERVE_V2, TFS_MODELS, TFS_PREDICTION, V1_INFERENCE, V1_MODELS
from tensorgate.server.protocols.rest import http as rest
from tensorgate.server.protocols.rest.kserve_v2 import KServeV2Rest
from tensorgate.server.protocols.rest.tfserving import TFServingRest
from tensorgate.server.protocols.rpc import CallLimits, Corridor
from tensorgate.server.protocols.triton_extensions import TritonExtensions
from tensorgate.server.runtimes.devices import configure_tensorflow, tensorflow_version
from tensorgate.server.security.auth import ApiKeyStore, Authenticator
from tensorgate.server.security.jwt_auth import JwtVerifier
from tensorgate.server.security.rate_limit import RateLimiter
from tensorgate.server.serving.dataplane import DataPlane
from tensorgate.server.serving.validation import Limits

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OVERALL = ""

# Request headers the server accepts: four times what Envoy lets a REST caller send (16 KiB), because Envoy
# forwards the original path again as x-envoy-original-path. A caller who goes over hears 431/414 from Envoy,
# never RESOURCE_EXHAUSTED (which tells a client to retry) from the server.
MAX_METADATA_BYTES = 64 * 1024


async def serve(config: ServerConfig) -> None:
    """Run the server until SIGTERM or SIGINT, then drain and return."""
    setup_tracing(config.tracing_endpoint, config.service_name, config.trace_sample_ratio)
    configure_tensorflow(config.intra_op_threads, config.inter_op_threads)
    record_build_info(tensorflow_version())
    registry = ModelRegistry()
    executor = ThreadPoolExecutor(config.model_workers, thread_name_prefix="model")
    limits = Limits(config.max_examples_per_request, config.max_tensor_elements, config.reject_non_finite)
    limiter = build_rate_limiter(config)
    examples_limiter = limiter if config.rate_limit_unit == "example" else None
    dataplane = DataPlane(executor, config.model_workers, limits, examples_limiter)
    authenticator = build_authenticator(config, limiter)
    defaults = ModelConfig(device=config.device, runtime=config.runtime, batching=config.batching)
    root, refresh = open_repository(config.model_repository, config.model_cache_dir, config.poll_interval_s)
    manager = ModelManager(
        root,
        registry,
        config.signature_name,
        defaults,
        load_version,
        dataplane.retire,
        refresh=refresh,
        only=config.model_name,
    )
    shared_ports = config.workers > 1
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", int(shared_ports)),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ]
    )
    call_limits = CallLimits(config.stream_window, config.max_stream_duration_s, config.max_request_timeout_s)
    corridor = Corridor(registry, dataplane, call_limits, authenticator)
    # tensorgate.v1, and the same data plane under the protocols of other model servers, for their clients.
    server.add_generic_rpc_handlers(
        [
            *v1.handlers(corridor, manager),
            *kserve_v2.handlers(corridor, manager),
            *tfserving.handlers(corridor, config.max_tensor_elements),
        ]
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in (OVERALL, V1_INFERENCE):
        await health.set(service, NOT_SERVING)
    await health.set(V1_MODELS, SERVING)
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        [
            V1_INFERENCE,
            V1_MODELS,
            KSERVE_V2,
            TFS_PREDICTION,
            TFS_MODELS,
            health_service,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    start_metrics_server(
        config.host,
        config.metrics_port,
        metrics_registry(registry.states, registry.runtimes, config.workers),
        shared_ports,
    )
    address = f"{config.host}:{config.port}"
    credentials = server_credentials(config.tls)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    corridor.listening_on(config.host, port)
    await server.start()
    transport = "mtls" if config.tls.ca_file else "tls" if config.tls.enabled else "plaintext"
    log.info("listening", extra={"fields": {"address": f"{config.host}:{port}", "transport": transport}})
    health_server = (
        await start_health_server(health, config.host, config.health_port, shared_ports) if config.health_port else None
    )
    rest_runners = await start_rest_ports(config, corridor, manager, shared_ports)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    loading = asyncio.create_task(manager.reconcile_all())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        if loading.exception() is not None:
            # A repository that cannot be read at start (an s3:// bucket that is missing or denied): close the
            # ports, then let the command report the error.
            await server.stop(0)
            if health_server is not None:
                await health_server.stop(0)
        loading.result()
        await health.set(V1_INFERENCE, SERVING if registry.has_available() else NOT_SERVING)
        await health.set(OVERALL, SERVING)
        log.info("serving", extra={"fields": {"models": registry.model_names()}})
    watcher = asyncio.create_task(manager.watch(config.poll_interval_s)) if config.poll_interval_s else None
    await stopping
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Further signals change nothing, during the drain and after the loop closes: a signal to a process group
        # (systemd's stop, a terminal's Ctrl-C, timeout) reaches a worker both directly and from its supervisor.
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
    if watcher is not None:
        watcher.cancel()

    log.info(
        "shutting down", extra={"fields": {"drain_delay_s": config.drain_delay_s, "grace_s": config.shutdown_grace_s}}
    )
    await health.enter_graceful_shutdown()
    # Load balancers (Envoy's health checks, Kubernetes endpoints) see NOT_SERVING and stop sending here;
    # calls that still arrive meanwhile are served.
    await asyncio.sleep(config.drain_delay_s)
    await asyncio.gather(server.stop(config.shutdown_grace_s), *(runner.cleanup() for runner in rest_runners))
    if health_server is not None:
        await health_server.stop(0)
    await dataplane.close()
    executor.shutdown(wait=True, cancel_futures=True)
    shutdown_tracing()
    log.info("stopped")


async def start_health_server(health: HealthServicer, host: str, port: int, shared: bool) -> grpc.aio.Server:
    """A plaintext port with grpc.health.v1 only, for probes that cannot speak (m)TLS, such as kubelet's; the
    workers of a replica share it (``shared``), and a probe gets the state of the worker it reaches."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(shared))])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server


async def start_rest_ports(
    config: ServerConfig, corridor: Corridor, manager: ModelManager, shared: bool
) -> list[web.AppRunner]:
    """The REST APIs on their ports (those not 0), on this loop and through the same corridor as gRPC, with the
    gRPC port's TLS; their runners stop them, letting requests in flight finish within the shutdown grace."""
    triton = TritonExtensions(corridor.registry, corridor.dataplane.statistics, manager)
    sides = [
        (config.rest_port, KServeV2Rest(corridor.registry, triton).routes()),
        (config.tfserving_rest_port, TFServingRest(corridor.registry).routes()),
    ]
    context = server_ssl_context(config.tls)
    runners = []
    for port, routes in sides:
        if port:
            side = rest.RestSide(corridor, routes, config.max_message_bytes, config.host, port)
            runners.append(await rest.start_site(side, config.host, port, context, shared, config.shutdown_grace_s))
            log.info("listening", extra={"fields": {"address": f"{config.host}:{port}", "api": routes[0].name}})
    return runners


def build_rate_limiter(config: ServerConfig) -> RateLimiter | None:
    """Each caller's token bucket; None without a rate, or without authentication (no caller to key it by)."""
    if not config.rate_limit_per_key or (config.api_keys_file is None and config.jwt.jwks_file is None):
        return None
    unit = "examples" if config.rate_limit_unit == "example" else "requests"
    return RateLimiter(config.rate_limit_per_key, config.rate_limit_burst, unit)


def build_authenticator(config: ServerConfig, limiter: RateLimiter | None) -> Authenticator | None:
    """API keys, JWTs, both, or None (no authentication: loopback development)."""
    keys = ApiKeyStore(config.api_keys_file) if config.api_keys_file else None
    jwt = config.jwt
    tokens = (
        JwtVerifier(jwt.jwks_file, jwt.issuer, jwt.audiences, jwt.algorithms, jwt.leeway_s) if jwt.jwks_file else None
    )
    if keys is None and tokens is None:
        return None
    failures = (
        RateLimiter(config.auth_failures_per_s, config.auth_failure_burst, "failed authentications")
        if config.auth_failures_per_s
        else None
    )
    return Authenticator(keys, tokens, limiter, failures, config.trusted_proxies)


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    """TLS credentials of the gRPC port (mTLS when a client CA is set); None when the port is plaintext."""
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    pair = (tls.key_file.read_bytes(), tls.cert_file.read_bytes())
    client_ca = tls.ca_file.read_bytes() if tls.ca_file is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The REST ports' TLS, the gRPC port's: its certificate, and client certificates required under mTLS."""
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file is not None:
        context.load_verify_locations(tls.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def run(config: ServerConfig) -> None:
    """Blocking entry point used by ``tensorgate serve``."""
    asyncio.run(serve(config))
