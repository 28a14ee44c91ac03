"""The downloader against a real loopback HTTP server, with archives in each dataset's real layout.

Each source of ``sources.yaml`` has a builder producing tiny files laid out exactly like the
real download (VOCdevkit/VOC2012/..., benchmark_RELEASE/dataset/..., BSR/BSDS500/data/...,
SiftFlowDataset/..., trainval/*.mat, MATLAB v7.3 NYU file), so the manifest's ``extracts_to``
and ``layout`` are exercised too. Only the URLs and published checksums are swapped for the
loopback ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io as sio
from loopback import LoopbackServer
from PIL import Image

from pipeline.data.sources.download import (
    MARKER_NAME,
    PINS_NAME,
    DataError,
    DownloadError,
    Source,
    UnknownSourceError,
    dataset_dir,
    download_file,
    fetch,
    load_manifest,
    safe_extract,
)

FAST = {"progress": False, "retries": 2, "backoff": 0.0, "timeout": 10}
DEAD_URL = "http://127.0.0.1:9/nothing-listens-here"


# --------------------------------------------------------------------------------------
# tiny files in the real formats
# --------------------------------------------------------------------------------------
def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def jpeg(seed: int, h: int = 6, w: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def palette_png(seed: int, h: int = 6, w: int = 8) -> bytes:
    """VOC-style label: mode P, class indices 0..20 and 255 void."""
    a = _rng(seed).integers(0, 21, (h, w), dtype=np.uint8)
    a[0, 0] = 255
    im = Image.fromarray(a, mode="P")
    im.putpalette([(i * 37) % 256 for i in range(768)])
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def mat(**variables: object) -> bytes:
    buf = io.BytesIO()
    sio.savemat(buf, variables)
    return buf.getvalue()


def mat73(**datasets: np.ndarray) -> bytes:
    """MATLAB v7.3 file: HDF5 with the 512-byte MATLAB user block, like nyu_depth_v2_labeled."""
    buf = io.BytesIO()
    with h5py.File(buf, "w", userblock_size=512) as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    data = bytearray(buf.getvalue())
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2012 HDF5"
    data[: len(header)] = header
    return bytes(data)


def tar_bytes(entries: dict[str, bytes], gz: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        dirs: set[str] = set()
        for name in entries:  # real tarballs list directories too
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tf.addfile(info)
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def add_evil_tar_member(archive: bytes, gz: bool, name: str = "../escape.txt") -> bytes:
    """Append a member that climbs out of the extraction dir (after the good ones)."""
    src = tarfile.open(fileobj=io.BytesIO(archive), mode="r:*")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as tf:
        for m in src.getmembers():
            tf.addfile(m, src.extractfile(m) if m.isfile() else None)
        info = tarfile.TarInfo(name)
        payload = b"pwned\n"
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def zip_bytes(entries: dict[str, bytes], evil: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if evil:
            zf.writestr(zipfile.ZipInfo(evil), b"pwned\n")
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# one builder per source: served files + paths that must exist under <root>/<name>
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Built:
    files: dict[str, bytes]
    expect: list[str]
    check: Callable[[Path], None] | None = None  # reads a file back after fetch


VOC_DATES = {"2012": "11-May-2012", "2011": "25-May-2011", "2010": "03-May-2010"}


def _voc(year: str, prefix: str, seed: int, evil: bool) -> Built:
    base = f"{prefix}VOCdevkit/VOC{year}"
    ids = [f"{year}_000{seed}03", f"{year}_000{seed}07"]
    entries = {}
    for i, id_ in enumerate(ids):
        entries[f"{base}/JPEGImages/{id_}.jpg"] = jpeg(seed + i)
        entries[f"{base}/SegmentationClass/{id_}.png"] = palette_png(seed + i)
        entries[f"{base}/Annotations/{id_}.xml"] = b"<annotation></annotation>\n"
    entries[f"{base}/ImageSets/Segmentation/train.txt"] = f"{ids[0]}\n".encode()
    entries[f"{base}/ImageSets/Segmentation/val.txt"] = f"{ids[1]}\n".encode()
    entries[f"{base}/ImageSets/Segmentation/trainval.txt"] = "\n".join(ids).encode() + b"\n"
    data = tar_bytes(entries, gz=False)
    if evil:
        data = add_evil_tar_member(data, gz=False)

    def check(d: Path) -> None:
        lbl = np.array(Image.open(d / f"{base}/SegmentationClass/{ids[0]}.png"))
        assert lbl.dtype == np.uint8 and lbl[0, 0] == 255

    return Built(
        {f"VOCtrainval_{VOC_DATES[year]}.tar": data},
        [f"{base}/JPEGImages/{ids[0]}.jpg", f"{base}/ImageSets/Segmentation/val.txt"],
        check,
    )


def build_voc2012(seed: int = 0, evil: bool = False) -> Built:
    return _voc("2012", "", seed, evil)


def build_voc2011(seed: int = 0, evil: bool = False) -> Built:
    return _voc("2011", "TrainVal/", seed, evil)


def build_voc2010(seed: int = 0, evil: bool = False) -> Built:
    return _voc("2010", "", seed, evil)


def build_sbd(seed: int = 0, evil: bool = False) -> Built:
    base = "benchmark_RELEASE/dataset"
    ids = ["2008_000002", "2008_000003"]
    entries = {}
    for i, id_ in enumerate(ids):
        seg = _rng(seed + i).integers(0, 21, (6, 8), dtype=np.uint8)
        bnd = np.empty((20, 1), dtype=object)
        for k in range(20):
            bnd[k, 0] = np.zeros((6, 8), dtype=np.uint8)
        gt = {"Boundaries": bnd, "Segmentation": seg, "CategoriesPresent": np.array([[1]])}
        inst = {"Segmentation": seg, "Boundaries": bnd[:1], "Categories": np.array([[1]])}
        entries[f"{base}/img/{id_}.jpg"] = jpeg(seed + i)
        entries[f"{base}/cls/{id_}.mat"] = mat(GTcls=gt)
        entries[f"{base}/inst/{id_}.mat"] = mat(GTinst=inst)
    entries[f"{base}/train.txt"] = f"{ids[0]}\n".encode()
    entries[f"{base}/val.txt"] = f"{ids[1]}\n".encode()
    entries["benchmark_RELEASE/README"] = b"Semantic Boundaries Dataset\n"
    data = tar_bytes(entries, gz=True)
    if evil:
        data = add_evil_tar_member(data, gz=True)

    def check(d: Path) -> None:
        m = sio.loadmat(d / f"{base}/cls/{ids[0]}.mat")
        seg = m["GTcls"][0]["Segmentation"][0]
        assert seg.dtype == np.uint8 and seg.shape == (6, 8)

    return Built({"benchmark.tgz": data}, [f"{base}/img/{ids[0]}.jpg", f"{base}/val.txt"], check)


def build_sbd_train_noval(seed: int = 0, evil: bool = False) -> Built:
    ids = [f"2008_{i:06d}" for i in range(seed, seed + 5)]
    return Built({"train_noval.txt": "\n".join(ids).encode() + b"\n"}, ["train_noval.txt"])


def build_fcn_seg11valid(seed: int = 0, evil: bool = False) -> Built:
    ids = [f"2011_{i:06d}" for i in range(seed, seed + 3)]
    return Built({"seg11valid.txt": "\n".join(ids).encode() + b"\n"}, ["seg11valid.txt"])


def build_nyudv2(seed: int = 0, evil: bool = False) -> Built:
    r = _rng(seed)
    labeled = mat73(
        images=r.integers(0, 255, (2, 3, 5, 4), dtype=np.uint8),  # stored transposed
        depths=r.random((2, 5, 4), dtype=np.float32),
        labels=r.integers(0, 894, (2, 5, 4), dtype=np.uint16),
    )
    splits = mat(
        trainNdxs=np.array([[1]], dtype=np.uint16), testNdxs=np.array([[2]], dtype=np.uint16)
    )
    mapping = mat(mapClass=r.integers(1, 41, (1, 894), dtype=np.uint8))

    def check(d: Path) -> None:
        with h5py.File(d / "nyu_depth_v2_labeled.mat", "r") as f:
            assert f["labels"].shape == (2, 5, 4)
        assert sio.loadmat(d / "splits.mat")["trainNdxs"].tolist() == [[1]]

    return Built(
        {
            "nyu_depth_v2_labeled.mat": labeled,
            "splits.mat": splits,
            "classMapping40.mat": mapping,
        },
        ["nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat"],
        check,
    )


def build_siftflow(seed: int = 0, evil: bool = False, top: str = "SiftFlowDataset/") -> Built:
    cat = "spatial_envelope_256x256_static_8outdoorcategories"
    ids = ["coast_arnat59", "street_urb521"]
    names = np.empty((1, 33), dtype=object)
    for k in range(33):
        names[0, k] = f"class{k}"
    entries = {}
    for i, id_ in enumerate(ids):
        s = _rng(seed + i).integers(0, 34, (4, 4), dtype=np.int32)
        entries[f"{top}Images/{cat}/{id_}.jpg"] = jpeg(seed + i, 4, 4)
        entries[f"{top}SemanticLabels/{cat}/{id_}.mat"] = mat(S=s, names=names)
        entries[f"{top}GeoLabels/{cat}/{id_}.mat"] = mat(S=s % 4 - 1, names=names[:, :3])
    entries[f"{top}TestSet1.txt"] = f"{cat}\\{ids[1]}.jpg\n".encode()
    data = zip_bytes(entries, evil="../escape.txt" if evil else None)

    def check(d: Path) -> None:
        assert sio.loadmat(d / f"{top}SemanticLabels/{cat}/{ids[0]}.mat")["S"].shape == (4, 4)

    return Built(
        {"SiftFlowDataset.zip": data},
        [f"{top}Images/{cat}/{ids[0]}.jpg", f"{top}GeoLabels/{cat}/{ids[1]}.mat"],
        check,
    )


def build_bsds500(seed: int = 0, evil: bool = False) -> Built:
    base = "BSR/BSDS500/data"
    entries = {}
    for j, split in enumerate(("train", "val", "test")):
        id_ = str(100075 + j + seed)
        gts = np.empty((1, 2), dtype=object)
        for k in range(2):
            seg = _rng(seed + k).integers(1, 5, (6, 8)).astype(np.uint16)
            gts[0, k] = {"Segmentation": seg, "Boundaries": (seg % 2).astype(np.uint8)}
        entries[f"{base}/images/{split}/{id_}.jpg"] = jpeg(seed + j)
        entries[f"{base}/groundTruth/{split}/{id_}.mat"] = mat(groundTruth=gts)
    entries["BSR/bench/benchmarks/boundaryBench.m"] = b"% benchmark code\n"
    data = tar_bytes(entries, gz=True)
    if evil:
        data = add_evil_tar_member(data, gz=True)

    def check(d: Path) -> None:
        m = sio.loadmat(d / f"{base}/groundTruth/val/{100076 + seed}.mat")
        assert m["groundTruth"][0, 1]["Boundaries"][0, 0].shape == (6, 8)

    return Built(
        {"BSR_bsds500.tgz": data},
        [f"{base}/images/test/{100077 + seed}.jpg", "BSR/bench/benchmarks/boundaryBench.m"],
        check,
    )


def build_pascal_context(seed: int = 0, evil: bool = False) -> Built:
    ids = ["2008_000002", "2008_000003"]
    entries = {
        f"trainval/{id_}.mat": mat(
            LabelMap=_rng(seed + i).integers(0, 459, (6, 8)).astype(np.uint16)
        )
        for i, id_ in enumerate(ids)
    }
    data = tar_bytes(entries, gz=True)
    if evil:
        data = add_evil_tar_member(data, gz=True)
    labels = "".join(f"{i}: class{i}\n" for i in range(1, 460)).encode()
    labels59 = "".join(f"{i}: class{i}\n" for i in range(0, 60)).encode()

    def check(d: Path) -> None:
        assert sio.loadmat(d / f"trainval/{ids[0]}.mat")["LabelMap"].shape == (6, 8)

    return Built(
        {"trainval.tar.gz": data, "labels.txt": labels, "59_labels.txt": labels59},
        [f"trainval/{ids[1]}.mat", "labels.txt", "59_labels.txt"],
        check,
    )


BUILDERS: dict[str, Callable[..., Built]] = {
    "voc2012": build_voc2012,
    "voc2011": build_voc2011,
    "voc2010": build_voc2010,
    "sbd": build_sbd,
    "sbd_train_noval": build_sbd_train_noval,
    "fcn_seg11valid": build_fcn_seg11valid,
    "nyudv2": build_nyudv2,
    "siftflow": build_siftflow,
    "bsds500": build_bsds500,
    "pascal_context": build_pascal_context,
}
ALL = sorted(BUILDERS)
ARCHIVED = ["bsds500", "pascal_context", "sbd", "siftflow", "voc2010", "voc2011", "voc2012"]
UNPUBLISHED = ["bsds500", "nyudv2", "pascal_context", "siftflow"]


# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------
@pytest.fixture
def www(tmp_path: Path) -> Path:
    d = tmp_path / "www"
    d.mkdir()
    return d


@pytest.fixture
def server(www: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(www) as srv:
        yield srv


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "datasets"


def publish(www: Path, name: str, built: Built) -> None:
    for filename, data in built.files.items():
        p = www / name / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def loopback_source(
    name: str,
    server: LoopbackServer,
    built: Built,
    *,
    primary_404: bool = False,
    wrong_checksum: bool = False,
) -> Source:
    """The real manifest entry with loopback URLs and the built files' checksums."""
    real = load_manifest()[name]
    specs = []
    for spec in real.files:
        data = built.files[spec.filename]
        urls = [server.url(f"{name}/{spec.filename}")]
        if primary_404:
            urls.insert(0, server.url(f"gone/{name}/{spec.filename}"))
        md5 = hashlib.md5(data).hexdigest() if spec.md5 else None
        sha256 = hashlib.sha256(data).hexdigest() if spec.sha256 else None
        if wrong_checksum:
            if spec.published:
                md5 = "0" * 32
            else:
                sha256 = "f" * 64
        size = len(data) if spec.size else None
        specs.append(dataclasses.replace(spec, urls=tuple(urls), md5=md5, sha256=sha256, size=size))
    return dataclasses.replace(real, files=tuple(specs))


