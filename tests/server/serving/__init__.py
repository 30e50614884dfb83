"""Unit tests of server/serving/."""
