"""Warm-up requests: what runs on a version's servable before it becomes AVAILABLE.

The first that applies:

* ``<version>/assets.extra/tf_serving_warmup_requests``, TF Serving's file: a TFRecord of ``PredictionLog``
  records, each predict request run as recorded (server/models/tfserving_warmup.py);
* otherwise the model's ``[warmup]`` table (model.toml): one batch of ``inputs`` (zeros, seeded random data of
  the signature's dtypes and shapes with free dimensions as 1, or a ``.npy``/``.npz`` file from the version or
  model directory) and, unless turned off, one batch of every preferred batch size of ``[batching]`` (the rows of
  that batch repeated), so that the sizes the batcher pads to are traced before the first caller needs them.

Every request is checked against the signature first (input names, dtypes, fixed dimensions): a file that does
not fit the model fails the version with a reason naming the file, not a model error. Each request runs
``count`` times (TF Serving's ``num_request_iterations``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tensorgate.server.errors import ModelLoadError
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.repository import VersionPath
from tensorgate.server.runtimes.signature import Signature, TensorInfo
from tensorgate.v1 import codec

TFSERVING_REQUESTS_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
RANDOM_SEED = 0  # random warm-up data is the same at every load
RANDOM_INT_HIGH = 2  # random integers are 0 or 1: valid as indices into any non-empty table

Inputs = dict[str, np.ndarray]


def warmup_requests(version: VersionPath, signature: Signature, config: ModelConfig) -> list[Inputs]:
    """The requests that warm up ``version``, each checked against ``signature``. Raises ModelLoadError."""
    recorded = version.path / TFSERVING_REQUESTS_FILE
    if recorded.exists():
        # Imported only here: its messages carry TF Serving's proto names, which a process may define once, and the
        # test suite's process loads the tensorflow-serving-api package's.
        from tensorgate.server.models.tfserving_warmup import read_predict_requests

        requests = read_predict_requests(recorded, signature.name)
        for number, request in enumerate(requests, 1):
            check_request(signature, request, f"{recorded}: record {number}")
        return requests
    warmup = config.warmup
    sizes = list(config.batching.preferred_batch_sizes) if warmup.preferred_batch_sizes and batchable(signature) else []
    if warmup.inputs in ("zeros", "random"):
        rng = np.random.default_rng(RANDOM_SEED) if warmup.inputs == "random" else None
        return [generated_inputs(signature, batch, rng) for batch in (1, *sizes)]
    path = _find_file(version, warmup.inputs)
    request = load_file(path, signature)
    check_request(signature, request, f"warm-up inputs file {path}")
    return [request, *(repeated_rows(request, batch) for batch in sizes)]


def batchable(signature: Signature) -> bool:
    """Every input has a batch dimension of any size first (a preferred batch size applies to it)."""
    return all(t.shape is not None and len(t.shape) > 0 and t.shape[0] == -1 for t in signature.inputs.values())


def generated_inputs(signature: Signature, batch: int, rng: np.random.Generator | None = None) -> Inputs:
    """``batch`` examples per input of random data drawn from ``rng``, or zeros without one (strings are empty
    either way); free dimensions become 1, the batch dimension ``batch``; an input of unknown rank is a vector of
    one element."""
    inputs = {}
    for name, info in signature.inputs.items():
        shape = _example_shape(info, batch)
        dtype = codec.numpy_dtype(info.dtype)
        if dtype == codec.STRING_DTYPE:
            inputs[name] = np.full(shape, b"", dtype=object)
        elif rng is None:
            inputs[name] = np.zeros(shape, dtype)
        elif dtype.kind == "f":
            inputs[name] = rng.random(shape).astype(dtype)
        elif dtype.kind == "b":
            inputs[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            inputs[name] = rng.integers(0, RANDOM_INT_HIGH, shape).astype(dtype)
    return inputs


def _example_shape(info: TensorInfo, batch: int) -> tuple[int, ...]:
    if info.shape is None:
        return (1,)
    shape = tuple(1 if d < 0 else d for d in info.shape)
    return (batch, *shape[1:]) if shape and info.shape[0] == -1 else shape


def _find_file(version: VersionPath, name: str) -> Path:
    for folder in (version.path, version.path.parent):
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(f"warm-up inputs file {name!r} is in neither {version.path} nor {version.path.parent}")


def load_file(path: Path, signature: Signature) -> Inputs:
    """A ``.npy`` file as the one input of ``signature``, or a ``.npz`` file's arrays by input name; strings as
    NumPy bytes or text arrays (pickled objects are refused). Raises ModelLoadError."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = {name: loaded[name] for name in loaded.files}
        elif len(signature.inputs) == 1:
            arrays = {next(iter(signature.inputs)): loaded}
        else:
            raise ModelLoadError(
                f"warm-up inputs file {path}: a .npy file holds one input, the signature takes "
                f"{sorted(signature.inputs)}; use a .npz file with one array per input"
            )
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"warm-up inputs file {path}: {exc}") from None
    if any(array.ndim > 0 and len(array) == 0 for array in arrays.values()):
        raise ModelLoadError(f"warm-up inputs file {path}: holds no examples")
    return {name: _as_bytes(array) for name, array in arrays.items()}


def _as_bytes(array: np.ndarray) -> np.ndarray:
    """Text and fixed-width bytes arrays as the object arrays of bytes the runtimes take for strings."""
    if array.dtype.kind == "U":
        array = np.char.encode(array, "utf-8")
    if array.dtype.kind == "S":
        return array.astype(object)
    return array


def check_request(signature: Signature, inputs: Inputs, where: str) -> None:
    """ModelLoadError, starting with ``where``, unless ``inputs`` are exactly the signature's inputs with their
    dtypes and every fixed dimension."""
    if set(inputs) != set(signature.inputs):
        expected_names = sorted(signature.inputs)
        raise ModelLoadError(f"{where}: inputs {sorted(inputs)} do not match the signature's {expected_names}")
    for name, array in inputs.items():
        info = signature.inputs[name]
        shape_fits = info.shape is None or (
            array.ndim == len(info.shape) and all(d in (-1, n) for d, n in zip(info.shape, array.shape, strict=True))
        )
        fits = array.dtype == codec.numpy_dtype(info.dtype) and shape_fits
        if not fits:
            dtype = "string" if array.dtype == codec.STRING_DTYPE else array.dtype.name
            raise ModelLoadError(
                f"{where}: input {name!r} is {dtype}{list(array.shape)}, the signature takes {info.describe()}"
            )


def repeated_rows(inputs: Inputs, batch: int) -> Inputs:
    """A batch of ``batch`` examples from the rows of ``inputs``, repeated in order as needed."""
    return {name: np.take(array, np.arange(batch) % len(array), axis=0) for name, array in inputs.items()}
