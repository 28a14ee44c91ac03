"""Dense CRF: the bilateral term's behaviour, params validation, score transport, Ray, search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.crf.dense import refine, refine_dataset
from pipeline.crf.params import CRFParams, backend_from_params, load_best, save_best
from pipeline.crf.search import coarse_to_fine_search, evaluate, expand_grid, fine_grid, search
from pipeline.crf.synthetic import synthetic_example
from pipeline.crf.transport import decode_probs, encode_probs
from pipeline.data.datasets.base import decode_label, encode_png
from pipeline.errors import DataError, ParamsError
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores

STRIP = slice(16, 28)


def strip_case(distinct: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class 0 (red, columns 0-39) | class 1 (blue, 40-59); a strip in columns 16-27.

    The DCNN slightly prefers class 1 on the strip (0.6 vs 0.4). ``distinct=False``: the strip
    has the red of its surroundings, so it is a DCNN mistake (truth 0). ``distinct=True``: it
    is green, a real object of class 1 that a strong colour edge separates from the red.
    """
    rng = np.random.default_rng(seed)
    h, w = 40, 60
    img = np.zeros((h, w, 3), np.float32)
    img[:] = (180, 60, 60)
    img[:, 40:] = (60, 60, 180)
    if distinct:
        img[:, STRIP] = (60, 200, 60)
    image = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    probs = np.zeros((2, h, w), np.float32)
    probs[0] = 0.9
    probs[0, :, 40:] = 0.1
    probs[0, :, STRIP] = 0.4
    probs[1] = 1 - probs[0]
    label = np.zeros((h, w), np.uint8)
    label[:, 40:] = 1
    if distinct:
        label[:, STRIP] = 1
    label[:, 39] = 255  # void at the boundary, as in VOC
    return image, probs, label


def test_bilateral_flips_mislabelled_strip_in_uniform_region() -> None:
    image, probs, _ = strip_case(distinct=False)
    assert (probs.argmax(0)[:, STRIP] == 1).all()  # the DCNN is wrong on the strip
    out = refine(image, probs, CRFParams())
    assert out.dtype == np.uint8 and out.shape == (40, 60)
    assert (out[:, STRIP] == 0).all()
    assert (out[:, :40] == 0).all() and (out[:, 40:] == 1).all()
    # without the appearance kernel (w1 = 0) the smoothness kernel alone does not fix it
    assert (refine(image, probs, CRFParams(w1=0))[:, STRIP] == 1).mean() > 0.3


def test_bilateral_keeps_strip_behind_strong_colour_edge() -> None:
    image, probs, _ = strip_case(distinct=True)
    out = refine(image, probs, CRFParams())
    assert (out[:, STRIP] == 1).all()
    assert (out[:, :16] == 0).all() and (out[:, 28:40] == 0).all() and (out[:, 40:] == 1).all()
    # a colour scale wider than the edge (σβ = 200) merges the strip into its surroundings
    assert (refine(image, probs, CRFParams(sigma_beta=200))[:, STRIP] == 0).all()


def test_crf_improves_realistic_scores() -> None:
    image, probs, label = synthetic_example(120, 160, num_classes=6, seed=3)
    dcnn = segmentation_scores(confusion_matrix(label, probs.argmax(0), 6))
    crf = segmentation_scores(confusion_matrix(label, refine(image, probs), 6))
    assert dcnn["pixel_acc"] < 0.99
    assert crf["pixel_acc"] > dcnn["pixel_acc"] + 0.005
    assert crf["mean_iu"] > dcnn["mean_iu"]


def test_refine_rejects_mismatched_inputs() -> None:
    image, probs, _ = strip_case(False)
    with pytest.raises(ValueError, match="uint8 40x60x3"):
        refine(image[:30], probs)
    with pytest.raises(ValueError, match="CxHxW"):
        refine(image, probs[0])


# --- params -----------------------------------------------------------------------------------


