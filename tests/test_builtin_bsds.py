"""Built-in BSDS500: the real on-disk layout, read by the real parser, annotators that disagree."""

import hashlib

import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy import ndimage

from pipeline.data.builtin.bsds import (
    BSDSBuiltinSpec,
    render_bsds_example,
    segmentation_boundaries,
    write_builtin_bsds,
)
from pipeline.data.datasets.bsds import BSDS, consensus_edges

SPEC = BSDSBuiltinSpec(num_train=6, num_val=3, num_test=1, height=40, width=56, seed=2)


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def bsds_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("bsds") / "raw"
    data = write_builtin_bsds(raw, SPEC, progress=False)
    return raw, data


def test_real_layout_and_byte_identical_reruns(bsds_raw, tmp_path):
    raw, data = bsds_raw
    assert data == raw / "BSR" / "BSDS500" / "data"
    for split, n in (("train", 6), ("val", 3), ("test", 1)):
        assert len(list((data / "images" / split).glob("*.jpg"))) == n
        assert len(list((data / "groundTruth" / split).glob("*.mat"))) == n
    again = write_builtin_bsds(tmp_path / "again", SPEC, progress=False)
    assert _digest(again) == _digest(data)  # MAT headers carry no date: DVC caches it


def test_ground_truth_is_a_matlab_cell_of_structs(bsds_raw):
    _, data = bsds_raw
    path = next((data / "groundTruth" / "train").glob("*.mat"))
    gt = scipy.io.loadmat(str(path))["groundTruth"]  # as the BSDS benchmark code reads it
    assert gt.shape[0] == 1 and SPEC.min_annotators <= gt.shape[1] <= SPEC.max_annotators
    seg = gt[0, 0]["Segmentation"][0, 0]
    bdry = gt[0, 0]["Boundaries"][0, 0]
    assert seg.dtype == np.uint16 and seg.min() == 1
    assert seg.shape == bdry.shape and set(np.unique(bdry)) <= {0, 1}


def test_parses_with_the_bsds_reader(bsds_raw):
    raw, data = bsds_raw
    bsds = BSDS()
    ids = bsds.list_ids(raw, "train")
    assert len(ids) == 6 and len(bsds.list_ids(raw, "val")) == 3
    assert len(bsds.list_ids(raw, "trainval")) == 9
    for i, example_id in enumerate(ids):
        record = bsds.load_example(raw, example_id)
        portrait = i % 5 == 4
        assert (record["height"], record["width"]) == ((56, 40) if portrait else (40, 56))
        assert SPEC.min_annotators <= record["num_annotators"] <= SPEC.max_annotators
        image = Image.open(data / "images" / "train" / f"{example_id}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB"


def test_annotators_disagree_slightly_and_consensus_has_edges():
    spec = BSDSBuiltinSpec()
    differ, fractions, agree = 0, [], []
    for i in range(12):
        _, segs, bounds = render_bsds_example(spec, i)
        assert np.array_equal(bounds[0], segmentation_boundaries(segs[0]))
        differ += any(not np.array_equal(bounds[0], b) for b in bounds[1:])
        union = bounds.max(axis=0)
        consensus = consensus_edges(bounds, min_annotators=3)
        assert consensus.sum() > 0
        fractions.append(consensus.sum() / union.sum())
        # slight disagreement: each annotator's edges lie mostly within a pixel of another's
        for k in range(len(bounds)):
            others = np.delete(bounds, k, axis=0).max(axis=0).astype(bool)
            near = ndimage.binary_dilation(others, structure=np.ones((3, 3), bool))
            if bounds[k].sum():
                agree.append((near & bounds[k].astype(bool)).sum() / bounds[k].sum())
    assert min(agree) > 0.5 and np.mean(agree) > 0.85, agree
    assert differ >= 10  # nearly every image has annotators that differ
    assert 0.2 < np.mean(fractions) < 0.9  # consensus keeps some, not all, of the union


def test_image_depends_only_on_seed_and_index():
    a = render_bsds_example(BSDSBuiltinSpec(seed=1), 3)
    b = render_bsds_example(BSDSBuiltinSpec(seed=1, num_train=5), 3)
    c = render_bsds_example(BSDSBuiltinSpec(seed=2), 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_bad_spec_is_value_error():
    with pytest.raises(ValueError, match="min_annotators"):
        BSDSBuiltinSpec(min_annotators=5, max_annotators=4)
    with pytest.raises(ValueError, match="num_val"):
        BSDSBuiltinSpec(num_val=-1)