def assert_fetched(root: Path, name: str, built: Built) -> Path:
    target = root / name
    for rel in built.expect:
        assert (target / rel).is_file(), f"{rel} missing after fetch of {name}"
    if built.check:
        built.check(target)
    assert (target / MARKER_NAME).is_file()
    return target


# --------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------
def test_manifest_has_every_source_with_published_checksums() -> None:
    m = load_manifest()
    assert set(m) == set(BUILDERS), "every source needs a builder in this test file"
    assert m["voc2012"].md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert m["voc2012"].urls[0].startswith("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/")
    assert len(m["voc2012"].urls) >= 2  # a mirror
    assert m["voc2011"].md5 == "6c3384ef61512963050cb5d687e5bf1e"
    assert m["voc2010"].md5 == "da459979d0c395079b5c75ee67908abb"
    assert m["sbd"].md5 == "82b4d87ceb2ed10f6038a1cba92111cb"
    assert m["sbd_train_noval"].md5 == "79bff800c5f0b1ec6b21080a3c066722"
    # FCN publishes no checksum: pinned from FCN's data/pascal/seg11valid.txt (736 ids)
    seg11 = m["fcn_seg11valid"]
    assert seg11.sha256 == "4ca991bd72c251fd2485eaa9e29536502ea3800d1b1c17c151fd6a04bcfbc2cc"
    assert (seg11.size, seg11.archive, seg11.layout) == (8832, "none", ("seg11valid.txt",))
    for name in UNPUBLISHED:
        assert all(not f.published for f in m[name].files), name
    assert [f.filename for f in m["nyudv2"].files] == [
        "nyu_depth_v2_labeled.mat",
        "splits.mat",
        "classMapping40.mat",
    ]
    assert {f.filename for f in m["pascal_context"].files} >= {"trainval.tar.gz", "59_labels.txt"}


