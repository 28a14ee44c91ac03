"""densepipe: reference implementations of FCN, DeepLab v1 and PixelNet as a reproducible pipeline."""

__version__ = "0.1.0"
