"""Generated messages of the TensorFlow Serving API (package ``tensorflow.serving``; they import TensorFlow's own)."""