def test_unknown_source_lists_known_names(root: Path) -> None:
    with pytest.raises(UnknownSourceError) as exc:
        fetch("voc2099", root, progress=False)
    assert isinstance(exc.value, DownloadError) and isinstance(exc.value, KeyError)
    assert "voc2099" in str(exc.value) and "voc2012" in str(exc.value)
    with pytest.raises(KeyError, match="known sources"):
        load_manifest()["nope"]


def test_bad_manifest_entry_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "sources.yaml"
    p.write_text("voc2012:\n  urls: [http://x/a.tar]\n  md5: not-a-digest\n  archive: tar\n")
    with pytest.raises(DataError, match=r"voc2012\.md5"):
        load_manifest(p)
    p.write_text("voc2012:\n  urls: [http://x/a.tar]\n  archive: rar\n")
    with pytest.raises(DataError, match=r"voc2012\.archive"):
        load_manifest(p)


def test_fetch_accepts_yaml_shaped_dict(server: LoopbackServer, www: Path, root: Path) -> None:
    (www / "ids.txt").write_bytes(b"a\nb\n")
    manifest = {"ids": {"urls": [server.url("ids.txt")], "md5": hashlib.md5(b"a\nb\n").hexdigest()}}
    out = fetch("ids", root, manifest=manifest, **FAST)
    assert (out / "ids.txt").read_bytes() == b"a\nb\n"


