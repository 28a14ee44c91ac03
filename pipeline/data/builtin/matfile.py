"""MATLAB 5 ``.mat`` files with a fixed header text, so a rerun writes identical bytes.

``scipy.io.savemat`` puts the creation date into the 116-byte header text; DVC would see every
regenerated built-in file as changed. The built-in generators write their ``.mat`` files here.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import scipy.io


def write_mat(path: Path, variables: dict[str, Any], platform: str) -> None:
    """``savemat(path, variables)`` (zlib-compressed) with a dateless header naming ``platform``."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, do_compression=True)
    header = f"MATLAB 5.0 MAT-file, Platform: {platform}, Created on: 1970-01-01".encode()
    Path(path).write_bytes(header.ljust(116, b" ")[:116] + buf.getvalue()[116:])
