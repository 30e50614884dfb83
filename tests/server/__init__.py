"""Unit tests of server/, one module per module: no TensorFlow, no server process."""