# --------------------------------------------------------------------------------------
# fetch, per dataset
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_fetch_extracts_real_layout_and_is_idempotent(
    name: str, server: LoopbackServer, www: Path, root: Path
) -> None:
    built = BUILDERS[name]()
    publish(www, name, built)
    src = loopback_source(name, server, built)
    out = fetch(name, root, manifest={name: src}, **FAST)
    assert out == root / name
    assert_fetched(root, name, built)
    real = load_manifest()[name]
    assert dataset_dir(name, root, manifest={name: src}) == (root / name / real.extracts_to)
    assert not (root / ".downloads" / name).exists(), "archives are deleted once extracted"
    pins = json.loads((root / PINS_NAME).read_text()) if (root / PINS_NAME).exists() else {}
    for spec in src.files:
        key = f"{name}/{spec.filename}"
        if spec.published:
            assert key not in pins
        else:
            assert pins[key]["sha256"] == hashlib.sha256(built.files[spec.filename]).hexdigest()

    n = len(server.requests)
    assert fetch(name, root, manifest={name: src}, **FAST) == out
    assert len(server.requests) == n, "a completed fetch must not download again"


@pytest.mark.parametrize("name", ALL)
def test_wrong_checksum_is_a_clear_error_and_nothing_is_extracted(
    name: str, server: LoopbackServer, www: Path, root: Path
) -> None:
    built = BUILDERS[name]()
    publish(www, name, built)
    src = loopback_source(name, server, built, wrong_checksum=True)
    with pytest.raises(DownloadError) as exc:
        fetch(name, root, manifest={name: src}, **FAST)
    msg = str(exc.value)
    first = load_manifest()[name].files[0]
    data = built.files[first.filename]
    assert first.filename in msg
    if first.published:
        assert "0" * 32 in msg and hashlib.md5(data).hexdigest() in msg
    else:
        assert "f" * 64 in msg and hashlib.sha256(data).hexdigest() in msg
    assert not (root / name).exists()
    assert not list(root.rglob("*.part")), "the bad .part must be removed"
    assert not (root / PINS_NAME).exists() or not json.loads((root / PINS_NAME).read_text())


