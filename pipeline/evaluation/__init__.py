"""Scoring trained models: segmentation, edges (BSDS, with NMS), normals, saved scores."""
