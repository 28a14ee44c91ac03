"""The data stages' library side: per-dataset params, raw data (built-in / url / local), prepare.

Every dataset the pipeline can build has a section ``data.<name>`` in params.yaml::

    data:
      bsds:
        source: {tiny: builtin, paper: url}   # builtin | url | local
        local_path: null                      # source local: an existing extracted copy
        splits: {train: train, val: val}      # prepared split name -> the dataset's split
        options: {min_annotators: 3}          # keyword arguments of the dataset class
        builtin: {num_train: 60, ...}         # the generator's spec (BUILTINS: voc*, bsds, ...)

What `dvc repro` downloads and prepares (stages download@NAME / prepare@NAME, foreach) is the
active experiment set's ``datasets`` list (``run.datasets``): each set in ``experiments``
declares the datasets its experiments need, so switching ``run: *default`` to ``run: *all``
builds the data of the new set too. :func:`build_list` checks that list against the set.

``download NAME`` materialises ``data/raw/<name>`` so that the dataset's parser root is always
``data/raw/<name>/<LAYOUTS[name].root>`` (the real archive's own layout, e.g.
``BSR/BSDS500/data``), whichever source was used: the built-in generator writes it, a download
(``pipeline/data/sources/sources.yaml``) or a local copy is linked there. ``prepare NAME`` writes
``data/prepared/<name>/<split>/part-*.parquet`` for every prepared split. :func:`data_config`
checks the whole section first, so a bad value is a ParamsError naming its key before any work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.builtin.bsds import BSDSBuiltinSpec, write_builtin_bsds
from pipeline.data.builtin.context import ContextBuiltinSpec, write_builtin_context
from pipeline.data.builtin.nyud import NYUDBuiltinSpec, write_builtin_nyud
from pipeline.data.builtin.siftflow import SIFTFlowBuiltinSpec, write_builtin_siftflow
from pipeline.data.builtin.voc import BuiltinSpec, write_builtin_voc
from pipeline.data.datasets.base import check_example_files, decode_label, read_split_file
from pipeline.data.datasets.nyud import FULL_SIZE
from pipeline.data.datasets.registry import get_dataset
from pipeline.data.datasets.sbd import build_train_aug_from, write_segmentation_class_aug
from pipeline.data.leakage import check_prepared, check_split_ids
from pipeline.data.prepare import write_split
from pipeline.data.sources import download
from pipeline.errors import DataError, ParamsError
from pipeline.params import Params, choice, repo_root
from pipeline.runtime.fsutil import atomic_path

SOURCES = ("builtin", "url", "local")


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files sit under ``data/raw/<name>`` and how each source fills it.

    ``root``: the folder the parser opens, relative to the raw folder (the archive's layout).
    ``marker``: a path that exists inside that root (finds the root inside a local copy).
    ``fetch``: raw-relative path -> sources.yaml entry whose dataset root is linked there.
    ``builtin``: the generator (a key of :data:`BUILTINS`), or None.
    ``finish``: builds derived files after a download (voc_aug's ``SegmentationClassAug``).
    """

    registry: str
    root: str
    marker: str
    fetch: Mapping[str, str]
    builtin: str | None = None
    finish: Callable[[Path], None] | None = field(default=None, compare=False)


def _voc_folder(raw_dir: Path) -> tuple[Path, Path]:
    """``VOCdevkit/VOC2012`` as a real folder over the VOC2012 download (``sources/VOC2012``):
    links to its JPEGImages and SegmentationClass, copies of its split lists. Returns the
    folder and its ``ImageSets/Segmentation``, where derived lists go."""
    voc_src = raw_dir / "sources" / "VOC2012"
    voc = raw_dir / "VOCdevkit" / "VOC2012"
    seg = voc / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True, exist_ok=True)
    for sub in ("JPEGImages", "SegmentationClass"):
        _link(voc / sub, voc_src / sub)
    for split_file in (voc_src / "ImageSets" / "Segmentation").glob("*.txt"):
        shutil.copyfile(split_file, seg / split_file.name)
    return voc, seg