@pytest.mark.parametrize("name", ALL)
def test_interrupted_transfer_is_resumed_with_a_range_request(
    name: str, server: LoopbackServer, www: Path, root: Path
) -> None:
    built = BUILDERS[name]()
    publish(www, name, built)
    src = loopback_source(name, server, built)
    first = src.files[0].filename
    cut = len(built.files[first]) // 2
    server.truncate(f"{name}/{first}", after=cut)
    fetch(name, root, manifest={name: src}, **FAST)
    assert_fetched(root, name, built)
    reqs = server.requests_for(f"{name}/{first}")
    assert [r.status for r in reqs] == [200, 206]
    assert reqs[1].range == f"bytes={cut}-"


@pytest.mark.parametrize("name", ARCHIVED)
def test_member_escaping_the_root_is_refused_before_extraction(
    name: str, server: LoopbackServer, www: Path, root: Path, tmp_path: Path, no_extraction: None
) -> None:
    built = BUILDERS[name](evil=True)
    publish(www, name, built)
    src = loopback_source(name, server, built)
    with pytest.raises(DataError, match=r"member '\.\./escape\.txt'"):
        fetch(name, root, manifest={name: src}, **FAST)
    assert not (root / name).exists()
    assert not list(tmp_path.rglob("escape.txt"))
    assert not (root / PINS_NAME).exists(), "a refused archive must not become the pin"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    # the verified download is kept, so fixing the cause does not cost another download
    assert (root / ".downloads" / name / src.files[0].filename).is_file()


@pytest.mark.parametrize("name", ALL)
def test_mirror_is_used_when_the_primary_404s(
    name: str, server: LoopbackServer, www: Path, root: Path
) -> None:
    built = BUILDERS[name]()
    publish(www, name, built)
    src = loopback_source(name, server, built, primary_404=True)
    fetch(name, root, manifest={name: src}, **FAST)
    assert_fetched(root, name, built)
    first = src.files[0].filename
    assert [r.status for r in server.requests_for(f"gone/{name}/{first}")] == [404]
    if name in UNPUBLISHED:  # the pin says where the bytes really came from
        pins = json.loads((root / PINS_NAME).read_text())
        assert pins[f"{name}/{first}"]["origin"] == server.url(f"{name}/{first}")


@pytest.mark.parametrize("name", UNPUBLISHED)
def test_pin_recorded_then_a_changed_file_fails_verification(
    name: str, server: LoopbackServer, www: Path, root: Path
) -> None:
    built = BUILDERS[name](seed=0)
    publish(www, name, built)
    src = loopback_source(name, server, built)
    fetch(name, root, manifest={name: src}, **FAST)
    first = src.files[0].filename
    pins = json.loads((root / PINS_NAME).read_text())
    assert pins[f"{name}/{first}"]["sha256"] == hashlib.sha256(built.files[first]).hexdigest()

    changed = BUILDERS[name](seed=5)
    assert changed.files[first] != built.files[first]
    publish(www, name, changed)
    with pytest.raises(DownloadError, match="pinned") as exc:
        fetch(name, root, manifest={name: src}, force=True, **FAST)
    assert hashlib.sha256(changed.files[first]).hexdigest() in str(exc.value)
    assert_fetched(root, name, built)  # the previous good copy is untouched


