"""Built-in data: deterministic, real VOC layout, void band, learnable class cues."""

import hashlib

import numpy as np
from PIL import Image

from pipeline.data.builtin.voc import BuiltinSpec, render_example, write_builtin_voc
from pipeline.data.datasets.voc import VOC

SPEC = BuiltinSpec(num_train=6, num_val=3, size=48, seed=3)


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_and_determinism(tmp_path):
    a = write_builtin_voc(tmp_path / "a", SPEC, progress=False)
    b = write_builtin_voc(tmp_path / "b", SPEC, progress=False)
    assert _digest(a) == _digest(b)
    assert (a / "ImageSets/Segmentation/train.txt").read_text().split() == VOC().list_ids(
        a, "train"
    )
    assert len(VOC().list_ids(a, "val")) == 3
    ex = VOC().load_example(a, VOC().list_ids(a, "train")[0])
    assert (ex["height"], ex["width"]) == (48, 48)
    label = Image.open(a / "SegmentationClass" / f"{ex['id']}.png")
    assert label.mode == "P"  # palette PNG as in VOC


def test_labels_have_void_band_and_valid_classes():
    image, label = render_example(BuiltinSpec(size=64, seed=0), 5)
    values = set(np.unique(label))
    assert 255 in values and 0 in values
    assert values <= set(range(0, 6)) | {255}
    # the void band separates every object pixel from background pixels
    obj = (label > 0) & (label < 255)
    padded = np.pad(label, 1, constant_values=255)
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        neighbour = padded[1 + dy : 65 + dy, 1 + dx : 65 + dx]
        assert not np.any(obj & (neighbour == 0))
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)


def test_class_cues_differ_in_colour():
    """Each class has its own colour, so a small network can learn it."""
    spec = BuiltinSpec(size=64, seed=0)
    means = {}
    for i in range(40):
        image, label = render_example(spec, i)
        for k in range(1, spec.num_object_classes + 1):
            if (label == k).sum() > 20:
                means.setdefault(k, []).append(image[label == k].mean(0))
    centroids = {k: np.mean(v, 0) for k, v in means.items()}
    keys = sorted(centroids)
    assert len(keys) == spec.num_object_classes
    dists = [np.linalg.norm(centroids[a] - centroids[b]) for a in keys for b in keys if a < b]
    assert min(dists) > 20
