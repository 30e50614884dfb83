"""Helpers the tests (and bench/) share: fake servables and loaders, and the server process harness."""
