"""Deterministic built-in data in the real on-disk layouts (the tiny default needs no download)."""
