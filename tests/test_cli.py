"""The `tensorgate` command against the running server, and `train` twice for version numbers."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from tensorgate.clients.datasets import MnistData

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
