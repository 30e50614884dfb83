"""Device choice for TensorFlow: ``auto`` (the first GPU if there is one, else the CPU), ``cpu`` or ``gpu:N``.

Configured once per process before any model loads: thread pools, and memory
growth on every GPU so that several models (and versions during a reload)
share a GPU instead of the first one taking all its memory.
"""

from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)


class DeviceError(ValueError):
    """The configured device does not exist on this machine."""


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> list[str]:
    """Set TensorFlow's thread pools (0 keeps its default) and GPU memory growth; returns the GPUs found."""
    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    names = [f"GPU:{i}" for i in range(len(gpus))]
    log.info("tensorflow configured", extra={"fields": {"gpus": names, "tensorflow": tf.__version__}})
    return names


def tensorflow_version() -> str:
    """The version of the TensorFlow this process runs models with."""
    return str(tf.__version__)


def resolve_device(device: str) -> str:
    """The TensorFlow device name (``CPU:0``, ``GPU:1``) for a configured device."""
    gpus = len(tf.config.list_logical_devices("GPU"))
    if device == "auto":
        return "GPU:0" if gpus else "CPU:0"
    if device == "cpu":
        return "CPU:0"
    index = int(device.removeprefix("gpu:"))
    if index >= gpus:
        raise DeviceError(f"device {device} requested but this machine has {gpus} GPU(s)")
    return f"GPU:{index}"
