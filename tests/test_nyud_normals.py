"""PixelNet surface normals on NYUDv2 (Table 5): the built-in NYUDv2, the normals column, the
loader's normals targets, the evaluation and the experiment/report wiring."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.data.builtin.nyud import MAP_CLASS, NYUDBuiltinSpec, write_builtin_nyud
from pipeline.data.datasets.nyud import NYUD, NYUD_CLASSES, metres_to_mm
from pipeline.data.encodings.normals import (
    NYU_CAMERA,
    depth_to_normals,
    normals_to_png,
    png_to_normals,
)
from pipeline.data.loader import Augment, InputSpec, _shift, batch_to_tensors, decode_rows
from pipeline.errors import DataError
from pipeline.params import Params

REPO = Path(__file__).resolve().parents[1]
SMALL = NYUDBuiltinSpec(num_train=4, num_test=2, height=48, width=64, seed=3)
QUANT = 1.0 / 32767  # one step of the 16-bit normals code


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory) -> Path:
    return write_builtin_nyud(tmp_path_factory.mktemp("nyud"), SMALL, progress=False)


def _png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


# ------------------------------------------------------------------ built-in NYUDv2


def test_builtin_is_byte_deterministic_in_the_real_layout(nyud_root, tmp_path):
    import scipy.io

    again = write_builtin_nyud(tmp_path, SMALL, progress=False)
    files = sorted(p.relative_to(nyud_root) for p in nyud_root.rglob("*") if p.is_file())
    assert [str(f) for f in files] == [
        "fcn-splits/classes.txt",
        "fcn-splits/test.txt",
        "fcn-splits/train.txt",
        "fcn-splits/val.txt",
        "metadata/classMapping40.mat",
        "metadata/splits.mat",
        "nyu_depth_v2_labeled.mat",
    ]
    for f in files:
        assert (nyud_root / f).read_bytes() == (again / f).read_bytes(), f
    assert scipy.io.matlab.matfile_version(str(nyud_root / "nyu_depth_v2_labeled.mat")) == (2, 0)
    mapping = scipy.io.loadmat(nyud_root / "metadata/classMapping40.mat")["mapClass"].ravel()
    assert mapping.shape == (894,) and mapping.min() == 1 and mapping.max() == 40
    other = write_builtin_nyud(tmp_path / "seed", NYUDBuiltinSpec(4, 2, 48, 64, seed=4), False)
    assert (other / "nyu_depth_v2_labeled.mat").read_bytes() != (
        nyud_root / "nyu_depth_v2_labeled.mat"
    ).read_bytes()


def test_builtin_parses_through_the_real_parser(nyud_root):
    ds = NYUD(crop=False)
    train, val, test = (ds.list_ids(nyud_root, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (2, 2, 2)
    assert ds.list_ids(nyud_root, "trainval") == train + val
    assert set(ds.official_ids(nyud_root, "train")) == set(train + val)
    assert ds.official_ids(nyud_root, "test") == test
    assert sorted(int(i) for i in train + val + test) == list(range(5001, 5007))
    frame = ds.read_frame(nyud_root, test[0])
    raw = frame["labels"].astype(int)
    record = ds.load_example(nyud_root, test[0])
    assert (record["height"], record["width"]) == (48, 64)
    assert {"depth", "raw_depth", "hha", "normals"} <= set(record)
    label = _png(record["label"])
    np.testing.assert_array_equal(label, np.where(raw == 0, 255, MAP_CLASS[raw - 1] - 1))
    present = {NYUD_CLASSES[c] for c in np.unique(label) if c != 255}
    assert {"wall", "floor"} <= present and (label == 255).any()  # unlabelled object borders
    assert present <= {"wall", "floor", "ceiling", "picture", "box", "cabinet", "dresser",
                       "night stand", "bookshelf"}  # fmt: skip
    depth, raw_depth = _png(record["depth"]), _png(record["raw_depth"])
    np.testing.assert_array_equal(depth, metres_to_mm(frame["depth"]))
    assert depth.min() > 1000 and (raw_depth == 0).any()
    assert ((raw_depth == depth) | (raw_depth == 0)).all()
    assert _png(record["hha"]).shape == (48, 64, 3)
    with pytest.raises(DataError, match="crop"):  # Gupta's crop needs 480 x 640 frames
        NYUD(crop=True).load_example(nyud_root, test[0])


def test_builtin_from_params_through_acquire(tmp_path):
    from pipeline.data.sources.acquire import acquire, check_splits, data_config, raw_dir

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["nyud"]["builtin"] = {"num_train": 4, "num_test": 2, "height": 48, "width": 64}
    params = Params(raw)
    config = data_config(params, "nyud")
    assert config.source == "builtin" and config.options["crop"] is False
    root = acquire(config, raw_dir("nyud", tmp_path), progress=False)
    assert root == tmp_path / "data/raw/nyud/NYUDv2"
    assert check_splits(config, root) == {"train": 4, "val": 2}
    assert data_config(Params({**raw, "profile": "paper"}), "nyud").options["crop"] is True


def test_scenes_are_planes_whose_normals_follow_the_surfaces():
    """Most pixels of a built-in frame lie on planes: their least-squares normals agree with
    the floor's (up) or a wall's (horizontal) orientation, and colour varies with them."""
    from pipeline.data.builtin.nyud import render_nyud_frame

    spec = NYUDBuiltinSpec()
    frame = render_nyud_frame(spec, 0)
    n = depth_to_normals(frame["depth"].astype(np.float64), camera=spec.camera())
    floor = MAP_CLASS[frame["labels"].astype(int) - 1] == NYUD_CLASSES.index("floor") + 1
    floor &= frame["labels"] > 0
    # the floor's normals are one direction (up in the world), up to the fit at its borders
    f = n[floor]
    mean = f.mean(0) / np.linalg.norm(f.mean(0))
    assert np.median(np.degrees(np.arccos(np.clip(f @ mean, -1, 1)))) < 1.0
    assert frame["rgb"][floor].std(0).max() > 3  # texture


# ------------------------------------------------------------------ the normals column


def test_normals_png_roundtrip_is_lossless_enough():
    rng = np.random.default_rng(0)
    n = rng.normal(size=(5, 7, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[1, 2] = np.nan
    n[3, 4, 0] = np.inf
    back = png_to_normals(normals_to_png(n), 5)
    assert back.dtype == np.float32 and back.shape == (5, 7, 3)
    bad = ~np.isfinite(n).all(-1)
    assert np.isnan(back[bad]).all() and np.isfinite(back[~bad]).all()
    assert np.abs(back[~bad] - n[~bad]).max() <= QUANT / 2 + 1e-6


def test_normals_column_equals_depth_to_normals_of_the_depth(nyud_root):
    ds = NYUD(crop=False, hha=False)
    example = ds.list_ids(nyud_root, "train")[0]
    record = ds.load_example(nyud_root, example)
    depth_m = _png(record["depth"]).astype(np.float64) / 1000.0
    expected = depth_to_normals(depth_m, camera=SMALL.camera())
    assert ds.camera(NYU_CAMERA, (48, 64)) == SMALL.camera()  # what the parser derives
    got = png_to_normals(record["normals"], record["height"])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    ok = ~np.isnan(expected)
    assert ok.mean() > 0.99 and np.abs(got[ok] - expected[ok]).max() <= QUANT / 2 + 1e-6
    # raw-depth masking: pixels without raw depth have no normal
    masked = NYUD(crop=False, hha=False, normals_mask_missing=True).load_example(nyud_root, example)
    holes = _png(record["raw_depth"]) == 0
    got = png_to_normals(masked["normals"], record["height"])
    assert holes.any() and np.isnan(got[holes]).all()
    assert "normals" not in NYUD(crop=False, hha=False, normals=False).load_example(
        nyud_root, example
    )


def test_prepare_writes_the_normals_column_in_the_ray_map(ray_local, nyud_root, tmp_path):
    import pyarrow.parquet as pq

    from pipeline.data.prepare import prepare_split

    assert prepare_split(NYUD(crop=False), nyud_root, "test", tmp_path / "out") == 2
    table = pq.read_table(sorted((tmp_path / "out").glob("*.parquet")))
    assert {"normals", "hha", "depth"} <= set(table.column_names)
    for row in range(table.num_rows):
        depth_m = _png(table.column("depth")[row].as_py()).astype(np.float64) / 1000.0
        expected = depth_to_normals(depth_m, camera=SMALL.camera())
        got = png_to_normals(table.column("normals")[row].as_py(), 48)
        ok = ~np.isnan(expected)
        np.testing.assert_array_equal(np.isnan(got), ~ok)
        assert np.abs(got[ok] - expected[ok]).max() <= QUANT / 2 + 1e-6


# ------------------------------------------------------------------ the loader


def _batch(normals: list[np.ndarray], size=(6, 8)) -> dict:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (*n.shape[:2], 3), dtype=np.uint8) for n in normals]
    return {
        "id": np.array([f"r{i}" for i in range(len(normals))], dtype=object),
        "image": np.array([_encode(im) for im in images], dtype=object),
        "normals": np.array([normals_to_png(n) for n in normals], dtype=object),
        "height": np.array([n.shape[0] for n in normals]),
        "width": np.array([n.shape[1] for n in normals]),
        "label": np.array([_encode(np.zeros(n.shape[:2], np.uint8)) for n in normals], object),
    }


def _encode(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _unit(shape, seed=0) -> np.ndarray:
    n = np.random.default_rng(seed).normal(size=(*shape, 3))
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def test_loader_normals_targets_and_mirror_flips_x():
    n = _unit((6, 8))
    n[0, 0] = np.nan
    small = _unit((4, 5), seed=2)
    batch = _batch([n, small])
    x, y = batch_to_tensors(batch, InputSpec(), task="normals")
    assert x.shape == (2, 3, 6, 8) and y.shape == (2, 3, 6, 8) and y.dtype == torch.float32
    plain = y[0].permute(1, 2, 0).numpy()
    assert np.isnan(plain[0, 0]).all() and np.abs(plain[1:] - n[1:]).max() < 1e-4
    assert torch.isnan(y[1, :, 4:, :]).all() and torch.isnan(y[1, :, :, 5:]).all()  # padding
    # a mirrored row: image columns reversed, normals reversed with x negated
    for seed in range(20):
        rng = np.random.default_rng(seed)
        if rng.random() < 0.5:
            break
    (image, flipped), _ = decode_rows(
        batch, Augment(mirror=True), np.random.default_rng(seed), task="normals"
    )
    plain_image, _ = decode_rows(batch, task="normals")[0]
    np.testing.assert_array_equal(image, plain_image[:, ::-1])
    expected = png_to_normals(batch["normals"][0], 6)[:, ::-1] * [-1, 1, 1]
    np.testing.assert_array_equal(np.isnan(flipped), np.isnan(expected))
    np.testing.assert_allclose(flipped[1:], expected[1:], atol=1e-6)
    assert (flipped[1:, :, 0] * plain[1:, ::-1, 0] <= 1e-12).all()  # x really changed sign
    # jitter moves normals with the image and fills uncovered pixels with NaN
    (_, shifted), _ = decode_rows(batch, Augment(jitter=2), np.random.default_rng(5), "normals")
    dy, dx = np.random.default_rng(5).integers(-2, 3, 2)
    want = _shift(png_to_normals(batch["normals"][0], 6), dy, dx, np.nan)
    np.testing.assert_array_equal(shifted, want)
    # rescaling resamples (nearest): unit vectors stay unit vectors
    (img, half), _ = decode_rows(batch, Augment(scales=(0.5,)), np.random.default_rng(0), "normals")
    assert img.shape[:2] == half.shape[:2] == (3, 4)
    ok = np.isfinite(half).all(-1)
    np.testing.assert_allclose(np.linalg.norm(half[ok], axis=-1), 1.0, atol=1e-4)


def test_loader_names_a_missing_normals_column_and_masks():
    batch = _batch([_unit((6, 8))])
    del batch["normals"]
    with pytest.raises(DataError, match="normals"):
        batch_to_tensors(batch, InputSpec(), task="normals")
    with pytest.raises(ValueError, match="mask"):
        batch_to_tensors(_batch([_unit((6, 8))]), InputSpec(mask="fg"), task="normals")


# ------------------------------------------------------------------ evaluation


class _Replay(torch.nn.Module):
    """A 'model' that returns prepared outputs in order (B x 3 x H x W each)."""

    def __init__(self, outputs: list[torch.Tensor]):
        super().__init__()
        self.outputs = list(outputs)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.outputs.pop(0)


def _table(normals: list[np.ndarray]):
    import pyarrow as pa

    batch = _batch(normals)
    return pa.table({k: list(v) for k, v in batch.items()})


def test_evaluate_perfect_prediction_gives_zero_error(tmp_path):
    from pipeline.evaluation.normals import evaluate_normals, write_outputs

    truths = [_unit((6, 8), 0), _unit((6, 8), 1)]
    truths[0][2:4, 3:5] = np.nan  # no normal: not scored
    table = _table(truths)
    decoded = [png_to_normals(normals_to_png(t), 6) for t in truths]
    # unnormalised (x 3) but exact directions; NaN-free where the truth has none
    outputs = [
        torch.from_numpy(np.nan_to_num(3.0 * d).transpose(2, 0, 1)[None].copy()) for d in decoded
    ]
    scores, kept = evaluate_normals(_Replay(outputs), table, InputSpec(), progress=False)
    assert scores["n_pixels"] == 2 * 48 - 4
    assert scores["mean"] == pytest.approx(0.0, abs=1e-3)
    assert scores["median"] == pytest.approx(0.0, abs=1e-3)
    assert scores["rmse"] == pytest.approx(0.0, abs=1e-3)
    for key in ("within_11_25", "within_22_5", "within_30"):
        assert scores[key] == 100.0
    metrics = write_outputs(scores, kept, tmp_path / "figures")
    assert set(metrics) == {
        "mean", "median", "rmse", "within_11_25", "within_22_5", "within_30", "n_pixels",
    }  # fmt: skip
    assert (tmp_path / "figures" / "predictions.png").stat().st_size > 0
    # a prediction at right angles to every truth: 90 degrees, none within 30
    ortho = [np.cross(d, _unit((6, 8), 7)) for d in decoded]
    outputs = [torch.from_numpy(np.nan_to_num(o).transpose(2, 0, 1)[None].copy()) for o in ortho]
    scores, _ = evaluate_normals(_Replay(outputs), table, InputSpec(), progress=False)
    assert scores["mean"] == pytest.approx(90.0, abs=1e-3) and scores["within_30"] == 0.0


def test_accumulator_matches_normal_errors():
    from pipeline.metrics.normals import NormalErrorAccumulator, normal_errors

    pred, gt = _unit((30, 40), 3), _unit((30, 40), 4)
    valid = np.random.default_rng(5).random((30, 40)) > 0.2
    acc = NormalErrorAccumulator()
    acc.add(pred[:10], gt[:10], valid[:10])
    acc.add(pred[10:], gt[10:], valid[10:])
    whole = normal_errors(pred, gt, valid)
    got = acc.scores()
    for key, value in whole.items():
        assert got[key] == pytest.approx(value, abs=1e-3 if key == "median" else 1e-9), key


def test_pixelnet_learns_normals_from_the_loader_batches(nyud_root):
    """A few training steps of a tiny PixelNet on built-in frames reduce the 1 - cos loss."""
    from pipeline.models import build_model

    ds = NYUD(crop=False, hha=False)
    rows = [ds.load_example(nyud_root, i) for i in ds.list_ids(nyud_root, "trainval")]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    x, y = batch_to_tensors(batch, InputSpec(), task="normals")
    torch.manual_seed(0)
    model = build_model(
        "pixelnet", 3, width=0.0625, mlp=[256], sampling={"per_image": 300}, dropout=0.0
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(12):
        generator = torch.Generator().manual_seed(step % 2)
        total, norm = model.training_loss(x, y, task="normals", generator=generator)
        optimiser.zero_grad()
        (total / norm).backward()
        optimiser.step()
        losses.append(float(total.detach() / norm))
    assert losses[-1] < 0.8 * losses[0]
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 3, 48, 64)


# ------------------------------------------------------------------ experiment and report


def _params(run: str) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["run"] = raw["experiments"][run]
    return Params(raw)


def test_pixelnet_normals_experiment_and_each_sets_datasets():
    from pipeline.data.sources.acquire import build_list
    from pipeline.experiment import experiment, train_config

    for profile in ("tiny", "paper"):
        params = Params({**_params("all").data, "profile": profile})
        entry = experiment(params, "pixelnet-normals")
        assert (entry["model"], entry["dataset"], entry["task"]) == ("pixelnet", "nyud", "normals")
        assert entry["tables"] == {"pixelnet_table5": "pixelnet"}
        config = train_config(params, "pixelnet-normals", root=REPO)
        assert config.num_classes == 3 and config.task == "normals"
    assert train_config(_params("all"), "pixelnet-normals", root=REPO).iterations <= 60
    # each experiment set lists the datasets it reads: `run: *all` also builds nyud
    assert build_list(_params("all")) == [
        "voc_aug",
        "voc_fcn",
        "bsds",
        "nyud",
        "siftflow",
        "context59",
        "context33",
    ]
    assert build_list(_params("default")) == [
        "voc_aug",
        "voc_fcn",
        "bsds",
        "nyud",
        "siftflow",
        "context59",
    ]
    assert "nyud" in build_list(_params("all"))


def test_report_prints_our_normals_beside_table5(tmp_path):
    from pipeline.report.tables import build_report

    metrics = {"mean": 30.04, "median": 25.0, "rmse": 35.5, "within_11_25": 20.0,
               "within_22_5": 45.0, "within_30": 60.0, "n_pixels": 100}  # fmt: skip
    (tmp_path / "pixelnet-normals.json").write_text(json.dumps(metrics))
    experiments = {
        "pixelnet-normals": {"model": "pixelnet", "tables": {"pixelnet_table5": "pixelnet"}}
    }
    text = build_report(tmp_path, experiments, ["pixelnet-normals"], [], "test")
    assert "PixelNet Table 5" in text
    row = next(line for line in text.splitlines() if "`pixelnet-normals`" in line)
    assert row.startswith("| Ours [4] | `pixelnet-normals` | 30.0 | 25.0 | 35.5 | 20.0 | 45.0 |")
    assert row.endswith("| 19.8 | 12.0 | 28.2 | 47.9 | 70.0 | 77.8 |")
    assert "| Fouhey et al. | not declared |" in text
