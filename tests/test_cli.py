"""The `tensorgate` command against the running server, `train` twice for version numbers, and the command's
parts: the client commands apart from the server, serve's flags and their help, the key file."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tensorgate.clients import cli as client_cli
from tensorgate.clients.datasets import MnistData
from tensorgate.server.commands.cli import argv_of_serve, build_parser, config_of, main
from tensorgate.server.config import ENV_PREFIX, NESTED, ServerConfig, load_config
from tensorgate.server.security.auth import hash_key, parse_key_file
from tensorgate.server.security.principal import SCOPES

from conftest import CLI, KeyedServer, ServerProcess


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_models_lists_states_and_signature(server: ServerProcess) -> None:
    listing = run_cli("models", "--target", server.target)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"mnist\n  version 1: available on (CPU:0 with tflite|GPU:0 with tensorflow)\n", listing.stdout)
    assert "broken\n  version 1: failed (cannot load SavedModel" in listing.stdout
    one = run_cli("models", "mnist", "--target", server.target)
    assert "input keras_tensor: float32 [-1, 28, 28]" in one.stdout
    missing = run_cli("models", "nope", "--target", server.target)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_predict_one_png(server: ServerProcess, mnist: MnistData, tmp_path: Path) -> None:
    image = tmp_path / "digit.png"
    Image.fromarray(mnist.x_test[0]).save(image)
    result = run_cli("predict", str(image), "--target", server.target)
    assert result.returncode == 0, result.stderr
    assert f"class {mnist.y_test[0]}" in result.stdout
    probabilities = [float(p.split(":")[1]) for p in result.stdout.split("probabilities:")[1].split()]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-3


def test_predict_fits_a_colour_image_of_another_size_to_the_signature(
    server: ServerProcess, mnist: MnistData, tmp_path: Path
) -> None:
    """mnist takes [-1, 28, 28]: a 56x56 RGB digit is converted to grayscale and resized, not refused."""
    image = tmp_path / "digit.jpg"
    Image.fromarray(mnist.x_test[0]).convert("RGB").resize((56, 56)).save(image, quality=95)
    result = run_cli("predict", str(image), "--target", server.target)
    assert result.returncode == 0, result.stderr
    assert f"class {mnist.y_test[0]}" in result.stdout
    scorer = run_cli("predict", str(image), "--model", "scorer", "--target", server.target)
    assert scorer.returncode == 2 and "predict and classify need one" in scorer.stderr


def test_classify_npz_to_jsonl_and_images_to_csv(server: ServerProcess, mnist: MnistData, tmp_path: Path) -> None:
    np.savez(tmp_path / "batch.npz", x=mnist.x_test[:300], y=mnist.y_test[:300])
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "classify", str(tmp_path / "batch.npz"), "--output", str(out), "--batch-size", "64", "--target", server.target
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 300 and rows[0]["name"].endswith("batch.npz:0") and rows[0]["label"] == mnist.y_test[0]
    assert "classified 300 examples" in result.stderr and "accuracy 0.9" in result.stderr

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(mnist.x_test[i]).save(images / f"{i}.png")
    result = run_cli("classify", str(images), "--output", str(tmp_path / "out.csv"), "--target", server.target)
    assert result.returncode == 0, result.stderr
    with (tmp_path / "out.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [row["name"] for row in table] == [f"{i}.png" for i in range(5)]
    assert sum(int(row["class"]) == mnist.y_test[i] for i, row in enumerate(table)) >= 4


def test_classify_mnist_test_set(server: ServerProcess, tmp_path: Path) -> None:
    result = run_cli("classify", "mnist-test", "--output", str(tmp_path / "all.csv"), "--target", server.target)
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stderr.rsplit("accuracy", 1)[1])
    assert accuracy >= 0.97
    assert len((tmp_path / "all.csv").read_text().splitlines()) == 10_001


def test_admin_commands_against_a_server_with_keys(keyed_server: KeyedServer) -> None:
    """load, unload, reload and labels take the admin scope and print the model as the server left it."""
    server, admin_key, reader_key = keyed_server.server, keyed_server.admin_key, keyed_server.reader_key
    try:
        as_admin = ["--target", server.target, "--api-key", admin_key]
        denied = run_cli("unload", "mnist", "--target", server.target, "--api-key", reader_key)
        assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
        anonymous = run_cli("reload", "mnist", "--target", server.target)
        assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr

        unloaded = run_cli("unload", "mnist", "1", *as_admin)
        assert unloaded.returncode == 0, unloaded.stderr
        assert unloaded.stdout.startswith("mnist\n") and "version 1: available" not in unloaded.stdout
        loaded = run_cli("load", "mnist", "1", *as_admin)
        assert loaded.returncode == 0, loaded.stderr
        assert "version 1: available" in loaded.stdout

        labelled = run_cli("labels", "mnist", "stable=1", "latest=1", *as_admin)
        assert labelled.returncode == 0, labelled.stderr
        assert "  labels: latest=1 stable=1\n" in labelled.stdout
        shown = run_cli("models", "mnist", "--target", server.target, "--api-key", reader_key)
        assert "  labels: latest=1 stable=1\n" in shown.stdout
        malformed = run_cli("labels", "mnist", "stable=one", *as_admin)
        assert malformed.returncode == 2 and "LABEL=VERSION" in malformed.stderr
        unknown = run_cli("labels", "mnist", "stable=7", *as_admin)
        assert unknown.returncode == 1 and "INVALID_ARGUMENT" in unknown.stderr
        cleared = run_cli("labels", "mnist", "--clear", *as_admin)
        assert cleared.returncode == 0 and "labels:" not in cleared.stdout

        reloaded = run_cli("reload", "mnist", *as_admin)
        assert reloaded.returncode == 0, reloaded.stderr
        assert "version 1: available" in reloaded.stdout
        missing = run_cli("load", "nope", *as_admin)
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    finally:
        run_cli("reload", "mnist", *as_admin)  # the fixture's server as it was, whatever failed


def test_train_twice_gives_the_next_version(tmp_path: Path) -> None:
    for expected in (1, 2):
        result = run_cli("train", "--repository", str(tmp_path), "--model", "digits", "--epochs", "1")
        assert result.returncode == 0, result.stderr
        assert f"exported digits version {expected}" in result.stdout
        assert float(result.stdout.split("test accuracy:")[1].split()[0]) > 0.9
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["1", "2"]
    assert (tmp_path / "digits" / "2" / "saved_model.pb").is_file()


def test_readme_test_command_is_what_ci_runs() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    test_command = readme.split("**Test**")[1].split("```bash\n")[1].split("\n")[0]
    assert test_command in (root / ".ci" / "run").read_text()


def test_every_command_prints_its_help() -> None:
    """``--help`` of each command renders (argparse formats help text with %, so a "95%" in a description broke
    ``serve --help`` once)."""
    commands = ["serve", "envoy-config", "train", "keys", "certs", "models", "predict", "classify"]
    commands += ["load", "unload", "reload", "labels"]
    for command in commands:
        result = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{command} --help: {result.stderr}"
        assert "usage: tensorgate" in result.stdout
    serve = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "95%" in serve


SERVER_SIDE = ("tensorgate.server", "tensorgate.gateway")


def test_client_commands_never_import_the_server() -> None:
    """The client commands run where only the client is installed: clients/cli.py names no server module, not even
    inside a function, and importing it loads none."""
    tree = ast.parse(Path(client_cli.__file__).read_text())
    named = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    named |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not [module for module in named if module.startswith(SERVER_SIDE)]
    script = "import sys, tensorgate.clients.cli; print(*sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert not [module for module in loaded.stdout.split() if module.startswith(SERVER_SIDE)]


def test_the_client_module_offers_the_client_commands_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as shown:
        client_cli.main(["predict", "--help"])
    assert shown.value.code == 0 and "--target" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        client_cli.main(["serve"])
    assert refused.value.code == 2 and "invalid choice: 'serve'" in capsys.readouterr().err


def serve_help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "120")  # argparse wraps help to the terminal's width
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    return capsys.readouterr().out


def test_serve_help_groups_the_flags_with_types_and_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = serve_help(capsys, monkeypatch)
    titles = re.findall(r"^(\S[^\n]*):$", text, re.MULTILINE)
    assert titles[:6] == ["options", "server", "models and runtime", "batching", "limits", "TLS"]
    assert {"tls", "gateway tls", "authentication and rate limits", "jwt", "gateway (Envoy)", "edge", "tracing"} <= set(
        titles
    )
    assert "batching:\n  Default batching knobs; <model>/model.toml overrides them." in text
    assert re.search(r"--batching-max-batch-size INT\s+Most examples in one model call. \(default: 256\)", text)
    assert re.search(r"--batching-preferred-batch-sizes INT,\.\.\.\s", text)
    assert re.search(r"--trusted-proxies TEXT,\.\.\.\s+.*\(default: 127\.0\.0\.0/8,::1/128\)", text, re.DOTALL)
    assert "--log-level {DEBUG,INFO,WARNING,ERROR}" in text and "--gateway, --no-gateway" in text
    assert "--tls-cert-file PATH" in text and "(default: true)" in text
    assert "BATCHING." not in text and "(default: None)" not in text and "95%" in text


def test_every_config_field_has_one_flag(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    flags = re.findall(r"^  (--[a-z0-9-]+)", serve_help(capsys, monkeypatch), re.MULTILINE)
    expected = set()
    for name, field in ServerConfig.model_fields.items():
        table = field.annotation
        subfields = table.model_fields if isinstance(table, type) and issubclass(table, BaseModel) else {"": None}
        expected |= {f"--{name}-{sub}".rstrip("-").replace("_", "-") for sub in subfields}
    assert len(flags) == len(set(flags))
    assert expected <= set(flags)


def test_serve_flags_reach_the_config_and_the_server_children(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("TENSORGATE_")]:
        monkeypatch.delenv(name)
    argv = ["--port", "9000", "--batching-preferred-batch-sizes", "32,8", "--jwt-audiences", "a, b"]
    args = build_parser().parse_args(["serve", "--train-if-empty", *argv])
    assert argv_of_serve(args) == argv  # what the supervisor passes on: the config's flags, as given
    config = config_of(args)
    assert (config.port, config.batching.preferred_batch_sizes, config.jwt.audiences) == (9000, (8, 32), ["a", "b"])


def test_keys_add_list_and_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # main sets it; the monkeypatch restores it
    keys = tmp_path / "keys.toml"
    assert main(["keys", "add", "ops", "--scopes", ",".join(SCOPES), "--models", "mnist", "--file", str(keys)]) == 0
    key = capsys.readouterr().out.strip()
    (principal,) = parse_key_file(keys.read_text()).values()
    assert hash_key(key) in parse_key_file(keys.read_text())
    assert (principal.name, principal.scopes, principal.models) == ("ops", frozenset(SCOPES), frozenset({"mnist"}))
    assert main(["keys", "add", "bad", "--scopes", "predict,root", "--file", str(keys)]) == 2
    assert f"scopes must be among {', '.join(SCOPES)}; got predict,root" in capsys.readouterr().err
    assert main(["keys", "add", "reader", "--file", str(keys)]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--file", str(keys)]) == 0
    assert (
        capsys.readouterr().out == f"ops: {', '.join(sorted(SCOPES))} (models: mnist)\nreader: predict (models: all)\n"
    )
    assert main(["keys", "revoke", "ops", "--file", str(keys)]) == 0
    assert "revoked the key of 'ops'" in capsys.readouterr().err
    assert [p.name for p in parse_key_file(keys.read_text()).values()] == ["reader"]


def test_keys_refuse_an_unknown_name_and_say_when_a_key_is_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    keys = tmp_path / "keys.toml"
    assert main(["keys", "add", "ops", "--file", str(keys)]) == 0
    first = capsys.readouterr()
    assert first.err == ""
    before = keys.read_text()
    assert main(["keys", "revoke", "opz", "--file", str(keys)]) == 2
    assert f"no key named 'opz' in {keys}: nothing revoked" in capsys.readouterr().err
    assert keys.read_text() == before
    assert main(["keys", "add", "ops", "--scopes", "admin", "--file", str(keys)]) == 0
    second = capsys.readouterr()
    assert second.out.strip() != first.out.strip()  # stdout stays the new key alone
    assert "replaced the key of 'ops': the old key no longer works" in second.err
    (digest, principal), *others = parse_key_file(keys.read_text()).items()
    assert not others and digest == hash_key(second.out.strip()) and principal.scopes == {"admin"}


def test_version_and_any_case_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    for parser in (build_parser(), client_cli.build_parser()):
        with pytest.raises(SystemExit) as shown:
            parser.parse_args(["--version"])
        assert shown.value.code == 0 and capsys.readouterr().out == f"tensorgate {version('tensorgate')}\n"
    args = build_parser().parse_args(["serve", "--log-level", "debug", "--no-gateway"])
    assert args.gateway is False and config_of(args).log_level == "DEBUG"
    assert argv_of_serve(args) == ["--no-gateway", "--log-level", "debug"]  # what the supervisor's children get


def _config_fields() -> list[tuple[str, FieldInfo]]:
    """Every setting of ServerConfig as (dotted name, field): ``port``, ``batching.max_batch_size``, ..."""
    fields = []
    for name, field in ServerConfig.model_fields.items():
        table = field.annotation
        if isinstance(table, type) and issubclass(table, BaseModel):
            fields += [(f"{name}.{sub}", sub_field) for sub, sub_field in table.model_fields.items()]
        else:
            fields.append((name, field))
    return fields


def _changed_value(field: FieldInfo, path: Path) -> Any:
    """A valid value of ``field`` other than its default, from its type and constraints (or its first example);
    a path field gets ``path``, an existing file."""
    if field.examples:
        return field.examples[0]
    default = field.get_default(call_default_factory=True)
    annotation, args = field.annotation, get_args(field.annotation)
    upper = next((m.le for m in field.metadata if hasattr(m, "le")), None)
    if annotation is bool:
        return not default
    if get_origin(annotation) is Literal:
        return next(arg for arg in args if arg != default)
    if annotation in (int, float):
        step = 1 if annotation is int else 0.5
        return default + step if upper is None or default + step <= upper else (default + upper) / 2
    if annotation is Path or Path in args:
        return path
    if annotation is str:
        return "changed"
    if get_origin(annotation) is list:
        return ["a", "b"]
    if get_origin(annotation) is tuple:
        return (4, 16)
    raise AssertionError(f"no value for a field of type {annotation}")


def _as_text(value: Any) -> str:
    """How the environment and flags spell a value: lists comma-separated, booleans in lower case."""
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.fixture()
def permissive_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration file under which any one setting may change alone: every TLS endpoint complete (so a
    non-loopback host, an mTLS port and a server behind Envoy all validate), JWTs with an issuer; no TENSORGATE_*
    variable of the test's own environment."""
    for name in [name for name in os.environ if name.startswith("TENSORGATE_")]:
        monkeypatch.delenv(name)
    lines = ['[jwt]\njwks_file = "{0}"\nissuer = "https://issuer"']
    lines += [f'[{table}]\ncert_file = "{{0}}"\nkey_file = "{{0}}"\nca_file = "{{0}}"' for table in TLS_TABLES]
    pem = tmp_path / "any.pem"
    pem.write_text("PEM")
    config = tmp_path / "permissive.toml"
    config.write_text("\n".join(lines).format(pem) + "\n")
    return config


