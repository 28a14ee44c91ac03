"""Where a dataset's raw files come from: built-in generator, a download, or a local folder.

This is the ``download`` stage's library side. Every source ends in the same layout under
``data/raw/<dataset>``, so the prepare stage never knows which one was used.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.builtin import BuiltinSpec, write_builtin_voc
from pipeline.errors import DataError, ParamsError
from pipeline.params import Params, choice

SOURCES = ("builtin", "url", "local")


def voc_root(raw_dir: Path) -> Path:
    """The ``VOC2012`` folder inside a raw VOC download (``VOCdevkit/VOC2012``)."""
    return Path(raw_dir) / "VOCdevkit" / "VOC2012"


def acquire_voc(params: Params, raw_dir: Path, progress: bool = True) -> Path:
    """Materialise VOC2012 (or its built-in stand-in) under ``raw_dir``; return the VOC2012 dir."""
    source = choice("data.source", params.get("data.source"), SOURCES)
    raw_dir = Path(raw_dir)
    if source == "builtin":
        spec = BuiltinSpec(**params.section("data.builtin"))
        return write_builtin_voc(raw_dir, spec, progress=progress)
    if source == "url":
        from pipeline.data.download import fetch

        fetched = fetch("voc2012", raw_dir.parent / "downloads", progress=progress)
        target = raw_dir / "VOCdevkit"
        raw_dir.mkdir(parents=True, exist_ok=True)
        found = next(fetched.rglob("VOC2012/JPEGImages"), None)
        if found is None:
            raise DataError(f"no VOC2012/JPEGImages inside the downloaded archive at {fetched}")
        if not target.exists():
            target.symlink_to(found.parent.parent.resolve(), target_is_directory=True)
        return voc_root(raw_dir)
    local = params.get("data.local_path")
    if not local:
        raise ParamsError("data.local_path must be set when data.source is 'local'")
    local = Path(local).expanduser().resolve()
    root = local if (local / "JPEGImages").is_dir() else voc_root(local)
    if not (root / "JPEGImages").is_dir():
        raise DataError(f"data.local_path {local} holds no VOC2012 layout (JPEGImages missing)")
    raw_dir.mkdir(parents=True, exist_ok=True)
    link = raw_dir / "VOCdevkit"
    if not link.exists():
        link.symlink_to(root.parent, target_is_directory=True)
    return voc_root(raw_dir)
