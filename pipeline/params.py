"""Read params.yaml: the single source of every knob a stage uses.

A value may depend on the profile, written ``{tiny: x, paper: y}``; ``profile: tiny`` (the
embedded default: built-in data, width-scaled nets, minutes on a laptop) or ``profile: paper``
(real datasets, the papers' settings) picks one. Stages declare ``profile`` plus their own
sections as DVC params, so editing one value reruns only the stages that read it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ParamsError

PROFILES = ("tiny", "paper")

# libyaml's parser when PyYAML has it (same YAML 1.1 resolver, same result): params.yaml takes
# 17 ms to load with it, 94 ms in pure Python, and every stage and the report load YAML
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml where available (raises ``yaml.YAMLError`` alike)."""
    return yaml.load(text, Loader=_LOADER)


def repo_root() -> Path:
    """The DVC project root (``DVC_ROOT`` inside a stage, else the folder holding params.yaml)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def resolve(value: Any, profile: str) -> Any:
    """Pick the profile's entry from ``{tiny: .., paper: ..}`` dicts, recursively."""
    if isinstance(value, dict):
        if value and set(value) <= set(PROFILES):
            if profile not in value:
                raise ParamsError(f"value {value} has no entry for profile {profile!r}")
            return resolve(value[profile], profile)
        return {k: resolve(v, profile) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, profile) for v in value]
    return value


class Params:
    """Resolved params with key-path access that names the missing key in its error."""

    def __init__(self, data: dict, source: str = "params.yaml"):
        self.source = source
        profile = data.get("profile", "tiny")
        if profile not in PROFILES:
            raise ParamsError(f"{source}: profile must be one of {PROFILES}, got {profile!r}")
        self.profile = profile
        self.data = resolve(data, profile)
        check_names(self.data, source)

    def get(self, key: str, default: Any = ...) -> Any:
        """``get("train.fcn32s.lr")``; without a default a missing key is a ParamsError."""
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is ...:
                    raise ParamsError(f"{self.source}: missing key {key!r}")
                return default
            node = node[part]
        return node

    def section(self, key: str) -> dict:
        value = self.get(key)
        if not isinstance(value, dict):
            raise ParamsError(f"{self.source}: {key!r} must be a mapping, got {value!r}")
        return value


# dvc.yaml turns experiment and sweep names into stage names and params paths
# (``run.train.<name>``), and DVC splits a params path at every '.'
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def check_names(data: dict, source: str) -> None:
    """Every experiment and sweep name, in every set, must be DVC-addressable: a dotted name
    would otherwise fail only when `dvc repro` reaches its stage, after hours of other work."""
    sets = data.get("experiments") or {}
    places = [
        (f"experiments.{set_name}.{section}", spec.get(section))
        for set_name, spec in (sets.items() if isinstance(sets, dict) else ())
        if isinstance(spec, dict)
        for section in ("train", "sweeps")
    ]
    run = data.get("run")
    if isinstance(run, dict):
        places += [(f"run.{section}", run.get(section)) for section in ("train", "sweeps")]
    for where, entries in places:
        for name in entries if isinstance(entries, dict) else ():
            if not (isinstance(name, str) and NAME.fullmatch(name)):
                raise ParamsError(
                    f"{source}: {where}: name {name!r} may hold only letters, digits, '-' and "
                    "'_' (dvc.yaml reads run.train.<name> as a params path; DVC splits it at '.')"
                )


def load_params(path: str | os.PathLike | None = None) -> Params:
    """Load and resolve params.yaml (default: the one at the repo root)."""
    path = Path(path) if path else repo_root() / "params.yaml"
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    return Params(data, str(path))


def choice(key: str, value: Any, allowed: tuple) -> Any:
    """Validate an enumerated params value."""
    if value not in allowed:
        raise ParamsError(f"params key {key!r} must be one of {list(allowed)}, got {value!r}")
    return value


def positive_list(key: str, value: Any) -> tuple[float, ...]:
    """Validate a non-empty list of positive numbers (test scales, ...)."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple) or not value:
        raise ParamsError(f"params key {key!r} must be a non-empty list of numbers, got {value!r}")
    if any(isinstance(v, bool) for v in value):
        raise ParamsError(f"params key {key!r} must hold numbers, got {value!r}")
    return tuple(positive(key, v) for v in value)


def positive(key: str, value: Any, kind=float, allow_zero: bool = False) -> Any:
    """Validate a positive number."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ParamsError(f"params key {key!r} must be a number, got {value!r}") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise ParamsError(f"params key {key!r} must be > 0, got {value!r}")
    return number


LIMIT_KEYS = ("iterations", "batch_size", "train_images", "eval_images")


def trial_limits(params: Params) -> dict[str, int | None]:
    """The ``limits`` section (a trial run's caps), validated: each a positive integer or null.

    ``iterations`` caps every experiment's optimizer steps, ``batch_size`` its batch (DeepLab's
    20 on a laptop), ``train_images`` its training split (the first N prepared rows),
    ``eval_images`` every val split that is scored or predicted.
    """
    section = params.get("limits", None) or {}
    if not isinstance(section, dict):
        raise ParamsError(f"{params.source}: 'limits' must be a mapping, got {section!r}")
    unknown = sorted(set(section) - set(LIMIT_KEYS))
    if unknown:
        raise ParamsError(f"limits: unknown key(s) {unknown}; known: {list(LIMIT_KEYS)}")
    out: dict[str, int | None] = {}
    for key in LIMIT_KEYS:
        value = section.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ParamsError(f"limits.{key} must be a positive integer or null, got {value!r}")
        out[key] = None if value is None else int(positive(f"limits.{key}", value, kind=int))
    return out


def capped(value: int, limit: int | None) -> int:
    """``value``, or ``limit`` when one is set and smaller."""
    return value if limit is None else min(value, limit)
