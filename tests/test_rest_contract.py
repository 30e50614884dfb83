"""The REST facade keeps the contract its OpenAPI document states, as schemathesis checks it (`--checks all`):
every status, content type and body the gateway answers is one the document lists (Envoy's own refusals included),
undeclared methods get 405 with Allow, and the document refuses what the server refuses. Run with auth off on the
shared stack (the admin operations left out: they would unload the model other tests use) and with API keys on a
stack of its own (every operation: a predict key meets the admin operations' 403). Then Swagger's "Authorize" with
a key and "Try it out" on predict, in Chromium.

The runs are bounded (examples per operation, a fixed seed, deterministic generation) so they stay well under a
minute each; tests/contract/ holds schemathesis' configuration and hooks, which say why each exception exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tensorgate.clients.datasets import MnistData

from conftest import ServerProcess, add_key, mnist_inputs, start_server

CONTRACT = Path(__file__).resolve().parent / "contract"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
ADMIN_OPERATIONS = r":(load|unload|reload|setLabels)$"


@dataclass
class Keyed:
    stack: ServerProcess
    predict_key: str
    admin_key: str


@pytest.fixture(scope="module")
def keyed(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    """The whole stack over mnist with API keys: one with the predict scope, one with predict and admin."""
    root = tmp_path_factory.mktemp("contract-repository")
    shutil.copytree(repository / "mnist", root / "mnist")
    work = tmp_path_factory.mktemp("contract")
    keys_file = work / "keys.toml"
    predict_key, admin_key = add_key(keys_file, "reader", "predict"), add_key(keys_file, "ops", "predict,admin")
    stack = start_server(root, work / "stack.log", "--api-keys-file", str(keys_file), gateway=True)
    yield Keyed(stack, predict_key, admin_key)
    assert stack.stop() == 0, stack.log()[-5000:]


def schemathesis(gateway_url: str, workdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """schemathesis with every check against the gateway's own document, bounded and reproducible (its cache goes
    to ``workdir``)."""
    command = [str(SCHEMATHESIS), "--config-file", str(CONTRACT / "schemathesis.toml"), "run"]
    command += [f"{gateway_url}/openapi.json", "--checks", "all", "--max-examples", "15", "--seed", "20261203"]
    command += ["--generation-deterministic", "--request-timeout", "30", "--workers", "1", *options]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(CONTRACT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=workdir)
    print(result.stdout[-6000:])
    return result


def test_schemathesis_finds_no_failure_without_auth(stack: ServerProcess, tmp_path: Path) -> None:
    result = schemathesis(stack.gateway_url, tmp_path, "--exclude-path-regex", ADMIN_OPERATIONS)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Tested: 8" in result.stdout  # every operation but the four admin ones ran


def test_schemathesis_finds_no_failure_with_a_key(keyed: Keyed, tmp_path: Path) -> None:
    result = schemathesis(keyed.stack.gateway_url, tmp_path, "--header", f"x-api-key: {keyed.predict_key}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Tested: 12" in result.stdout


def test_swagger_authorizes_with_a_key_and_try_it_out_predicts(keyed: Keyed, mnist: MnistData, tmp_path: Path) -> None:
    """Headless Chromium opens /docs, enters the key under "Authorize", runs the predict example as the document
    gives it (the first MNIST test image), and reads the class off the page; the same call without the key is 401."""
    from playwright.sync_api import sync_playwright

    chromium_flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=chromium_flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"{keyed.stack.gateway_url}/docs")
            page.locator("button.authorize").first.click()
            dialog = page.locator(".dialog-ux")
            dialog.locator("input").first.fill(keyed.predict_key)
            dialog.locator("button.authorize").first.click()
            dialog.locator("button.btn-done").first.click()
            operation = page.locator("#operations-InferenceService-Predict")
            operation.locator(".opblock-summary").first.click()
            operation.locator(".try-out__btn").click()
            operation.locator("button.execute").click()
            live = operation.locator(".live-responses-table")
            live.locator(".response-col_description pre").first.wait_for(timeout=30_000)
            shown = live.locator(".response-col_description pre").first.inner_text()
            status = live.locator("tr.response td.response-col_status").first.inner_text()
            operation.screenshot(path=str(tmp_path / "docs-authorized-try-it-out.png"))
        finally:
            browser.close()
    assert status.strip() == "200", shown
    probabilities = json.loads(shown)["outputs"]["output_0"]["floatValues"]
    assert int(np.argmax(probabilities)) == mnist.y_test[0]
    spec = json.loads((Path(__file__).resolve().parent.parent / "gateway" / "openapi.json").read_text())
    body = spec["paths"]["/v1/models/{model}:predict"]["post"]["requestBody"]["content"]["application/json"]
    example = np.array(body["example"]["inputs"]["keras_tensor"]["floatValues"]).reshape(1, 28, 28)
    np.testing.assert_allclose(example, mnist_inputs(mnist.x_test[:1]), atol=1e-4)  # the example is that image