def _finish_voc_aug(raw_dir: Path) -> None:
    """DeepLab's train_aug from the VOC2012 and SBD downloads (nothing unofficial fetched).

    ``VOCdevkit/VOC2012`` becomes a real folder: links to the download's JPEGImages and
    SegmentationClass, its split lists plus ``train_aug.txt``, and ``SegmentationClassAug``.
    """
    voc_src, sbd_src = raw_dir / "sources" / "VOC2012", raw_dir / "benchmark_RELEASE" / "dataset"
    voc, seg = _voc_folder(raw_dir)
    ids = build_train_aug_from(sbd_src, voc_src)
    (seg / "train_aug.txt").write_text("\n".join(ids) + "\n")
    val = read_split_file(seg / "val.txt")
    write_segmentation_class_aug(sbd_src, voc_src, voc / "SegmentationClassAug", ids + val)


def _builtin_voc_aug(raw_dir: Path, spec, progress: bool) -> None:
    """The built-in VOC set in DeepLab's layout: ``SegmentationClassAug`` holds the same labels,
    ``train_aug.txt`` lists the train split (so DeepLab's reader runs unchanged on it)."""
    write_builtin_voc(raw_dir, spec, progress=progress)
    voc = raw_dir / "VOCdevkit" / "VOC2012"
    shutil.copytree(voc / "SegmentationClass", voc / "SegmentationClassAug", dirs_exist_ok=True)
    seg = voc / "ImageSets" / "Segmentation"
    shutil.copyfile(seg / "train.txt", seg / "train_aug.txt")


def _finish_voc_fcn(raw_dir: Path) -> None:
    """FCN's layout from the VOC2012, SBD and seg11valid downloads: the VOC folder gets FCN's
    list in ``ImageSets/Segmentation``; SBD is linked beside it (``benchmark_RELEASE/dataset``)."""
    _, seg = _voc_folder(raw_dir)
    shutil.copyfile(raw_dir / "sources" / "fcn" / "seg11valid.txt", seg / "seg11valid.txt")


def _builtin_voc_fcn(raw_dir: Path, spec, progress: bool) -> None:
    """The built-in VOC set in FCN's layout: its train split also as an SBD release
    (``benchmark_RELEASE/dataset``: ``img/*.jpg``, ``cls/*.mat`` with ``GTcls.Segmentation``,
    ``train.txt``), its val split as ``seg11valid.txt``. Same images and labels as ``voc_aug``
    (the built-in labels keep their void band in the .mat files, which real SBD lacks)."""
    import scipy.io

    voc = write_builtin_voc(raw_dir, spec, progress=progress)
    seg = voc / "ImageSets" / "Segmentation"
    shutil.copyfile(seg / "val.txt", seg / "seg11valid.txt")
    train = read_split_file(seg / "train.txt")
    with atomic_path(raw_dir / "benchmark_RELEASE") as tmp:
        sbd = tmp / "dataset"
        (sbd / "img").mkdir(parents=True)
        (sbd / "cls").mkdir()
        for example_id in train:
            jpg, png = f"JPEGImages/{example_id}.jpg", voc / f"SegmentationClass/{example_id}.png"
            shutil.copyfile(voc / jpg, sbd / "img" / f"{example_id}.jpg")
            label = decode_label(png.read_bytes(), str(png))
            scipy.io.savemat(sbd / "cls" / f"{example_id}.mat", {"GTcls": {"Segmentation": label}})
        (sbd / "train.txt").write_text("\n".join(train) + "\n")


#: built-in generator -> (its spec class, the writer ``(raw dir, spec, progress)``)
BUILTINS: dict[str, tuple[type, Callable[[Path, Any, bool], Any]]] = {
    "voc": (BuiltinSpec, write_builtin_voc),
    "voc_aug": (BuiltinSpec, _builtin_voc_aug),
    "voc_fcn": (BuiltinSpec, _builtin_voc_fcn),
    "bsds": (BSDSBuiltinSpec, write_builtin_bsds),
    "nyud": (NYUDBuiltinSpec, write_builtin_nyud),
    "siftflow": (SIFTFlowBuiltinSpec, write_builtin_siftflow),
    "context": (ContextBuiltinSpec, write_builtin_context),
}