def test_defaults_are_largefov_release() -> None:
    p = CRFParams()
    assert (p.w1, p.sigma_alpha, p.sigma_beta, p.w2, p.sigma_gamma, p.iterations) == (
        4.0, 121.0, 5.0, 3.0, 3.0, 10,
    )  # fmt: skip


def test_from_params_merges_defaults_and_ignores_stage_keys() -> None:
    p = CRFParams.from_params({"w1": 5, "sigma_beta": 3.5, "iterations": 5.0, "backend": "torch"})
    assert p == CRFParams(w1=5, sigma_beta=3.5, iterations=5)
    assert isinstance(p.iterations, int)
    assert CRFParams.from_params(None) == CRFParams()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"w1": -1}, "crf.w1"),
        ({"w2": "3"}, "crf.w2"),
        ({"sigma_alpha": 0}, "crf.sigma_alpha"),
        ({"sigma_beta": float("nan")}, "crf.sigma_beta"),
        ({"sigma_gamma": True}, "crf.sigma_gamma"),
        ({"iterations": 2.5}, "crf.iterations"),
        ({"iterations": 0}, "crf.iterations"),
        ({"sigma_alfa": 50}, "crf.sigma_alfa"),
    ],
)
def test_from_params_names_the_bad_key(section: dict, key: str) -> None:
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        CRFParams.from_params(section)


def test_from_params_prefix_and_backend() -> None:
    with pytest.raises(ParamsError, match=r"deeplab\.crf\.w1"):
        CRFParams.from_params({"w1": -2}, prefix="deeplab.crf")
    assert backend_from_params({}) == "pydensecrf"
    with pytest.raises(ParamsError, match=r"crf\.backend"):
        backend_from_params({"backend": "cuda"})


def test_best_params_file_round_trip_and_errors(tmp_path) -> None:
    path = tmp_path / "crf" / "best.json"
    save_best(path, CRFParams(w1=7, sigma_alpha=60, sigma_beta=4), mean_iu=0.71)
    assert json.loads(path.read_text())["mean_iu"] == 0.71
    assert load_best(path) == CRFParams(w1=7, sigma_alpha=60, sigma_beta=4)
    with pytest.raises(DataError, match="nothere.json"):
        load_best(tmp_path / "nothere.json")
    path.write_text('{"w1": 4}')
    with pytest.raises(DataError, match="missing CRF parameters"):
        load_best(path)
    path.write_text("{broken")
    with pytest.raises(DataError, match="best.json"):
        load_best(path)


# --- score transport ---------------------------------------------------------------------------


def test_probs_round_trip_error_is_half_a_step() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), size=(7, 9)).transpose(2, 0, 1).astype(np.float32)
    back = decode_probs(encode_probs(probs), probs.shape)
    assert back.shape == probs.shape and back.dtype == np.float32
    assert np.abs(back - probs).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(DataError, match="expected"):
        decode_probs(encode_probs(probs), (5, 9, 7))
    with pytest.raises(DataError, match="not an encode_probs PNG"):
        decode_probs(b"garbage", probs.shape)


def test_quantised_probs_are_compact_and_do_not_move_crf_labels() -> None:
    image, probs, _ = synthetic_example(375, 500, num_classes=21, seed=0)
    data = encode_probs(probs)
    # a 500x375x21 smooth score map: ~0.3 MB instead of 15.8 MB of float32
    assert len(data) < 600_000
    h, w = 188, 250  # the agreement check on a quarter-size crop keeps the test fast
    image, probs = image[:h, :w].copy(), probs[:, :h, :w].copy()
    exact = refine(image, probs)
    quantised = refine(image, decode_probs(encode_probs(probs), probs.shape))
    assert (exact == quantised).mean() >= 0.999


# --- Ray Data ---------------------------------------------------------------------------------