TLS_TABLES = ("tls", "gateway_tls", "upstream_tls")


@pytest.mark.parametrize(("name", "field"), _config_fields(), ids=[name for name, _ in _config_fields()])
def test_every_setting_is_settable_by_flag_and_by_environment(
    name: str, field: FieldInfo, permissive_config: Path, tmp_path: Path
) -> None:
    value = _changed_value(field, tmp_path / "other.pem")
    if isinstance(value, Path):
        value.write_text("PEM")
    table, _, leaf = name.rpartition(".")
    expected = load_config(permissive_config, {table: {leaf: value}} if table else {leaf: value}, environ={})
    want = getattr(getattr(expected, table) if table else expected, leaf)
    default = field.get_default(call_default_factory=True)
    assert want != default

    flag = "--" + name.replace(".", "-").replace("_", "-")
    argv = (
        ([flag] if value else [flag.replace("--", "--no-", 1)]) if isinstance(value, bool) else [flag, _as_text(value)]
    )
    from_flag = config_of(build_parser().parse_args(["serve", "--config", str(permissive_config), *argv]))
    variable = ENV_PREFIX + name.upper().replace(".", NESTED)
    from_env = load_config(permissive_config, environ={variable: _as_text(value)})
    for config in (from_flag, from_env):
        assert getattr(getattr(config, table) if table else config, leaf) == want
