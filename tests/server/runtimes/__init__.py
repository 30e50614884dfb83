"""Unit tests of server/runtimes/ (the parts that need no TensorFlow)."""
