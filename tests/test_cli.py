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
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

from tensorgate.clients import cli as client_cli
from tensorgate.clients.datasets import MnistData
from tensorgate.server.commands.cli import argv_of_serve, build_parser, config_of, main
from tensorgate.server.config import ServerConfig
from tensorgate.server.security.auth import hash_key, parse_key_file
from tensorgate.server.security.principal import SCOPES

from conftest import CLI, ServerProcess


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
    commands = ["serve", "models", "predict", "classify", "train", "keys", "certs", "envoy-config"]
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
    assert "--log-level {DEBUG,INFO,WARNING,ERROR}" in text and "--gateway {true,false}" in text
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
    assert main(["keys", "list", "--file", str(keys)]) == 0
    assert capsys.readouterr().out == f"ops: {', '.join(sorted(SCOPES))}\n"
    assert main(["keys", "revoke", "ops", "--file", str(keys)]) == 0
    assert parse_key_file(keys.read_text()) == {}