@pytest.mark.parametrize("name", ALL)
def test_from_dir_is_verified_and_needs_no_network(name: str, root: Path, tmp_path: Path) -> None:
    built = BUILDERS[name]()
    offline = tmp_path / "offline"
    offline.mkdir()
    for filename, data in built.files.items():
        (offline / filename).write_bytes(data)
    real = load_manifest()[name]
    files = tuple(
        dataclasses.replace(
            f,
            urls=(DEAD_URL,),
            md5=hashlib.md5(built.files[f.filename]).hexdigest() if f.md5 else None,
            sha256=hashlib.sha256(built.files[f.filename]).hexdigest() if f.sha256 else None,
            size=None,
        )
        for f in real.files
    )
    src = dataclasses.replace(real, files=files)
    fetch(name, root, from_dir=offline, manifest={name: src}, **FAST)
    assert_fetched(root, name, built)
    assert all((offline / f).is_file() for f in built.files), "from_dir files are not consumed"


def test_from_dir_checksum_mismatch_names_the_file_and_keeps_it(root: Path, tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    (offline / "voc2011").mkdir(parents=True)  # the <from>/<name>/<filename> form
    bad = offline / "voc2011" / "VOCtrainval_25-May-2011.tar"
    bad.write_bytes(b"not the VOC tarball")
    with pytest.raises(DataError) as exc:
        fetch("voc2011", root, from_dir=offline, progress=False)
    assert str(bad) in str(exc.value) and "6c3384ef61512963050cb5d687e5bf1e" in str(exc.value)
    assert hashlib.md5(b"not the VOC tarball").hexdigest() in str(exc.value)
    assert bad.is_file() and not (root / "voc2011").exists()
    with pytest.raises(DataError, match="train_noval.txt not found"):
        fetch("sbd_train_noval", root, from_dir=offline, progress=False)


def test_pin_applies_to_from_dir_too(root: Path, tmp_path: Path) -> None:
    built = build_bsds500()
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "BSR_bsds500.tgz").write_bytes(built.files["BSR_bsds500.tgz"])
    src = dataclasses.replace(
        load_manifest()["bsds500"],
        files=(dataclasses.replace(load_manifest()["bsds500"].files[0], urls=(DEAD_URL,)),),
    )
    fetch("bsds500", root, from_dir=offline, manifest={"bsds500": src}, **FAST)
    (offline / "BSR_bsds500.tgz").write_bytes(build_bsds500(seed=3).files["BSR_bsds500.tgz"])
    with pytest.raises(DataError, match="pinned"):
        fetch("bsds500", root, from_dir=offline, manifest={"bsds500": src}, force=True, **FAST)


def test_existing_foreign_folder_is_never_replaced_silently(
    server: LoopbackServer, www: Path, root: Path
) -> None:
    built = build_sbd_train_noval()
    publish(www, "sbd_train_noval", built)
    src = {"sbd_train_noval": loopback_source("sbd_train_noval", server, built)}
    mine = root / "sbd_train_noval" / "my_notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("hand-made")
    with pytest.raises(DataError, match="not created by fetch"):
        fetch("sbd_train_noval", root, manifest=src, **FAST)
    assert mine.read_text() == "hand-made" and server.requests == []
    fetch("sbd_train_noval", root, manifest=src, force=True, **FAST)
    assert not mine.exists() and (root / "sbd_train_noval" / "train_noval.txt").is_file()


def test_wrong_layout_is_refused_and_the_download_kept(
    server: LoopbackServer, www: Path, root: Path
) -> None:
    built = build_voc2012()
    # an archive that is not the VOC tarball (right checksum for what it is, wrong tree)
    built.files["VOCtrainval_11-May-2012.tar"] = tar_bytes({"README": b"hi\n"}, gz=False)
    publish(www, "voc2012", built)
    src = loopback_source("voc2012", server, built)
    with pytest.raises(DataError, match="JPEGImages"):
        fetch("voc2012", root, manifest={"voc2012": src}, **FAST)
    assert not (root / "voc2012").exists()
    assert (root / ".downloads" / "voc2012" / "VOCtrainval_11-May-2012.tar").is_file()


def test_siftflow_zip_without_top_folder_uses_alternative(
    server: LoopbackServer, www: Path, root: Path
) -> None:
    built = build_siftflow(top="")
    publish(www, "siftflow", built)
    src = loopback_source("siftflow", server, built)
    fetch("siftflow", root, manifest={"siftflow": src}, **FAST)
    assert dataset_dir("siftflow", root, manifest={"siftflow": src}) == root / "siftflow"