def test_refine_dataset_adds_crf_label(ray_local) -> None:
    rows, want = [], {}
    for i in range(4):
        image, probs, label = synthetic_example(48, 64, num_classes=4, seed=10 + i)
        probs = decode_probs(encode_probs(probs), probs.shape)  # what a worker will see
        want[f"im{i}"] = refine(image, probs)
        rows.append(
            {
                "id": f"im{i}",
                "image": encode_png(image),
                "probs": encode_probs(probs),
                "height": 48,
                "width": 64,
                "label": encode_png(label),
            }
        )
    ds = ray_local.data.from_items(rows)
    out = refine_dataset(ds, CRFParams(), rows_per_task=1, drop_probs=True).take_all()
    assert sorted(r["id"] for r in out) == sorted(want)
    for r in out:
        assert "probs" not in r and "label" in r
        got = decode_label(bytes(r["crf_label"]), r["id"])
        assert np.array_equal(got, want[r["id"]])


# --- search -----------------------------------------------------------------------------------


def _strip_examples() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    for seed, distinct in enumerate([False, True, False, True]):
        image, probs, label = strip_case(distinct, seed)
        out.append((image, decode_probs(encode_probs(probs), probs.shape), label))
    return out


def _direct_mean_iu(examples, params: CRFParams) -> float:
    hist = sum(confusion_matrix(lab, refine(img, p, params), 2) for img, p, lab in examples)
    return segmentation_scores(hist)["mean_iu"]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One SQLite store for the module: creating its schema costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow').resolve()}/mlflow.db"


def test_search_picks_the_best_grid_point_and_logs_children(ray_local, mlflow_uri) -> None:
    import mlflow

    examples = _strip_examples()
    grid = {"w1": [0.0, 5.0], "sigma_beta": [5.0, 200.0]}
    uri = mlflow_uri
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("crf-test")
    parent = client.create_run(exp, run_name="crf-stage").info.run_id

    best, trials = search(examples, grid, 2, mlflow_parent_run_id=parent, tracking_uri=uri)

    direct = {(p.w1, p.sigma_beta): _direct_mean_iu(examples, p) for p in expand_grid(grid)}
    assert len(trials) == 4
    for t in trials:
        assert t["mean_iu"] == pytest.approx(direct[(t["w1"], t["sigma_beta"])])
    assert (best.w1, best.sigma_beta) == max(direct, key=direct.get) == (5.0, 5.0)
    assert best.w2 == 3.0 and best.sigma_gamma == 3.0 and best.sigma_alpha == 121.0
    assert direct[(5.0, 5.0)] == pytest.approx(1.0)
    assert max(direct[(0.0, 5.0)], direct[(0.0, 200.0)], direct[(5.0, 200.0)]) < 0.9

    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 4
    by_params = {
        (float(r.data.params["w1"]), float(r.data.params["sigma_beta"])): r for r in children
    }
    for key, score in direct.items():
        assert by_params[key].data.metrics["mean_iu"] == pytest.approx(score)
    assert client.get_run(parent).data.metrics["best_mean_iu"] == pytest.approx(1.0)


def test_search_with_one_trial_splits_examples_and_matches_evaluate(ray_local) -> None:
    examples = _strip_examples()
    params = CRFParams(w1=0)
    best, trials = search(examples, [params], 2)  # no MLflow without a URI or parent
    assert best == params and "run_id" not in trials[0]
    assert trials[0]["mean_iu"] == pytest.approx(evaluate(examples, params, 2)["mean_iu"])
    assert trials[0]["mean_iu"] == pytest.approx(_direct_mean_iu(examples, params))


def test_search_rejects_bad_inputs(ray_local) -> None:
    with pytest.raises(ParamsError, match="crf.search.grid.sigma"):
        search(_strip_examples(), {"sigma": [1.0]}, 2)
    with pytest.raises(DataError, match="score channels"):
        search(_strip_examples(), [CRFParams()], 3)


def test_fine_grid_refines_around_best() -> None:
    g = fine_grid(CRFParams(w1=5, sigma_alpha=50, sigma_beta=3), radius=1)
    assert g == {
        "w1": [4.5, 5.0, 5.5],
        "sigma_alpha": [45.0, 50.0, 55.0],
        "sigma_beta": [2.5, 3.0, 3.5],
    }
    assert len(expand_grid(g)) == 27
    assert fine_grid(CRFParams(w1=0.5), radius=2)["w1"] == [0.0, 0.5, 1.0, 1.5]


