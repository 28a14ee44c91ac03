"""SIFT Flow (Liu et al.): 2,688 256x256 outdoor images, 33 semantic + 3 geometric classes.

Label conventions of FCN's ``siftflow_layers.py``, which this reader reproduces:

* semantic ``S``: 0 = void, 1..33 = classes -> ``uint8(S) - 1``: classes 0..32, void 255;
* geometric ``S``: -1 = void, 1..3 = sky/horizontal/vertical -> -1 becomes 0, then ``- 1``:
  classes 0..2, void 255.

Splits are FCN's lists: ``test`` = the 200 images of ``TestSet1.txt``, ``trainval`` = the other
2,488 minus the two without annotations (``highway_bost181``, ``street_urb506``) = 2,486.
Three classes (cow, desert, moon) never occur in the test set; FCN predicts all 33 but scores
only classes present in the test labels: :data:`EVAL_CLASSES` / :meth:`SIFTFlow.classes_present`.

Label files: the original ``.mat`` (MATLAB binary, or the Octave text copies some mirrors ship)
or PNG exports holding the same raw values (``SemanticLabels/png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.datasets.base import (
    VOID,
    decode_image,
    decode_label,
    encode_png,
    read_example_file,
    validate_label,
)
from pipeline.errors import DataError

SIFTFLOW_CLASSES = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk",
    "desert", "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole",
    "river", "road", "rock", "sand", "sea", "sidewalk", "sign", "sky", "staircase",
    "streetlight", "sun", "tree", "window",
)  # fmt: skip
GEO_CLASSES = ("sky", "horizontal", "vertical")
ABSENT_FROM_TEST = ("cow", "desert", "moon")
EVAL_CLASSES = tuple(i for i, c in enumerate(SIFTFLOW_CLASSES) if c not in ABSENT_FROM_TEST)
UNANNOTATED = ("highway_bost181", "street_urb506")
SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"
SPLITS = ("trainval", "test")


# -- .mat reading ----------------------------------------------------------------------------
def _parse_octave_text(text: str, path: Path) -> dict[str, np.ndarray]:
    """Numeric matrices of an Octave text ``.mat`` (``save -text``); other variables skipped."""
    lines = text.splitlines()
    out: dict[str, np.ndarray] = {}
    i = 0
    while i < len(lines):
        if not lines[i].startswith("# name:"):
            i += 1
            continue
        name = lines[i].split(":", 1)[1].strip()
        header: dict[str, str] = {}
        i += 1
        while i < len(lines) and lines[i].startswith("#"):
            key, _, value = lines[i][1:].partition(":")
            header[key.strip()] = value.strip()
            if key.strip() == "name":
                break
            i += 1
        kind = header.get("type", "")
        if not kind.endswith("matrix") or "name" in header:
            continue
        try:
            if "ndims" in header:
                dims = [int(v) for v in lines[i].split()]
                count = int(np.prod(dims))
                values = np.array(lines[i + 1 : i + 1 + count], dtype=np.float64)
                if values.size != count:
                    raise ValueError(f"{values.size} values for dims {dims}")
                out[name] = values.reshape(dims, order="F")
                i += 1 + count
            else:
                rows, cols = int(header["rows"]), int(header["columns"])
                values = [[float(v) for v in lines[i + r].split()] for r in range(rows)]
                out[name] = np.array(values).reshape(rows, cols)
                i += rows
        except (ValueError, IndexError, KeyError) as exc:
            raise DataError(f"cannot parse Octave text matrix {name!r} in {path}: {exc}") from exc
    return out


def load_mat_s(path: Path) -> np.ndarray:
    """The ``S`` label matrix of a SIFT Flow ``.mat`` (MATLAB binary or Octave text), as int."""
    if not path.is_file():
        raise DataError(f"missing SIFT Flow label file: {path}")
    head = path.read_bytes()[:64]
    try:
        if head.startswith(b"# "):
            mat = _parse_octave_text(path.read_text(), path)
        else:
            import scipy.io

            mat = scipy.io.loadmat(str(path))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read MATLAB file {path}: {exc}") from exc
    if "S" not in mat:
        raise DataError(f"{path} has no label matrix 'S'")
    label = np.asarray(mat["S"])
    if label.ndim != 2:
        raise DataError(f"'S' in {path} has shape {label.shape}, expected HxW")
    if label.dtype.kind not in "iub" and not np.array_equal(label, np.round(label)):
        raise DataError(f"'S' in {path} has non-integer values (NaN or fractions)")
    return label.astype(np.int64)


def semantic_to_schema(raw: np.ndarray) -> np.ndarray:
    """FCN: ``uint8(S) - 1``: 1..33 -> 0..32, void 0 -> 255."""
    return (np.asarray(raw).astype(np.uint8) - np.uint8(1)).astype(np.uint8)


def geometric_to_schema(raw: np.ndarray) -> np.ndarray:
    """FCN: ``S[S == -1] = 0`` then ``uint8(S) - 1``: 1..3 -> 0..2, void -1/0 -> 255."""
    s = np.array(raw, dtype=np.int64)
    s[s == -1] = 0
    if (s < 0).any():
        raise ValueError(f"geometric label values {sorted(set(np.unique(s[s < 0])))} < -1")
    return (s.astype(np.uint8) - np.uint8(1)).astype(np.uint8)


# -- dataset ---------------------------------------------------------------------------------
class SIFTFlow:
    """SIFT Flow with ``label`` = semantic (33) or geometric (3) classes, per ``task``.

    ``root`` is the ``SiftFlowDataset`` folder (``Images/``, ``SemanticLabels/``,
    ``GeoLabels/``, FCN's ``trainval.txt``/``test.txt`` or ``TestSet1.txt``). With the
    semantic task the geometric label is the ``geo_label`` extra column when ``GeoLabels/``
    exists (``geometric=None``) or always (``geometric=True``).
    """

    name = "siftflow"
    splits = SPLITS

    def __init__(
        self,
        task: str = "semantic",
        geometric: bool | None = None,
        label_format: str = "auto",
    ) -> None:
        if task not in ("semantic", "geometric"):
            raise ValueError(f"SIFT Flow task must be 'semantic' or 'geometric', not {task!r}")
        if label_format not in ("auto", "mat", "png"):
            raise ValueError(f"label_format must be auto, mat or png, not {label_format!r}")
        self.task = task
        self.geometric = geometric
        self.label_format = label_format
        self.classes = SIFTFLOW_CLASSES if task == "semantic" else GEO_CLASSES
        self.num_classes = len(self.classes)
        if task == "geometric":
            self.name = "siftflow_geo"

    # -- splits ----------------------------------------------------------------------------
    def list_ids(self, root: Path, split: str) -> list[str]:
        root = Path(root)
        if split not in SPLITS:
            raise DataError(f"unknown SIFT Flow split {split!r} (one of {SPLITS}) for {root}")
        for name in (f"{split}.txt", f"fcn_{split}.txt"):
            if (root / name).is_file():
                return _read_names(root / name)
        test = self._test_set1(root)
        if split == "test":
            return test
        images = self._image_dir(root)
        exclude = set(test) | set(UNANNOTATED)
        ids = sorted(p.stem for p in images.glob("*.jpg") if p.stem not in exclude)
        if not ids:
            raise DataError(f"no SIFT Flow trainval images in {images}")
        return ids

    @staticmethod
    def _test_set1(root: Path) -> list[str]:
        path = root / "TestSet1.txt"
        if not path.is_file():
            raise DataError(f"SIFT Flow test list not found: {root / 'test.txt'} or {path}")
        return _read_names(path)

    # -- files -----------------------------------------------------------------------------
    @staticmethod
    def _image_dir(root: Path) -> Path:
        nested = root / "Images" / SUBDIR
        return nested if nested.is_dir() else root / "Images"

    def _label_candidates(self, root: Path, kind: str, example_id: str) -> list[Path]:
        base = root / ("SemanticLabels" if kind == "semantic" else "GeoLabels")
        mats = [base / SUBDIR / f"{example_id}.mat", base / "labels" / f"{example_id}.mat"]
        mats.append(base / f"{example_id}.mat")
        pngs = [base / "png" / f"{example_id}.png"]
        if self.label_format == "mat":
            return mats
        if self.label_format == "png":
            return pngs
        return mats + pngs

    def read_raw_label(self, root: Path, kind: str, example_id: str) -> tuple[np.ndarray, Path]:
        """The raw ``S`` matrix (semantic 0..33, geometric -1..3) and the file it came from."""
        candidates = self._label_candidates(Path(root), kind, example_id)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"missing {kind} label for id {example_id!r}: {candidates[0]}")
        if path.suffix == ".png":
            return decode_label(path.read_bytes(), str(path)).astype(np.int64), path
        return load_mat_s(path), path

    def schema_label(self, root: Path, kind: str, example_id: str, size: tuple[int, int]):
        """The label of ``kind`` in the project schema, validated against the image size."""
        raw, path = self.read_raw_label(root, kind, example_id)
        num = len(SIFTFLOW_CLASSES) if kind == "semantic" else len(GEO_CLASSES)
        # semantic: 0 void, 1..33; geometric: -1 void, 1..3 (0 is no value of the release)
        allowed = range(0, num + 1) if kind == "semantic" else (-1, *range(1, num + 1))
        valid = np.isin(raw, allowed)
        if not valid.all():
            bad = sorted({int(v) for v in np.unique(raw[~valid])})[:5]
            expected = f"0..{num}" if kind == "semantic" else f"-1 or 1..{num}"
            raise DataError(
                f"{kind} label {path} (id {example_id!r}) has raw values {bad}, expected {expected}"
            )
        if kind == "semantic":
            label = semantic_to_schema(raw)
        else:
            label = geometric_to_schema(raw)
        validate_label(label, num, size, str(path))
        return label

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]:
        root = Path(root)
        image_path = self._image_dir(root) / f"{example_id}.jpg"
        image_bytes = read_example_file(image_path, example_id)
        image = decode_image(image_bytes, str(image_path))
        size = image.shape[:2]
        label = self.schema_label(root, self.task, example_id, size)
        record: dict[str, Any] = {
            "id": example_id,
            "image": image_bytes,
            "label": encode_png(label),
            "height": size[0],
            "width": size[1],
        }
        with_geo = self.geometric
        if with_geo is None:
            with_geo = (root / "GeoLabels").is_dir()
        if self.task == "semantic" and with_geo:
            record["geo_label"] = encode_png(self.schema_label(root, "geometric", example_id, size))
        return record

    def classes_present(self, root: Path, split: str = "test") -> list[int]:
        """Class indices (this task's) that occur in ``split``'s labels: FCN scores only these."""
        present: set[int] = set()
        for example_id in self.list_ids(root, split):
            raw, _ = self.read_raw_label(root, self.task, example_id)
            fix = semantic_to_schema if self.task == "semantic" else geometric_to_schema
            present |= {int(v) for v in np.unique(fix(raw))}
        present.discard(VOID)
        return sorted(present)


def _read_names(path: Path) -> list[str]:
    """Ids of a list file; ``dir\\name.jpg`` lines (``TestSet1.txt``) give ``name``."""
    ids = []
    for line in path.read_text().splitlines():
        token = line.strip().replace("\\", "/")
        if token:
            ids.append(Path(token.split()[0]).stem if "/" in token or "." in token else token)
    if not ids:
        raise DataError(f"split file is empty: {path}")
    return ids
