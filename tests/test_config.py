"""Configuration precedence: defaults < TOML file < TF Serving's MODEL_* variables < TENSORGATE_* environment <
flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from tensorgate.server.config import ConfigError, ServerConfig, load_config


def test_defaults_work_on_a_laptop() -> None:
    config = load_config(environ={})
    assert config == ServerConfig()
    assert (config.host, config.port, config.model_repository) == ("127.0.0.1", 8500, Path("models"))


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "tensorgate.toml"
    file.write_text('port = 9000\nmodel_workers = 3\nlog_level = "DEBUG"\nstream_window = 4\n')
    environ = {"TENSORGATE_PORT": "9100", "TENSORGATE_MODEL_WORKERS": "5", "HOME": "/root"}
    config = load_config(file, {"port": "9200", "host": None}, environ)
    assert (config.port, config.model_workers, config.log_level, config.stream_window) == (9200, 5, "DEBUG", 4)
    assert config.host == "127.0.0.1"


def test_runtime_is_a_knob_like_any_other() -> None:
    assert load_config(environ={}).runtime == "auto"
    assert load_config(environ={"TENSORGATE_RUNTIME": "tflite"}).runtime == "tflite"
    assert load_config(flags={"runtime": "tensorflow"}, environ={}).runtime == "tensorflow"


@pytest.mark.parametrize(
    ("file_text", "environ", "message"),
    [
        ("port = 70000\n", {}, "port"),
        ('runtime = "onnx"\n', {}, "runtime"),
        ("", {"TENSORGATE_MODEL_WORKERS": "zero"}, "model_workers"),
        ("prot = 1\n", {}, "prot"),
        ("port = \n", {}, "cannot read configuration file"),
    ],
)
def test_invalid_values_are_reported(tmp_path: Path, file_text: str, environ: dict[str, str], message: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(file_text)
    with pytest.raises(ConfigError, match=message):
        load_config(file, environ=environ)


def test_plaintext_beyond_loopback_is_an_explicit_choice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not loopback: configure tls"):
        load_config(flags={"host": "0.0.0.0"}, environ={})
    opted_in = load_config(flags={"host": "0.0.0.0", "allow_plaintext": "true"}, environ={})
    assert opted_in.allow_plaintext and opted_in.exposed_plaintext() == ["tls", "gateway_tls"]
    assert load_config(
        flags={"host": "0.0.0.0", "allow_plaintext": "true", "gateway": "false"}, environ={}
    ).exposed_plaintext() == ["tls"]
    assert load_config(environ={}).exposed_plaintext() == []  # loopback
    assert load_config(flags={"host": "::1"}, environ={}).host == "::1"


def test_tf_serving_variables_choose_the_repository_and_one_model(tmp_path: Path) -> None:
    file = tmp_path / "tensorgate.toml"
    file.write_text('model_repository = "/from/file"\n')
    tf_serving = {"MODEL_BASE_PATH": "/models", "MODEL_NAME": "mnist"}
    config = load_config(file, environ=tf_serving)
    assert (config.model_repository, config.model_name) == (Path("/models"), "mnist")
    ours = {**tf_serving, "TENSORGATE_MODEL_REPOSITORY": "/srv", "TENSORGATE_MODEL_NAME": "scorer"}
    assert load_config(environ=ours).model_name == "scorer"
    assert load_config(flags={"model_name": "other"}, environ=ours).model_name == "other"
    assert load_config(environ=ours).model_repository == Path("/srv")
    # Empty variables are unset ones, as in a shell.
    assert load_config(environ={"MODEL_NAME": "", "MODEL_BASE_PATH": ""}) == ServerConfig()
    for name in ("../mnist", "a/b", ".hidden"):
        with pytest.raises(ConfigError, match="model_name"):
            load_config(environ={"MODEL_NAME": name})


def test_tls_settings_are_checked_together(tmp_path: Path) -> None:
    pem = tmp_path / "server.pem"
    pem.write_text("not checked here; the TLS stack reads it")
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        load_config(flags={"tls": {"cert_file": str(pem)}}, environ={})
    with pytest.raises(ConfigError, match="is not a readable file"):
        load_config(flags={"tls": {"cert_file": str(pem), "key_file": str(tmp_path / "missing.pem")}}, environ={})
    with pytest.raises(ConfigError, match=r"upstream_tls\.ca_file"):  # Envoy must be able to verify the server
        load_config(flags={"tls": {"cert_file": str(pem), "key_file": str(pem)}}, environ={})
    with pytest.raises(ConfigError, match=r"jwt\.issuer is required"):
        load_config(environ={"TENSORGATE_JWT__JWKS_FILE": str(pem)})
    config = load_config(environ={"TENSORGATE_JWT__AUDIENCES": "a, b", "TENSORGATE_JWT__ALGORITHMS": "ES256"})
    assert (config.jwt.audiences, config.jwt.algorithms) == (["a", "b"], ["ES256"])


def test_envoy_files_are_only_checked_where_envoy_runs(tmp_path: Path) -> None:
    missing = {"cert_file": str(tmp_path / "gateway.pem"), "key_file": str(tmp_path / "gateway-key.pem")}
    with pytest.raises(ConfigError, match="is not a readable file"):
        load_config(flags={"gateway_tls": missing}, environ={})
    assert load_config(flags={"gateway_tls": missing, "gateway": "false"}, environ={}).gateway_tls.enabled


def test_kubernetes_service_links_are_not_settings() -> None:
    environ = {"TENSORGATE_PORT": "tcp://10.0.0.7:8500", "TENSORGATE_METRICS_PORT": "9000"}
    assert (load_config(environ=environ).port, load_config(environ=environ).metrics_port) == (8500, 9000)


def test_nested_settings_merge_key_by_key_across_sources(tmp_path: Path) -> None:
    file = tmp_path / "tensorgate.toml"
    file.write_text("[batching]\nmax_batch_size = 64\nmax_queue_size = 10\nenabled = false\n")
    environ = {"TENSORGATE_BATCHING__MAX_QUEUE_SIZE": "20", "TENSORGATE_BATCHING__ENABLED": "true"}
    batching = load_config(file, {"batching": {"enabled": "false"}}, environ).batching
    assert (batching.max_batch_size, batching.max_queue_size, batching.enabled) == (64, 20, False)


def test_an_empty_value_unsets_an_optional_file_the_config_file_sets(tmp_path: Path) -> None:
    """deploy/containers.py runs the production file without a JWKS: ``--jwt-jwks-file ""`` turns JWTs off."""
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    (tmp_path / "keys.toml").write_text("")
    file = tmp_path / "tensorgate.toml"
    file.write_text(
        f'api_keys_file = "{tmp_path}/keys.toml"\n[jwt]\njwks_file = "{tmp_path}/jwks.json"\nissuer = "i"\n'
    )
    assert load_config(file, environ={}).jwt.jwks_file == tmp_path / "jwks.json"
    assert load_config(file, {"jwt": {"jwks_file": ""}}, environ={}).jwt.jwks_file is None
    config = load_config(file, environ={"TENSORGATE_JWT__JWKS_FILE": "", "TENSORGATE_API_KEYS_FILE": ""})
    assert (config.jwt.jwks_file, config.api_keys_file) == (None, None)


def test_preferred_batch_sizes_are_comma_separated_in_environment_and_flags(tmp_path: Path) -> None:
    environ = {"TENSORGATE_BATCHING__PREFERRED_BATCH_SIZES": "32, 8,1"}
    assert load_config(environ=environ).batching.preferred_batch_sizes == (1, 8, 32)
    flags = {"batching": {"preferred_batch_sizes": "4,16"}}
    assert load_config(flags=flags, environ=environ).batching.preferred_batch_sizes == (4, 16)
    file = tmp_path / "tensorgate.toml"
    file.write_text("[batching]\npreferred_batch_sizes = [16, 2]\n")
    assert load_config(file, environ={}).batching.preferred_batch_sizes == (2, 16)
    with pytest.raises(ConfigError, match=r"batching\.preferred_batch_sizes"):
        load_config(environ={"TENSORGATE_BATCHING__PREFERRED_BATCH_SIZES": "8,eight"})
    with pytest.raises(ConfigError, match="must be positive"):
        load_config(flags={"batching": {"preferred_batch_sizes": "0,8"}}, environ={})


def test_lists_are_comma_separated_not_json_in_the_environment() -> None:
    config = load_config(environ={"TENSORGATE_TRUSTED_PROXIES": "10.0.0.0/8, ::1/128"})
    assert config.trusted_proxies == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError, match="jwt"):  # a table is set field by field, never as one JSON value
        load_config(environ={"TENSORGATE_JWT": '{"issuer": "https://issuer"}'})


def test_unknown_settings_are_errors_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batching\.max_batch"):
        load_config(environ={"TENSORGATE_BATCHING__MAX_BATCH": "8"})
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*missing\.toml"):
        load_config(tmp_path / "missing.toml", environ={})


def test_a_model_repository_is_a_directory_or_an_s3_url() -> None:
    assert load_config(environ={"TENSORGATE_MODEL_REPOSITORY": "models"}).model_repository == Path("models")
    url = "s3://my-bucket/team/models/"
    assert load_config(flags={"model_repository": url}, environ={}).model_repository == url
    for bad, message in [("s3://No_Bucket/x", "not a valid S3 bucket name"), ("ftp://host/models", "s3://bucket")]:
        with pytest.raises(ConfigError, match=message):
            load_config(flags={"model_repository": bad}, environ={})