def test_coarse_to_fine_refines_around_coarse_best_under_one_parent(
    ray_local, mlflow_uri, monkeypatch
) -> None:
    import mlflow

    uri = mlflow_uri
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "crf-c2f")
    best, trials = coarse_to_fine_search(
        _strip_examples(),
        2,
        coarse={"w1": [0.0, 5.0], "sigma_beta": [5.0, 200.0]},
        fine_steps={"w1": 0.5},
        radius=1,
        tracking_uri=uri,
    )
    rounds = [t["round"] for t in trials]
    assert rounds == ["coarse"] * 4 + ["fine"] * 2
    assert sorted(t["w1"] for t in trials[4:]) == [4.5, 5.5]  # 5.0 was already tried
    assert all(t["sigma_beta"] == 5.0 for t in trials[4:])
    assert [t["trial"] for t in trials] == list(range(6))
    assert best.sigma_beta == 5.0 and best.w1 in (4.5, 5.0, 5.5)
    assert max(t["mean_iu"] for t in trials) == pytest.approx(1.0)

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("crf-c2f")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 7
    assert parents[0].data.tags["crf.best.w1"] == str(best.w1)
    assert parents[0].info.status == "FINISHED"


# --- torch backend ----------------------------------------------------------------------------


@pytest.fixture
def one_torch_thread():
    """Single-threaded like a 1-CPU Ray task (and no OpenMP spinning on a shared machine)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_torch_backend_agrees_with_pydensecrf_on_realistic_scores(one_torch_thread) -> None:
    for seed, params in [(5, CRFParams()), (6, CRFParams(w1=8, sigma_alpha=60, sigma_beta=4))]:
        image, probs, _ = synthetic_example(150, 200, num_classes=8, seed=seed)
        ref = refine(image, probs, params)
        out = refine(image, probs, params, backend="torch")
        assert out.dtype == np.uint8 and out.shape == ref.shape
        assert (out == ref).mean() >= 0.999
        assert (out != probs.argmax(0)).any()  # the CRF did something to agree about


def test_torch_backend_reproduces_the_strip_cases(one_torch_thread) -> None:
    for distinct in (False, True):
        image, probs, _ = strip_case(distinct)
        for params in (CRFParams(), CRFParams(w1=0), CRFParams(sigma_beta=200)):
            ref = refine(image, probs, params)
            assert np.array_equal(refine(image, probs, params, backend="torch"), ref)


def test_torch_batch_keeps_images_apart(one_torch_thread) -> None:
    from pipeline.crf.lattice import refine_torch_batch

    a = synthetic_example(60, 80, num_classes=5, seed=1)
    b = synthetic_example(50, 90, num_classes=5, seed=2)
    batch = refine_torch_batch([a[0], b[0]], [a[1], b[1]])
    assert np.array_equal(batch[0], refine(a[0], a[1], backend="torch"))
    assert np.array_equal(batch[1], refine(b[0], b[1], backend="torch"))
    with pytest.raises(ValueError, match="class count"):
        refine_torch_batch([a[0], b[0]], [a[1], b[1][:4]])


def test_torch_backend_is_the_same_at_any_thread_count() -> None:
    """Bit-identical at 1 and 2 threads (a Ray task's thread count is its num_cpus): the
    lattice, the normalisation and one mean-field message, then the labels."""
    torch = pytest.importorskip("torch")
    from pipeline.crf.lattice import _LatticeFilter, _TorchLattice

    image, probs, _ = synthetic_example(150, 200, num_classes=8, seed=7)
    yy, xx = np.mgrid[:150, :200].astype(np.float32)
    feats = np.concatenate([np.stack([xx, yy], -1) / 80.0, image / 13.0], -1).reshape(-1, 5)
    x = torch.from_numpy(probs.reshape(8, -1).T.copy())
    before, runs = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            lat = _TorchLattice(torch.from_numpy(feats.astype(np.float32)))
            norm = lat.symmetric_norm()
            message = _LatticeFilter([lat], [norm], [5 * norm])(x)
            runs.append((lat.offset, norm, message, refine(image, probs, backend="torch")))
    finally:
        torch.set_num_threads(before)
    (off1, norm1, msg1, lab1), (off2, norm2, msg2, lab2) = runs
    assert torch.equal(off1, off2) and torch.equal(norm1, norm2) and torch.equal(msg1, msg2)
    assert np.array_equal(lab1, lab2)


VOC_IMAGES = ["2007_000129", "2011_000003", "2011_000006", "2011_000025"]


@pytest.mark.parametrize("image_id", VOC_IMAGES)
def test_torch_backend_agrees_on_real_voc_images(shared_data, one_torch_thread, image_id) -> None:
    """>= 99.9% label agreement on the real VOC images (DCNN-like scores from their labels)."""
    from PIL import Image

    from pipeline.crf.synthetic import synthetic_scores

    voc = shared_data / "VOC2012"
    image = np.asarray(Image.open(voc / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
    label = np.asarray(Image.open(voc / "SegmentationClassAug" / f"{image_id}.png"))
    probs = synthetic_scores(label, 21, seed=1, noise=1.0)
    ref = refine(image, probs)
    assert (ref != probs.argmax(0)).mean() > 0.01  # the CRF moved labels: there is work to agree on
    assert (refine(image, probs, backend="torch") == ref).mean() >= 0.999


def test_cpu_sparse_path_equals_the_cuda_one(one_torch_thread) -> None:
    """The SciPy splat/slice used on CPU computes what the torch CSR one (CUDA) does."""
    import torch

    from pipeline.crf.lattice import _LatticeFilter, _softmax_, _TorchLattice

    image, probs, _ = synthetic_example(30, 40, num_classes=4, seed=9)
    yy, xx = np.mgrid[0:30, 0:40].astype(np.float32)
    pos = torch.from_numpy(np.stack([xx, yy], -1).reshape(-1, 2))
    rgb = torch.from_numpy(image.reshape(-1, 3).astype(np.float32))
    lats = [_TorchLattice(pos / 3.0), _TorchLattice(torch.cat([pos / 50.0, rgb / 5.0], 1))]
    norms = [lat.symmetric_norm() for lat in lats]
    x = torch.from_numpy(probs.reshape(4, -1).T.copy())
    add = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    outs = [_LatticeFilter(lats, norms, [3 * norms[0], 4 * norms[1]], scipy=s) for s in (1, 0)]
    a, b = (f(x, add=add.clone()) for f in outs)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, add)  # the message is not empty
    with pytest.raises(ValueError, match="increasing dimension"):
        _LatticeFilter(lats[::-1], norms[::-1], norms[::-1])
    logits = torch.tensor([[0.0, -11.5, 3.0], [40.0, 39.0, 1.0]])
    assert torch.allclose(_softmax_(logits.clone()), torch.softmax(logits, 1))


def test_refine_dataset_with_torch_backend(ray_local) -> None:
    rows, want = [], {}
    for i in range(3):
        image, probs, _ = synthetic_example(40, 56, num_classes=3, seed=20 + i)
        probs = decode_probs(encode_probs(probs), probs.shape)
        want[f"t{i}"] = refine(image, probs)
        rows.append(
            {"id": f"t{i}", "image": encode_png(image), "probs": encode_probs(probs),
             "height": 40, "width": 56}
        )  # fmt: skip
    ds = ray_local.data.from_items(rows)
    out = refine_dataset(ds, backend="torch", rows_per_task=3, timing=True).take_all()
    for r in out:
        got = decode_label(bytes(r["crf_label"]), r["id"])
        assert (got == want[r["id"]]).mean() >= 0.99
        assert r["crf_seconds"] > 0
