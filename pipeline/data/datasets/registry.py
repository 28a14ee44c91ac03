"""Datasets by name, so params.yaml picks one with a string and options (``get_dataset``).

Modules are imported on first use: a stage that prepares VOC never imports h5py or scipy.io,
and a dataset module that does not exist yet (or fails to import) breaks only its own name.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.data.datasets.base import Dataset
from pipeline.errors import ParamsError

# name -> (module, class, fixed options); aliases point at the same class with other options
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "voc": ("pipeline.data.datasets.voc", "VOC", {}),
    "voc_aug": ("pipeline.data.datasets.sbd", "VOCAug", {}),
    "voc_fcn": ("pipeline.data.datasets.sbd", "VOCFCN", {}),
    "sbd": ("pipeline.data.datasets.sbd", "SBD", {}),
    "nyud": ("pipeline.data.datasets.nyud", "NYUD", {}),
    "siftflow": ("pipeline.data.datasets.siftflow", "SIFTFlow", {}),
    "siftflow_geo": ("pipeline.data.datasets.siftflow", "SIFTFlow", {"task": "geometric"}),
    "bsds": ("pipeline.data.datasets.bsds", "BSDS", {}),
    "context": ("pipeline.data.datasets.context", "PascalContext", {}),
    "context59": ("pipeline.data.datasets.context", "PascalContext", {"classes": 59}),
    "context33": ("pipeline.data.datasets.context", "PascalContext", {"classes": 33}),
}


def dataset_names() -> list[str]:
    """Every registered name (whether or not its module imports here)."""
    return sorted(_REGISTRY)


def get_dataset(name: str, **options: Any) -> Dataset:
    """A dataset instance by registry name; ``options`` go to its constructor.

    Unknown names and options are ParamsErrors naming them (they come from params.yaml).
    """
    if name not in _REGISTRY:
        raise ParamsError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    module_name, class_name, fixed = _REGISTRY[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        msg = f"dataset {name!r} is not available ({module_name}.{class_name}): {exc}"
        raise ParamsError(msg) from exc
    # an alias's fixed option may be restated (context59 with classes: 59), not changed
    clash = sorted(k for k in set(fixed) & set(options) if options[k] != fixed[k])
    if clash:
        fixes = ", ".join(f"{k}={fixed[k]!r}" for k in clash)
        raise ParamsError(f"dataset {name!r} fixes {fixes}; do not set other values")
    try:
        return cls(**{**options, **fixed})
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"bad options {options} for dataset {name!r}: {exc}") from exc
