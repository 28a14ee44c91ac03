"""The dense CRF's parameters: DeepLab Eq. 2's weights and scales, validated, and their file.

Every other CRF module imports this one (inference, search, evaluation); it imports none of them.
Defaults are the LargeFOV release settings (the paper states only the search ranges): w1=4,
σα=121, σβ=5, w2=3, σγ=3, 10 mean-field iterations.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError, ParamsError
from pipeline.runtime.fsutil import write_text_atomic

BACKENDS = ("pydensecrf", "torch")
# Keys of the params.yaml ``crf`` section that configure the stage rather than the model.
SECTION_KEYS = frozenset({"backend", "search"})


def _validate(values: Mapping[str, Any], prefix: str) -> None:
    """Numbers only; weights >= 0, scales > 0, iterations an integer >= 1 (names the key)."""
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise ParamsError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ParamsError(f"{key} must be finite, got {value!r}")
        if name in ("w1", "w2") and value < 0:
            raise ParamsError(f"{key} must be >= 0, got {value!r}")
        if name.startswith("sigma") and value <= 0:
            raise ParamsError(f"{key} must be > 0, got {value!r}")
        if name == "iterations" and (int(value) != value or value < 1):
            raise ParamsError(f"{key} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF parameters (names follow DeepLab Eq. 2); defaults = LargeFOV release."""

    w1: float = 4.0
    sigma_alpha: float = 121.0
    sigma_beta: float = 5.0
    w2: float = 3.0
    sigma_gamma: float = 3.0
    iterations: int = 10

    def __post_init__(self) -> None:
        _validate(asdict(self), "crf")

    @classmethod
    def from_params(
        cls,
        section: Mapping[str, Any] | None,
        prefix: str = "crf",
        ignore: Iterable[str] = SECTION_KEYS,
    ) -> CRFParams:
        """Build from the params.yaml ``crf`` section; missing keys take the release defaults.

        Unknown keys are errors naming ``<prefix>.<key>`` (a typo like ``sigma_alfa`` would
        otherwise be silently ignored), except the stage-level keys in ``ignore``.
        """
        section = dict(section or {})
        names = [f.name for f in fields(cls)]
        skip = set(ignore)
        for key in section:
            if key not in names and key not in skip:
                raise ParamsError(
                    f"{prefix}.{key} is not a CRF parameter (expected one of {names})"
                )
        values = {k: section[k] for k in names if k in section}
        _validate(values, prefix)
        if "iterations" in values:
            values["iterations"] = int(values["iterations"])
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def backend_from_params(section: Mapping[str, Any] | None, prefix: str = "crf") -> str:
    """The ``crf.backend`` value ('pydensecrf' unless set), validated."""
    backend = (section or {}).get("backend", "pydensecrf")
    if backend not in BACKENDS:
        raise ParamsError(f"{prefix}.backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_inputs(image_rgb: np.ndarray, probs: np.ndarray) -> None:
    """Probabilities CxHxW and a uint8 HxWx3 image of the same size, or a ValueError."""
    if probs.ndim != 3:
        raise ValueError(f"probs must be CxHxW, got shape {probs.shape}")
    _, h, w = probs.shape
    if image_rgb.shape != (h, w, 3) or image_rgb.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 {h}x{w}x3 to match probs {probs.shape}, "
            f"got {image_rgb.dtype} {image_rgb.shape}"
        )


def save_best(path: str | os.PathLike, params: CRFParams, **extra: Any) -> None:
    """Write the chosen parameters as JSON (atomically: it is a DVC output)."""
    payload = {**params.to_dict(), **extra}
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_best(path: str | os.PathLike) -> CRFParams:
    """Read ``save_best``'s file; a missing or malformed file is a DataError naming it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"CRF parameters file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read CRF parameters {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise DataError(f"{path}: expected a JSON object of CRF parameters")
    names = {f.name for f in fields(CRFParams)}
    missing = names - set(payload)
    if missing:
        raise DataError(f"{path}: missing CRF parameters {sorted(missing)}")
    try:
        return CRFParams.from_params({k: payload[k] for k in names})
    except ParamsError as exc:
        raise DataError(f"{path}: {exc}") from exc