LAYOUTS: dict[str, Layout] = {
    "voc": Layout(
        "voc", "VOCdevkit/VOC2012", "JPEGImages", {"VOCdevkit/VOC2012": "voc2012"}, "voc"
    ),
    "voc_aug": Layout(
        "voc_aug",
        "VOCdevkit/VOC2012",
        "SegmentationClassAug",
        {"sources/VOC2012": "voc2012", "benchmark_RELEASE/dataset": "sbd"},
        "voc_aug",
        finish=_finish_voc_aug,
    ),
    # FCN's protocol: SBD train / seg11valid. The parser root is the VOC folder (FCN's list in
    # its ImageSets/Segmentation); SBD sits beside it, as in voc_aug's raw folder
    "voc_fcn": Layout(
        "voc_fcn",
        "VOCdevkit/VOC2012",
        "SegmentationClass",
        {
            "sources/VOC2012": "voc2012",
            "benchmark_RELEASE/dataset": "sbd",
            "sources/fcn": "fcn_seg11valid",
        },
        "voc_fcn",
        finish=_finish_voc_fcn,
    ),
    "sbd": Layout("sbd", "benchmark_RELEASE/dataset", "cls", {"benchmark_RELEASE/dataset": "sbd"}),
    "bsds": Layout("bsds", "BSR/BSDS500/data", "images", {"BSR/BSDS500/data": "bsds500"}, "bsds"),
    "nyud": Layout("nyud", "NYUDv2", "nyu_depth_v2_labeled.mat", {"NYUDv2": "nyudv2"}, "nyud"),
    "siftflow": Layout(
        "siftflow",
        "SiftFlowDataset",
        "SemanticLabels",
        {"SiftFlowDataset": "siftflow"},
        "siftflow",
    ),
    # PascalContext finds VOC2010 beside its root by default (or set options.voc_root).
    # context59 / context33 are the two tasks (FCN's 59, PixelNet's 33) as dataset names of
    # their own, so both can be prepared side by side; `context` takes options.classes
    **{
        name: Layout(
            name,
            "PASCAL-Context",
            "trainval",
            {"PASCAL-Context": "pascal_context", "VOCdevkit/VOC2010": "voc2010"},
            "context",
        )
        for name in ("context", "context59", "context33")
    },
}


def dataset_names() -> list[str]:
    """Names a ``data.<name>`` section (and ``run.datasets``) may use."""
    return sorted(LAYOUTS)


@dataclass(frozen=True)
class DataConfig:
    """One validated ``data.<name>`` section (profile values resolved)."""

    name: str
    source: str
    local_path: Path | None
    splits: dict[str, str]  # prepared split name -> dataset split
    options: dict[str, Any]
    builtin: dict[str, Any]

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.name]

    def dataset(self):
        """The parser instance (``get_dataset(name, **options)``)."""
        try:
            return get_dataset(self.layout.registry, **self.options)
        except ParamsError as exc:
            raise ParamsError(f"data.{self.name}.options: {exc}") from None

    def builtin_spec(self):
        """The built-in generator's spec from ``data.<name>.builtin``."""
        if self.layout.builtin not in BUILTINS:
            raise ParamsError(f"data.{self.name}.source: {self.name!r} has no built-in data")
        spec_cls = BUILTINS[self.layout.builtin][0]
        try:
            return spec_cls(**self.builtin)
        except (TypeError, ValueError) as exc:
            raise ParamsError(f"data.{self.name}.builtin: {exc}") from None