def test_concurrent_fetches_download_once(server: LoopbackServer, www: Path, root: Path) -> None:
    built = build_sbd()
    publish(www, "sbd", built)
    src = loopback_source("sbd", server, built)
    results: list[Path | BaseException] = []

    def run() -> None:
        try:
            results.append(fetch("sbd", root, manifest={"sbd": src}, **FAST))
        except BaseException as e:  # noqa: BLE001
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [root / "sbd"] * 3
    assert len(server.requests_for("sbd/benchmark.tgz")) == 1


# --------------------------------------------------------------------------------------
# download_file
# --------------------------------------------------------------------------------------
@pytest.fixture
def blob(www: Path) -> bytes:
    data = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (www / "blob.bin").write_bytes(data)
    return data


def _dl(server: LoopbackServer, dest: Path, data: bytes, **kw: object) -> Path:
    args = {"md5": hashlib.md5(data).hexdigest(), **FAST, **kw}
    return download_file([server.url("blob.bin")], dest, **args)  # type: ignore[arg-type]


def test_download_resumes_an_existing_part(
    server: LoopbackServer, blob: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(blob[:100_000])
    assert _dl(server, dest, blob, size=len(blob)) == dest
    assert dest.read_bytes() == blob and not (dest.parent / "blob.bin.part").exists()
    [req] = server.requests_for("blob.bin")
    assert (req.range, req.status) == ("bytes=100000-", 206)


def test_server_ignoring_range_restarts_from_zero(
    server: LoopbackServer, blob: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(blob[:100_000])
    server.ignore_range = True
    _dl(server, dest, blob)
    assert dest.read_bytes() == blob
    [req] = server.requests_for("blob.bin")
    assert req.range and req.status == 200


def test_stale_part_from_another_file_is_caught_by_the_checksum(
    server: LoopbackServer, blob: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)  # not a prefix of blob
    with pytest.raises(DownloadError, match="md5 mismatch for blob.bin"):
        _dl(server, dest, blob)
    assert not dest.exists() and not (tmp_path / "blob.bin.part").exists()
    _dl(server, dest, blob)  # the next attempt starts clean
    assert dest.read_bytes() == blob


def test_complete_part_is_verified_without_downloading(
    server: LoopbackServer, blob: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(blob)
    _dl(server, dest, blob)  # size unknown: the server answers 416 bytes */N
    assert dest.read_bytes() == blob
    assert [r.status for r in server.requests_for("blob.bin")] == [416]
    dest.unlink()
    (tmp_path / "blob.bin.part").write_bytes(blob)
    _dl(server, dest, blob, size=len(blob))  # size known: no request at all
    assert len(server.requests_for("blob.bin")) == 1


@pytest.mark.parametrize("fault", ["drop", "truncate", "500", "503"])
def test_transient_faults_are_retried(
    fault: str, server: LoopbackServer, blob: bytes, tmp_path: Path
) -> None:
    if fault == "drop":
        server.drop("blob.bin")
    elif fault == "truncate":
        server.truncate("blob.bin", after=1234)
    else:
        server.fail("blob.bin", int(fault), times=2)
    dest = _dl(server, tmp_path / "blob.bin", blob)
    assert dest.read_bytes() == blob


def test_persistent_5xx_gives_up_naming_file_and_url(
    server: LoopbackServer, blob: bytes, tmp_path: Path
) -> None:
    server.fail("blob.bin", 500)
    with pytest.raises(DownloadError) as exc:
        _dl(server, tmp_path / "blob.bin", blob, retries=3)
    assert "blob.bin" in str(exc.value) and server.url("blob.bin") in str(exc.value)
    assert "HTTP 500" in str(exc.value)
    assert len(server.requests_for("blob.bin")) == 4


def test_all_mirrors_missing_lists_each(
    server: LoopbackServer, blob: bytes, tmp_path: Path
) -> None:
    urls = [server.url("a/blob.bin"), server.url("b/blob.bin")]
    with pytest.raises(DownloadError) as exc:
        download_file(urls, tmp_path / "blob.bin", **FAST)
    assert all(u in str(exc.value) for u in urls) and "404" in str(exc.value)
    assert len(server.requests) == 2, "a 404 is not retried"


def test_size_mismatch_is_refused(server: LoopbackServer, blob: bytes, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="expected 12345"):
        _dl(server, tmp_path / "blob.bin", blob, size=12345)
    assert not (tmp_path / "blob.bin").exists()


def test_gzip_content_encoding_is_not_decoded(
    server: LoopbackServer, www: Path, tmp_path: Path
) -> None:
    data = build_bsds500().files["BSR_bsds500.tgz"]
    (www / "x.tgz").write_bytes(data)
    server.add_header("x.tgz", "Content-Encoding", "gzip")  # what Apache does for .tgz
    dest = download_file(
        [server.url("x.tgz")], tmp_path / "x.tgz", md5=hashlib.md5(data).hexdigest(), **FAST
    )
    assert dest.read_bytes() == data
    assert server.requests_for("x.tgz")[0].headers.get("Accept-Encoding") == "identity"


def test_existing_verified_dest_is_not_downloaded_again(
    server: LoopbackServer, blob: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "blob.bin"
    dest.write_bytes(blob)
    _dl(server, dest, blob)
    assert server.requests == []
    dest.write_bytes(b"corrupt")
    _dl(server, dest, blob)
    assert dest.read_bytes() == blob and len(server.requests) == 1


# --------------------------------------------------------------------------------------
# safe_extract
# --------------------------------------------------------------------------------------
def _tar_with(tmp_path: Path, members: list[tarfile.TarInfo], gz: bool = False) -> Path:
    path = tmp_path / ("evil.tar.gz" if gz else "evil.tar")
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        ok = tarfile.TarInfo("data/ok.txt")
        ok.size = 3
        tf.addfile(ok, io.BytesIO(b"ok\n"))
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


HOSTILE = {
    "absolute": ([_file("/tmp/densepipe-abs.txt")], "/tmp/densepipe-abs.txt"),
    "dotdot": ([_file("../up.txt")], "../up.txt"),
    "nested-dotdot": ([_file("data/../../up.txt")], "data/../../up.txt"),
    "symlink-absolute": ([_link("data/pw", "/etc/passwd")], "data/pw"),
    "symlink-relative-out": ([_link("data/up", "../../x")], "data/up"),
    # textually inside, but b is the root itself so b/.. is its parent
    "symlink-through-symlink": ([_link("b", "."), _link("a", "b/../x")], "a"),
    "write-through-symlink": ([_link("d", "."), _file("d/../x")], "d/../x"),
    "hardlink-out": ([_link("data/h", "../x", hard=True)], "data/h"),
    "hardlink-absolute": ([_link("data/h", "/etc/passwd", hard=True)], "data/h"),
    "device": ([_special("data/dev", tarfile.CHRTYPE)], "data/dev"),
    "fifo": ([_special("data/fifo", tarfile.FIFOTYPE)], "data/fifo"),
}


@pytest.fixture
def no_extraction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything gets extracted: hostile members must be refused *before*."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("extraction started before the members were checked")

    monkeypatch.setattr(tarfile.TarFile, "extractall", refuse)
    monkeypatch.setattr(tarfile.TarFile, "extract", refuse)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", refuse)
    monkeypatch.setattr(zipfile.ZipFile, "extract", refuse)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_safe_extract_refuses_hostile_tar_members(
    case: str, tmp_path: Path, no_extraction: None
) -> None:
    members, named = HOSTILE[case]
    archive = _tar_with(tmp_path, members, gz=case.startswith("symlink"))
    dest = tmp_path / "sub" / "out"
    with pytest.raises(DataError) as exc:
        safe_extract(archive, dest)
    assert f"member {named!r}" in str(exc.value) and str(archive) in str(exc.value)
    assert not dest.exists()
    assert not (tmp_path / "sub").exists() or list((tmp_path / "sub").iterdir()) == []
    assert not Path("/tmp/densepipe-abs.txt").exists()
    assert not (tmp_path / "up.txt").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["../up.txt", "/abs.txt", "a/../../up.txt"])
def test_safe_extract_refuses_hostile_zip_members(
    name: str, tmp_path: Path, no_extraction: None
) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zip_bytes({"data/ok.txt": b"ok"}, evil=name))
    with pytest.raises(DataError, match=f"member {name!r}"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "up.txt").exists()


def test_safe_extract_keeps_internal_links_and_replaces_dest_atomically(tmp_path: Path) -> None:
    archive = _tar_with(
        tmp_path, [_link("data/alias.txt", "ok.txt"), _link("data/hard.txt", "data/ok.txt", True)]
    )
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    assert safe_extract(archive, dest) == dest
    assert (dest / "data/alias.txt").read_text() == "ok\n"
    assert (dest / "data/hard.txt").read_text() == "ok\n"
    assert not (dest / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar", "out"]


def test_safe_extract_rejects_non_archives(tmp_path: Path) -> None:
    p = tmp_path / "x.tar"
    p.write_bytes(b"plain text, not an archive" * 40)
    with pytest.raises(DataError, match="neither a tar nor a zip"):
        safe_extract(p, tmp_path / "out")
