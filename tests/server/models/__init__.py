"""Unit tests of server/models/."""
