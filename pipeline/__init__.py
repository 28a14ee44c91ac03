"""densepipe: FCN, DeepLab v1 and PixelNet as one reproducible pipeline."""

__version__ = "0.1.0"
