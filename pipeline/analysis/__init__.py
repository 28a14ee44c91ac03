"""Analyses that need no trained model (e.g. FCN's upper bound on mean IU by output stride)."""
