"""The leakage guard: no held-out example (by id or by identical image) is in the training split.

A validation image that is also trained on inflates every score computed on it. In PASCAL this
is easy to do by accident: SBD train holds hundreds of VOC2012 val images, which is why FCN
validates on ``seg11valid`` (VOC2011 val minus SBD train) and DeepLab's ``train_aug`` drops VOC
val. The guard compares the prepared ``train`` split of a dataset with each of its other splits
(the ones an experiment evaluates on), twice:

* by id, from the parser's ``list_ids`` at the start of ``prepare`` (before any Ray work);
* by content, from the ``image_sha256`` column the prepare pass stores with every row, before
  any prepared split is moved into place, and again by the train and sweep stages before their
  first step (two Parquet columns: milliseconds), for prepared data made elsewhere.

The content digest is the sha256 of the *decoded* RGB pixels (with their size), not of the
stored bytes: it is exactly what the model sees (the loader decodes to RGB), so the same picture
saved with other metadata (EXIF, comments), another PNG compression level or as a lossless
re-encode is still caught; identical files are caught either way. It costs one image decode per
example in the parallel prepare map (about 2 ms for a 500x375 JPEG). A lossy re-encode changes
the pixels and is not caught: that would need a perceptual hash.

No params key turns the guard off: no protocol of the papers trains on its evaluation images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.data.datasets.base import decode_image
from pipeline.errors import DataError

TRAIN = "train"  # the prepared split every experiment trains on
DIGEST_COLUMN = "image_sha256"
SHOWN = 5  # shared ids named in an error


def pixel_digest(image_bytes: bytes, source: str) -> str:
    """sha256 (hex) of an encoded image's decoded RGB pixels, its height and width first."""
    pixels = decode_image(image_bytes, source)
    digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Overlap:
    """What a held-out split shares with the training split.

    ``shared_ids``: held-out ids also listed in train (held-out order). ``same_content``:
    (held-out id, train id) pairs whose images are identical under different ids.
    """

    shared_ids: tuple[str, ...] = ()
    same_content: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.shared_ids or self.same_content)


def find_overlap(
    train_ids: Iterable[str],
    held_ids: Sequence[str],
    train_digests: Mapping[str, str] | None = None,
    held_digests: Mapping[str, str] | None = None,
) -> Overlap:
    """The ids and identical images (id -> digest maps, when given) ``held_ids`` shares with
    ``train_ids``. An id found in both is reported once, as a shared id."""
    train = set(train_ids)
    shared = tuple(i for i in held_ids if i in train)
    same: list[tuple[str, str]] = []
    if train_digests is not None and held_digests is not None:
        by_digest: dict[str, str] = {}
        for example_id, digest in train_digests.items():
            by_digest.setdefault(digest, example_id)
        for example_id in held_ids:
            match = by_digest.get(held_digests.get(example_id, ""))
            if match is not None and example_id not in train:
                same.append((example_id, match))
    return Overlap(shared, tuple(same))


def split_label(dataset: str, prepared: str, split: str | None = None) -> str:
    """``voc_fcn split 'val' (seg11valid)``: the prepared name, and the dataset's own split."""
    own = f" ({split})" if split and split != prepared else ""
    return f"{dataset} split {prepared!r}{own}"


def check_no_leak(train: str, held: str, held_count: int, overlap: Overlap) -> None:
    """A DataError naming both splits (``split_label``), how many examples they share and the
    first few, by id and by identical content; nothing when ``overlap`` is empty."""
    if not overlap:
        return
    found = []
    if overlap.shared_ids:
        first = ", ".join(overlap.shared_ids[:SHOWN])
        found.append(
            f"{len(overlap.shared_ids)} of its {held_count} id(s) are in {train} (first: {first})"
        )
    if overlap.same_content:
        first = ", ".join(f"{h} = train {t}" for h, t in overlap.same_content[:SHOWN])
        found.append(
            f"{len(overlap.same_content)} of its {held_count} image(s) are identical (sha256 of "
            f"the decoded pixels) to images of {train} under other ids (first: {first})"
        )
    raise DataError(
        f"data leakage: {held} overlaps the training split: {'; '.join(found)}. An experiment "
        f"must never evaluate on images it trains on (e.g. VOC val inside an SBD-derived train "
        f"list: use FCN's seg11valid or DeepLab's train_aug); fix the split lists"
    )


def check_split_ids(
    dataset: str, splits: Mapping[str, str], ids: Mapping[str, Sequence[str]]
) -> None:
    """Each held-out split's listed ids against the train split's (``splits``: prepared name ->
    the dataset's split, ``ids``: prepared name -> listed ids). Cheap: run it before Ray."""
    if TRAIN not in ids:
        return
    train = split_label(dataset, TRAIN, splits.get(TRAIN))
    for prepared, held_ids in ids.items():
        if prepared != TRAIN:
            held = split_label(dataset, prepared, splits.get(prepared))
            check_no_leak(train, held, len(held_ids), find_overlap(ids[TRAIN], held_ids))


def read_digests(path: Path) -> dict[str, str]:
    """id -> image digest of a prepared split, from its ``id`` and ``image_sha256`` columns."""
    files = sorted(Path(path).glob("*.parquet"))
    if not files:
        raise DataError(f"no prepared Parquet shards in {path} (run the prepare stage)")
    digests: dict[str, str] = {}
    for file in files:
        if DIGEST_COLUMN not in pq.read_schema(file).names:
            raise DataError(
                f"{file} has no {DIGEST_COLUMN!r} column (prepared by an older densepipe): "
                f"rerun the prepare stage for it"
            )
        table = pq.read_table(file, columns=["id", DIGEST_COLUMN])
        digests.update(zip(table.column("id").to_pylist(), table.column(DIGEST_COLUMN).to_pylist()))
    return digests


def check_prepared(
    dataset: str, dirs: Mapping[str, Path], splits: Mapping[str, str] | None = None
) -> None:
    """Each prepared held-out split against the prepared train split, by id and by content
    (``dirs``: prepared name -> its folder of shards; ``splits``: the dataset's split names,
    for the message)."""
    if TRAIN not in dirs:
        return
    splits = splits or {}
    train_digests = read_digests(dirs[TRAIN])
    train = split_label(dataset, TRAIN, splits.get(TRAIN))
    for prepared, path in dirs.items():
        if prepared == TRAIN:
            continue
        held_digests = read_digests(path)
        overlap = find_overlap(train_digests, list(held_digests), train_digests, held_digests)
        held = split_label(dataset, prepared, splits.get(prepared))
        check_no_leak(train, held, len(held_digests), overlap)
