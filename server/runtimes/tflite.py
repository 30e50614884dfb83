"""TFLite runtime: a SavedModel's serving signature run by the TFLite interpreter, and the cache of conversions.

For a small model the interpreter's call costs microseconds where TensorFlow's
costs a hundred or more, almost all of it Python-side dispatch holding the GIL.

The flatbuffer comes from ``model.tflite`` in the version directory when it
ships one (as TF Serving's ``--prefer_tflite_model``), else from converting
the SavedModel's signature at load time. A conversion is cached in
``<version>/.tensorgate-cache/`` when the version directory is writable, else
in ``$XDG_CACHE_HOME/tensorgate/tflite/<hash of the version path>/`` (default
``~/.cache``). A cache entry is named by a key over TensorFlow's version, the
signature, the version path and the size and mtime of ``saved_model.pb`` and
every file under ``variables/``, and by the SHA-256 of its content: a
SavedModel that changes gets a new key (the stale entry is never read and is
deleted when the new one is written), and an entry whose content does not
match its hash, does not load, or whose signature differs from the
SavedModel's is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tensorgate.server.runtimes.signature import Signature
from tensorgate.v1 import codec

log = logging.getLogger(__name__)

SHIPPED_FILE = "model.tflite"
CACHE_DIR_NAME = ".tensorgate-cache"
# Tolerance of the `auto` check against TensorFlow's outputs: floats within rtol/atol, everything else exact.
RTOL = 1e-4
ATOL = 1e-5
# TFLite has few kernels for strings and float64; a signature with either is left to TensorFlow.
UNSUPPORTED_DTYPES = {codec.dtype_from_name("string"), codec.dtype_from_name("float64")}

# TensorFlow 2.21 warns at every Interpreter construction that tf.lite moves to LiteRT; it still ships and works.
warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated", category=UserWarning)


class TfLiteUnavailable(Exception):
    """Why this version cannot be served with TFLite (the message says why)."""


class TfLiteRuntime:
    """One TFLite flatbuffer, run with one interpreter per calling thread (an interpreter is not thread-safe).

    The signature runner resizes an input and reallocates only when its
    shape differs from the previous call's on that thread, so a steady batch
    size costs nothing extra.
    """

    def __init__(self, model: bytes, signature: Signature, num_threads: int) -> None:
        self.signature = signature
        self.device = "CPU:0"
        self.runtime = "tflite"
        self.call_seconds = 0.0  # measured by the loader's warm-up
        self._model = model
        self._num_threads = num_threads
        self._local = threading.local()
        _check_signature(self._runner(), signature)

    @property
    def num_threads(self) -> int:
        """Threads of each interpreter."""
        return self._num_threads

    def with_threads(self, num_threads: int) -> TfLiteRuntime:
        """The same model, run by interpreters of ``num_threads`` threads."""
        return TfLiteRuntime(self._model, self.signature, num_threads)

    def _runner(self) -> Any:
        runner = getattr(self._local, "runner", None)
        if runner is None:
            try:
                interpreter = tf.lite.Interpreter(model_content=self._model, num_threads=self._num_threads)
                runner = interpreter.get_signature_runner(self.signature.name)
            except (ValueError, RuntimeError) as exc:
                raise TfLiteUnavailable(f"the interpreter cannot load the model: {exc}") from None
            self._local.runner = runner
        return runner

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on validated inputs; the outputs are copies, safe to keep."""
        outputs: dict[str, np.ndarray] = self._runner()(**inputs)
        return outputs


def load_tflite(path: Path, signature: Signature, op_types: set[str], num_threads: int) -> TfLiteRuntime:
    """The version at ``path`` as a TFLite runtime: shipped, cached or converted now. Raises TfLiteUnavailable.

    ``op_types`` are the SavedModel's: the converter drops Assert ops, so a model that checks its inputs with
    ``tf.debugging`` would accept what it refuses under TensorFlow; such a model is not converted.
    """
    unsupported = [
        f"{kind} {name!r} is {codec.dtype_name(info.dtype)}"
        for kind, specs in (("input", signature.inputs), ("output", signature.outputs))
        for name, info in specs.items()
        if info.dtype in UNSUPPORTED_DTYPES
    ]
    if unsupported:
        raise TfLiteUnavailable(f"TFLite serves no string or float64 tensors: {', '.join(unsupported)}")
    shipped = path / SHIPPED_FILE
    if shipped.is_file():
        return TfLiteRuntime(shipped.read_bytes(), signature, num_threads)
    if "Assert" in op_types:
        raise TfLiteUnavailable("the model checks its inputs with Assert ops, which TFLite drops")
    cache, key = cache_dir(path), cache_key(path, signature.name)
    for entry in cache.glob(f"{key}-*.tflite") if cache else ():
        try:
            model = entry.read_bytes()
            if entry.stem != f"{key}-{hashlib.sha256(model).hexdigest()}":
                raise TfLiteUnavailable("its content does not match its hash")
            return TfLiteRuntime(model, signature, num_threads)
        except (OSError, TfLiteUnavailable) as exc:
            fields = {"file": str(entry), "error": str(exc)}
            log.warning("corrupt cached tflite model removed", extra={"fields": fields})
            entry.unlink(missing_ok=True)
    model = convert(path, signature.name)
    runtime = TfLiteRuntime(model, signature, num_threads)
    if cache:
        _store(cache, key, model)
    return runtime