def _mapping(key: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParamsError(f"params key {key!r} must be a mapping, got {value!r}")
    return value


def data_config(params: Params, name: str, root: Path | None = None) -> DataConfig:
    """Validate ``data.<name>`` completely (source, local path, splits, options, builtin spec).

    ``root`` resolves a relative ``local_path`` (default: the repo root). Every problem is a
    ParamsError naming the key.
    """
    if name not in LAYOUTS:
        raise ParamsError(f"unknown dataset {name!r} (data.{name}); known: {dataset_names()}")
    prefix = f"data.{name}"
    section = params.section(prefix)
    layout = LAYOUTS[name]
    source = choice(f"{prefix}.source", section.get("source"), SOURCES)
    if source == "builtin" and layout.builtin is None:
        have = [n for n, lay in LAYOUTS.items() if lay.builtin]
        raise ParamsError(
            f"params key '{prefix}.source' is 'builtin' but only {have} have built-in data"
        )
    local_path = None
    if source == "local":
        raw = section.get("local_path")
        if not raw:
            raise ParamsError(f"params key '{prefix}.local_path' must be set when source is local")
        local_path = Path(str(raw)).expanduser()
        if not local_path.is_absolute():
            local_path = (root or repo_root()) / local_path
        if not local_path.is_dir():
            raise ParamsError(f"params key '{prefix}.local_path': no folder at {local_path}")
    splits = _mapping(f"{prefix}.splits", section.get("splits"))
    if not splits:
        raise ParamsError(f"params key '{prefix}.splits' must map prepared names to splits")
    for prepared, split in splits.items():
        if not isinstance(prepared, str) or not prepared or "/" in prepared or prepared[0] == ".":
            raise ParamsError(f"params key '{prefix}.splits': bad prepared name {prepared!r}")
        if not isinstance(split, str) or not split:
            raise ParamsError(f"params key '{prefix}.splits.{prepared}' must be a split name")
    config = DataConfig(
        name=name,
        source=source,
        local_path=local_path,
        splits={str(k): str(v) for k, v in splits.items()},
        options=dict(_mapping(f"{prefix}.options", section.get("options"))),
        builtin=dict(_mapping(f"{prefix}.builtin", section.get("builtin"))),
    )
    dataset = config.dataset()  # bad options fail here
    known = getattr(dataset, "splits", None)
    if known:
        for prepared, split in config.splits.items():
            if split not in known:
                raise ParamsError(
                    f"params key '{prefix}.splits.{prepared}': {name} has no split {split!r} "
                    f"(one of {list(known)})"
                )
    if source == "builtin":
        spec = config.builtin_spec()  # bad spec fails here
        if layout.builtin == "nyud" and getattr(dataset, "crop", False):
            if (spec.height, spec.width) != FULL_SIZE:
                raise ParamsError(
                    f"params key '{prefix}.options.crop': Gupta's crop needs 480x640 frames, "
                    f"the built-in ones are {spec.height}x{spec.width}: set crop false"
                )
    return config


def build_list(params: Params) -> list[str]:
    """``run.datasets``: the datasets ``dvc repro`` builds (download@ / prepare@ stages).

    Each must have a valid ``data.<name>`` section, and the list must hold every dataset the
    active set's experiments (``run.train``) and a pretraining backbone (``backbone.dataset``)
    read, so a set that forgets one fails here, naming it, rather than deep inside DVC.
    """
    key = "run.datasets"
    names = params.get(key, None)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ParamsError(
            f"params key {key!r} must be a list of dataset names (each experiment set in "
            f"`experiments` declares the datasets it needs), got {names!r}"
        )
    for name in names:
        if name not in LAYOUTS:
            raise ParamsError(f"params key {key!r}: unknown dataset {name!r}")
        data_config(params, name)
    needed = {
        str(entry.get("dataset")): f"experiment {exp!r}"
        for exp, entry in (params.get("run.train", {}) or {}).items()
        if isinstance(entry, dict) and entry.get("dataset")
    }
    if params.get("backbone.source", None) == "pretrain" and params.get("backbone.dataset", None):
        needed.setdefault(str(params.get("backbone.dataset")), "backbone.dataset")
    missing = {name: user for name, user in needed.items() if name not in names}
    if missing:
        users = ", ".join(f"{name} (for {user})" for name, user in sorted(missing.items()))
        raise ParamsError(f"params key {key!r} lacks {users}: add them to the set's `datasets`")
    return names


def raw_dir(name: str, root: Path | None = None) -> Path:
    """``data/raw/<name>``: the download stage's output."""
    return (root or repo_root()) / "data" / "raw" / name


def dataset_root(name: str, raw: Path) -> Path:
    """The folder the parser opens inside a raw folder (``data/raw/bsds/BSR/BSDS500/data``)."""
    return Path(raw) / LAYOUTS[name].root


def prepared_dir(params: Params, name: str, split: str, root: Path | None = None) -> Path:
    """``data/prepared/<name>/<split>``, where ``split`` is a key of ``data.<name>.splits``.

    The name and split are checked against params (ParamsError naming the key).
    """
    if name not in LAYOUTS:
        raise ParamsError(f"unknown dataset {name!r} (data.{name}); known: {dataset_names()}")
    splits = _mapping(f"data.{name}.splits", params.get(f"data.{name}.splits"))
    if split not in splits:
        raise ParamsError(
            f"params key 'data.{name}.splits' has no prepared split {split!r} "
            f"(has {sorted(splits)})"
        )
    return (root or repo_root()) / "data" / "prepared" / name / split


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (absolute), replacing an older link."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise DataError(f"{link} exists and is not a link; remove it first")
    link.symlink_to(Path(target).resolve(), target_is_directory=True)


def find_local_root(config: DataConfig) -> Path:
    """The dataset root inside ``local_path``: itself or one of its nested archive folders."""
    layout, local = config.layout, config.local_path
    parts = Path(layout.root).parts
    candidates = [local] + [local.joinpath(*parts[i:]) for i in range(len(parts) - 1, -1, -1)]
    for candidate in candidates:
        if (candidate / layout.marker).exists():
            return candidate
    raise DataError(
        f"data.{config.name}.local_path {local} holds no {config.name} layout: no "
        f"{layout.marker} in {', '.join(str(c) for c in dict.fromkeys(candidates))}"
    )


def acquire(config: DataConfig, raw: Path, progress: bool = True) -> Path:
    """Materialise the dataset under ``raw`` (``data/raw/<name>``); return the parser root."""
    raw, layout = Path(raw), config.layout
    if config.source == "builtin":
        BUILTINS[layout.builtin][1](raw, config.builtin_spec(), progress)
    elif config.source == "local":
        _link(dataset_root(config.name, raw), find_local_root(config))
    else:
        downloads = raw.parent / "downloads"
        for rel, entry in layout.fetch.items():
            download.fetch(entry, downloads, progress=progress)
            _link(raw / rel, download.dataset_dir(entry, downloads))
        if layout.finish is not None:
            layout.finish(raw)
    root = dataset_root(config.name, raw)
    if not (root / layout.marker).exists():
        raise DataError(f"{config.name}: {root / layout.marker} missing after {config.source}")
    return root


def check_splits(config: DataConfig, root: Path) -> dict[str, int]:
    """List every configured split and check every listed example's files exist (a missing list,
    folder or file is a DataError with the count and the first few) and that no held-out split
    lists an id of the train split (``pipeline.data.leakage``), before prepare runs."""
    dataset = config.dataset()
    ids = {}
    for prepared, split in config.splits.items():
        ids[prepared] = dataset.list_ids(root, split)
        check_example_files(dataset, root, split, ids[prepared])
    check_split_ids(config.name, config.splits, ids)
    return {prepared: len(listed) for prepared, listed in ids.items()}


def prepare_dataset(
    config: DataConfig, raw: Path, out_root: Path, log: Callable[[str], None] = print
) -> dict[str, int]:
    """Prepare every configured split to ``out_root/<prepared name>`` (Ray must be up).

    The leakage guard (``pipeline.data.leakage``) runs twice: on the listed ids before any Ray
    work, and on the image digests of the written rows before any split is moved into place,
    so a leaking configuration leaves the previous prepared folders as they were.
    """
    root = dataset_root(config.name, raw)
    if not root.exists():
        raise DataError(f"{root} not found: run the download stage for {config.name} first")
    dataset = config.dataset()
    ids = {prepared: dataset.list_ids(root, split) for prepared, split in config.splits.items()}
    check_split_ids(config.name, config.splits, ids)
    counts = {}
    with contextlib.ExitStack() as stack:
        written = {}
        for prepared, split in config.splits.items():
            written[prepared] = stack.enter_context(atomic_path(Path(out_root) / prepared))
            label = f"prepare {config.name}/{split}"
            counts[prepared] = write_split(
                dataset, root, split, written[prepared], ids[prepared], label=label
            )
            out = os.path.relpath(Path(out_root) / prepared)
            log(f"{config.name}/{split}: {counts[prepared]} examples -> {out}")
        check_prepared(config.name, written, config.splits)
    log(f"{config.name}: no held-out split shares an id or an image with the train split")
    return counts
