# tensorgate gRPC model server, NVIDIA GPU build (TensorFlow with its CUDA libraries: the `gpu` extra).
#
# Build from the repository root, which must be the build context:
#   docker build -f deploy/docker/server-gpu.Dockerfile -t tensorgate/server-gpu:0.1.0 .
# No .dockerignore, on purpose: only the paths the COPY lines name enter the image (see server.Dockerfile).
#
# The CUDA libraries TensorFlow was built against come from pip (tensorflow[and-cuda] pins the nvidia-*-cu12
# wheels), so the image needs only the host's driver. The nvidia/cuda "base" image adds what makes the NVIDIA
# container toolkit inject that driver and refuse a driver too old for CUDA 12 up front (NVIDIA_VISIBLE_DEVICES,
# NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_CUDA), instead of TensorFlow silently falling back to the CPU.
# Ubuntu 24.04's Python is 3.12, which the project (requires-python >= 3.11) and TensorFlow support.
# Run it with a GPU: `docker run --gpus all ...`, or deploy/kubernetes/server-gpu-deployment.yaml; the
# configuration selects the device with device = "gpu:0" (TENSORGATE_DEVICE).

# The base is a build argument as in server.Dockerfile; this Dockerfile installs python3 itself, so any Debian or
# Ubuntu base builds it (on one without the NVIDIA variables the toolkit's driver checks are the host's to make).
ARG BASE_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04

FROM ${BASE_IMAGE}
# Ubuntu's archive keeps only the newest build of a package, so an exact apt pin would break the build at the
# next security update; the base image tag pins the release and with it the Python minor version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# The same uid/gid as the CPU image (server.Dockerfile), so both run under one Kubernetes securityContext.
RUN groupadd --system --gid 10001 tensorgate \
    && useradd --system --uid 10001 --gid tensorgate --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tensorgate
RUN python3 -m venv /opt/venv
WORKDIR /src
# The dependencies, then the project (--no-deps), in two layers; pip's cache and the optional CA secret: all as in
# server.Dockerfile.
COPY pyproject.toml deploy/docker/requirements.py ./
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 requirements.py pyproject.toml server-gpu > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --disable-pip-version-check -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY server/ server/
COPY clients/ clients/
COPY gateway/ gateway/
COPY protos/tensorgate/ protos/tensorgate/
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/venv/bin/pip install --disable-pip-version-check --no-deps ".[server-gpu]" \
    && rm -rf /src
# HOME=/tmp and no bytecode: the root filesystem is read-only under Kubernetes, /tmp an emptyDir.
# `docker run -v $PWD/models:/models IMAGE` needs no configuration file: every model of /models (MODEL_BASE_PATH,
# as in TF Serving's image; -e MODEL_NAME=m serves /models/m alone), on every interface, in plaintext:
# TENSORGATE_ALLOW_PLAINTEXT is that explicit opt-in, and serve logs a warning naming the plaintext listeners.
# deploy/compose.yaml and deploy/kubernetes/ set TENSORGATE_ALLOW_PLAINTEXT=false and configure TLS.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MODEL_BASE_PATH=/models \
    TENSORGATE_HOST=0.0.0.0 \
    TENSORGATE_TFSERVING_REST_PORT=8501 \
    TENSORGATE_ALLOW_PLAINTEXT=true
USER 10001:10001
WORKDIR /tmp
# 8500 gRPC (mTLS in production), 8000 and 8501 the Open Inference Protocol's and TF Serving's REST APIs, 8080
# Envoy when run alone, 8502 Prometheus /metrics, 8510 the plaintext gRPC health port for probes.
EXPOSE 8500 8000 8501 8080 8502 8510
# `docker run ... IMAGE` serves gRPC on 8500 and, through the Envoy the server starts beside it, REST and gRPC on
# 8080. Compose and Kubernetes run Envoy in a container of its own: their arguments are
# `--no-gateway --config /etc/tensorgate/config/tensorgate.toml` (a mounted file, with TLS).
ENTRYPOINT ["tensorgate", "serve"]