def convert(path: Path, signature_name: str) -> bytes:
    """The SavedModel's signature as a TFLite flatbuffer (builtin ops only)."""
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=[signature_name])
        model: bytes = converter.convert()
    except Exception as exc:  # the converter raises ConverterError, ValueError, and more
        text = str(exc)
        for line in text.splitlines():
            if line.startswith("TF Select ops:"):
                ops = line.removeprefix("TF Select ops:").strip()
                raise TfLiteUnavailable(f"TFLite has no builtin op for {ops}") from None
        first = text.strip().splitlines()[0][:300] if text.strip() else ""
        raise TfLiteUnavailable(f"conversion failed: {type(exc).__name__}: {first}") from None
    return model


def cache_dir(path: Path) -> Path | None:
    """Where conversions of the version at ``path`` are kept (created): inside it if writable, else the user's
    cache; None when neither can be written (every load then converts)."""
    inside = path / CACHE_DIR_NAME
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    outside = root / "tensorgate" / "tflite" / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    for candidate in (inside, outside):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    log.warning("no writable tflite cache", extra={"fields": {"tried": [str(inside), str(outside)]}})
    return None


def cache_key(path: Path, signature_name: str) -> str:
    """Changes whenever TensorFlow, the signature, or the SavedModel's graph or variables change."""
    digest = hashlib.sha256(f"{tf.__version__}\0{signature_name}\0{path.resolve()}".encode())
    files = [path / "saved_model.pb", *sorted((path / "variables").rglob("*"))]
    for file in files:
        if file.is_file():
            stat = file.stat()
            digest.update(f"\0{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _store(cache: Path, key: str, model: bytes) -> None:
    """Write the entry atomically (a concurrent reader sees all of it or nothing) and drop every other one.

    A cache that cannot be written costs a conversion at the next load, nothing more."""
    target = cache / f"{key}-{hashlib.sha256(model).hexdigest()}.tflite"
    try:
        with tempfile.NamedTemporaryFile(dir=cache, suffix=".tmp", delete=False) as file:
            file.write(model)
        os.replace(file.name, target)
        for entry in cache.glob("*.tflite"):
            if entry != target:
                entry.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("tflite model not cached", extra={"fields": {"dir": str(cache), "error": str(exc)}})


def _check_signature(runner: Any, signature: Signature) -> None:
    """TfLiteUnavailable unless the flatbuffer's signature has the SavedModel's names, dtypes and shapes."""
    for kind, details, specs in (
        ("inputs", runner.get_input_details(), signature.inputs),
        ("outputs", runner.get_output_details(), signature.outputs),
    ):
        if set(details) != set(specs):
            raise TfLiteUnavailable(f"its {kind} are {sorted(details)}, the SavedModel's {sorted(specs)}")
        for name, info in specs.items():
            dtype, shape = np.dtype(details[name]["dtype"]), tuple(int(d) for d in details[name]["shape_signature"])
            if dtype != codec.numpy_dtype(info.dtype) or not _compatible(info.shape, shape):
                raise TfLiteUnavailable(f"its {kind[:-1]} {name!r} is {dtype}{list(shape)}, not {info.describe()}")


def _compatible(expected: tuple[int, ...] | None, actual: tuple[int, ...]) -> bool:
    if expected is None:
        return True
    return len(expected) == len(actual) and all(a == b or -1 in (a, b) for a, b in zip(expected, actual, strict=True))


def outputs_mismatch(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> str:
    """Why ``actual`` (TFLite's) is not ``expected`` (TensorFlow's): floats beyond rtol 1e-4 / atol 1e-5,
    anything else not equal, or another dtype or shape. Empty when they match."""
    for name, want in sorted(expected.items()):
        got = actual[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            return f"output {name!r} is {got.dtype}{list(got.shape)}, TensorFlow's {want.dtype}{list(want.shape)}"
        if np.issubdtype(want.dtype, np.floating):
            if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
                difference = float(np.max(np.abs(got.astype(np.float64) - want)))
                return f"output {name!r} differs from TensorFlow's by up to {difference:.3g} (rtol {RTOL}, atol {ATOL})"
        elif not np.array_equal(got, want):
            return f"output {name!r} differs from TensorFlow's"
    return ""
