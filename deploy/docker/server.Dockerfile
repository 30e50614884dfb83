# tensorgate gRPC model server, CPU build (TensorFlow for the CPU: the `cpu` extra).
#
# Build from the repository root, which must be the build context (pyproject.toml lives there):
#   docker build -f deploy/docker/server.Dockerfile -t tensorgate/server:0.1.0 .
# There is deliberately no .dockerignore: only the paths the COPY lines below name enter the image, and
# BuildKit (Docker's default builder) transfers only those from the context, so a working tree's .venv/,
# node_modules/, models/ or certificates never reach the build.
#
# Alone (`docker run`), the image runs the gRPC server and Envoy (REST) beside it, configured by its environment
# (below). In production (deploy/compose.yaml, deploy/kubernetes/) it runs only the gRPC server (`--no-gateway`),
# Envoy runs in its own container (envoy.Dockerfile) in front of every replica, and configuration comes from a
# mounted TOML file (`--config /etc/tensorgate/config/tensorgate.toml`), TENSORGATE_* variables and flags;
# certificates, API keys and the JWKS are mounted under /etc/tensorgate/tls and /etc/tensorgate/auth,
# the model repository at /models.

# The base is a build argument: the pinned public image by default, or any Debian-like image with python3 and
# python3-venv (deploy/containers.py builds on a local Debian bookworm made by debootstrap: `--build-arg
# BASE_IMAGE=localhost/debian:bookworm`).
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

FROM ${BASE_IMAGE}
# A fixed uid/gid, so that Kubernetes' runAsUser/fsGroup and the owners of mounted files can name it.
RUN groupadd --system --gid 10001 tensorgate \
    && useradd --system --uid 10001 --gid tensorgate --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tensorgate
RUN python3 -m venv /opt/venv
WORKDIR /src
# Two layers: the dependencies (TensorFlow is most of the image), rebuilt only when pyproject.toml changes, then
# the project itself, a few MB, rebuilt when the sources change. pip's cache is a build cache mount, never a
# layer. Where PyPI is reached through a TLS-intercepting proxy, pass its CA as the build secret `ca`
# (`--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`): it is mounted for these steps only, never stored.
COPY pyproject.toml deploy/docker/requirements.py ./
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 requirements.py pyproject.toml server > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --disable-pip-version-check -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY server/ server/
COPY clients/ clients/
COPY gateway/ gateway/
COPY protos/tensorgate/ protos/tensorgate/
# A regular (not editable) install of the ".[server]" extra, whose requirements the layer above holds.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/venv/bin/pip install --disable-pip-version-check --no-deps ".[server]" \
    && rm -rf /src
# HOME=/tmp: libraries that keep a cache under ~ (Keras) write where Kubernetes mounts an emptyDir, since the
# root filesystem is read-only there. No bytecode is written at run time for the same reason.
# `docker run -v $PWD/models:/models IMAGE` needs no configuration file: every model of /models (MODEL_BASE_PATH,
# as in TF Serving's image; -e MODEL_NAME=m serves /models/m alone), on every interface, in plaintext:
# TENSORGATE_ALLOW_PLAINTEXT is that explicit opt-in, and serve logs a warning naming the plaintext listeners.
# deploy/compose.yaml and deploy/kubernetes/ set TENSORGATE_ALLOW_PLAINTEXT=false and configure TLS.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MODEL_BASE_PATH=/models \
    TENSORGATE_HOST=0.0.0.0 \
    TENSORGATE_TFSERVING_REST_PORT=8501 \
    TENSORGATE_ALLOW_PLAINTEXT=true
USER 10001:10001
WORKDIR /tmp
# 8500 gRPC (mTLS in production), 8000 the Open Inference Protocol's REST API, 8501 TF Serving's REST API (both
# with the gRPC port's TLS), 8080 Envoy (REST and gRPC; not in production, where Envoy runs apart), 8502
# Prometheus /metrics, 8510 the plaintext gRPC health port for kubelet probes. The health port is off unless the
# configuration sets health_port (the deployments set 8510).
EXPOSE 8500 8000 8501 8080 8502 8510
# No HEALTHCHECK: the health port is a choice of the configuration, and Kubernetes probes it itself;
# deploy/compose.yaml declares a healthcheck with the port it configures.
# `docker run ... IMAGE` serves gRPC on 8500 and, through the Envoy the server starts beside it, REST and gRPC on
# 8080. Compose and Kubernetes run Envoy in a container of its own: their arguments are
# `--no-gateway --config /etc/tensorgate/config/tensorgate.toml` (a mounted file, with TLS).
ENTRYPOINT ["tensorgate", "serve"]
