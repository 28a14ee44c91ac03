"""`densepipe predict` and `densepipe export` on real VOC JPEGs and awkward files, through the CLI.

Models are tiny-width nets with random weights (score layers too, so labels vary), saved as
state dicts in a temporary folder; every expected file is compared with the model run here
directly, and every exported file with the PyTorch model at sizes it was not traced at.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from pipeline.cli import main
from pipeline.crf.dense import refine
from pipeline.crf.params import CRFParams, save_best
from pipeline.data.builtin.voc import VOC_CLASSES, voc_palette
from pipeline.data.loader import InputSpec
from pipeline.errors import ParamsError
from pipeline.evaluation.normals import normals_to_rgb
from pipeline.experiment import crf_best_path, model_dir, train_config
from pipeline.metrics.nms import edge_nms
from pipeline.models import build_model
from pipeline.models.anysize import dense_scores
from pipeline.models.export import export_model, read_metadata
from pipeline.params import load_params, repo_root

WIDTH = 1 / 16
#: a small PixelNet (conv taps at strides 1-4 and fc7 at 32), so dense inference stays fast
PIXELNET_OPTIONS = "{layers: [conv1_2, conv3_3, fc7], mlp: [64]}"
SPEC = InputSpec()  # params.yaml's input section: caffe normalisation, VOC mean


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Zero-initialised layers (FCN score layers, DeepLab's head) drawn at random, so the scores
    differ between classes and pixels."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def tiny(name: str, classes: int, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return randomized(build_model(name, classes, width=WIDTH, **options), seed)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    options = yaml.safe_load(PIXELNET_OPTIONS)
    models = {
        "fcn8s": tiny("fcn8s", 21),
        "deeplab-largefov": tiny("deeplab-largefov", 21, seed=1),
        "pixelnet": tiny("pixelnet", 21, seed=2, **options),
        "edges": tiny("pixelnet", 1, seed=3, **options),
        "normals": tiny("pixelnet", 3, seed=4, **options),
        "rgbd": tiny("fcn32s", 21, seed=5, modality="rgbd"),
    }
    paths = {}
    for key, model in models.items():
        paths[key] = folder / f"{key}.pt"
        torch.save(model.state_dict(), paths[key])
    return paths


@pytest.fixture(scope="module")
def jpegs(shared_data) -> list[Path]:
    found = sorted((shared_data / "VOC2012" / "JPEGImages").glob("*.jpg"))
    if not found:
        pytest.skip(f"no VOC JPEGs in {shared_data / 'VOC2012' / 'JPEGImages'}")
    return found


def loaded(key: str, path: Path) -> nn.Module:
    """The saved model back (the reference every output is compared with)."""
    name, classes, options = {
        "fcn8s": ("fcn8s", 21, {}),
        "deeplab-largefov": ("deeplab-largefov", 21, {}),
        "edges": ("pixelnet", 1, yaml.safe_load(PIXELNET_OPTIONS)),
        "normals": ("pixelnet", 3, yaml.safe_load(PIXELNET_OPTIONS)),
    }[key]
    model = build_model(name, classes, width=WIDTH, **options)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def reference_scores(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        x = torch.from_numpy(SPEC.normalise(image[None]))
        return getattr(model, "predict_dense", model)(x)


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def crop(path: Path, out: Path, box=(100, 80, 160, 120)) -> Path:
    """A small piece of a real image (keeps the CRF and PixelNet quick)."""
    Image.open(path).crop(box).save(out)
    return out


def predict(capsys, *args) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args), "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


# --- segmentation -------------------------------------------------------------------------------


def test_segmentation_of_real_jpegs_writes_palette_labels_and_overlays(
    jpegs, weights, tmp_path, capsys
):
    out = tmp_path / "out"
    code, stdout, _ = predict(
        capsys, *jpegs[:2], "--weights", weights["fcn8s"], "--model", "fcn8s", "--dataset", "voc",
        "--out", out,
    )  # fmt: skip
    assert code == 0, stdout
    model = loaded("fcn8s", weights["fcn8s"])
    for i, jpeg in enumerate(jpegs[:2]):
        label_png = Image.open(out / f"{jpeg.stem}.png")
        assert label_png.mode == "P" and label_png.getpalette()[:63] == voc_palette()[:63]
        assert label_png.size == Image.open(jpeg).size
        label = np.asarray(label_png)
        assert label.max() < 21 and len(np.unique(label)) > 1
        overlay = Image.open(out / f"{jpeg.stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.width > label_png.width  # the legend beside it
        assert overlay.height >= label_png.height
        if i == 0:  # the same labels as the model run here on the decoded JPEG
            truth = reference_scores(model, rgb(jpeg)).argmax(1)[0].numpy()
            assert np.array_equal(label, truth)
            blended = np.asarray(overlay)[: label.shape[0], : label.shape[1]].astype(int)
            assert np.abs(blended - rgb(jpeg)).mean() > 5  # the colours are laid over it


def test_experiment_with_searched_or_default_crf(jpegs, tmp_path, capsys):
    """--experiment from a repo root given by --params; --crf says which parameters it used and
    its labels are the CRF's of the model's softmax."""
    raw = yaml.safe_load((repo_root() / "params.yaml").read_text())
    raw["model"]["width"] = WIDTH
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    config = train_config(params, "fcn8s", root=tmp_path)
    model = randomized(build_model(config.model, config.num_classes, **config.model_options), 5)
    model_dir("fcn8s", tmp_path).mkdir(parents=True)
    torch.save(model.state_dict(), model_dir("fcn8s", tmp_path) / "model.pt")
    searched = CRFParams(w1=5.0, sigma_alpha=30.0, sigma_beta=3.0)
    save_best(crf_best_path("fcn8s", tmp_path), searched, mean_iu=0.5)
    image_path = crop(jpegs[0], tmp_path / "piece.png")
    args = [image_path, "--experiment", "fcn8s", "--params", tmp_path / "params.yaml", "--crf"]

    code, stdout, _ = predict(capsys, *args, "--out", tmp_path / "a")
    assert code == 0 and "searched parameters" in stdout and "w1=5.0" in stdout
    probs = reference_scores(model, rgb(image_path)).softmax(1)[0].numpy()
    expected = refine(rgb(image_path), probs, searched)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "piece.png")), expected)

    crf_best_path("fcn8s", tmp_path).unlink()
    code, stdout, _ = predict(capsys, *args, "--out", tmp_path / "b")
    assert code == 0 and "params.yaml crf defaults" in stdout
    base = CRFParams.from_params(params.get("crf.base"), prefix="crf.base")
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "b" / "piece.png")), refine(rgb(image_path), probs, base)
    )


# --- edges and normals ---------------------------------------------------------------------------


def test_edges_are_the_nms_of_the_edge_probabilities(jpegs, weights, tmp_path, capsys):
    image_path = crop(jpegs[1], tmp_path / "piece.jpg", (0, 0, 160, 120))
    code, stdout, _ = predict(
        capsys, image_path, "--weights", weights["edges"], "--model", "pixelnet", "--task",
        "edges", "--model-options", PIXELNET_OPTIONS, "--out", tmp_path,
    )  # fmt: skip
    assert code == 0, stdout
    written = Image.open(tmp_path / "piece_edges.png")
    assert written.mode == "L" and written.size == (160, 120)
    image = np.asarray(Image.open(image_path).convert("RGB"))
    probs = torch.sigmoid(reference_scores(loaded("edges", weights["edges"]), image))[0, 0]
    expected = np.round(np.clip(edge_nms(probs.numpy()), 0, 1) * 255)
    assert np.abs(np.asarray(written).astype(int) - expected).max() <= 1


def test_normals_are_rendered_as_rgb(jpegs, weights, tmp_path, capsys):
    image_path = crop(jpegs[2], tmp_path / "piece.png")
    code, stdout, _ = predict(
        capsys, image_path, "--weights", weights["normals"], "--model", "pixelnet", "--task",
        "normals", "--model-options", PIXELNET_OPTIONS, "--out", tmp_path,
    )  # fmt: skip
    assert code == 0, stdout
    written = Image.open(tmp_path / "piece_normals.png")
    assert written.mode == "RGB" and written.size == (60, 40)
    scores = reference_scores(loaded("normals", weights["normals"]), rgb(image_path))
    expected = normals_to_rgb(F.normalize(scores, dim=1)[0].permute(1, 2, 0).numpy())
    assert np.abs(np.asarray(written).astype(int) - expected).max() <= 1


# --- awkward and bad input ------------------------------------------------------------------------


def png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG (grey HxW or RGB HxWx3), written by hand: PIL cannot write 48-bit RGB."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if array.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def test_any_mode_and_size_is_predicted(jpegs, weights, tmp_path, capsys):
    piece = Image.open(jpegs[3]).crop((50, 50, 110, 90))
    grey = np.asarray(piece.convert("L"))
    folder = tmp_path / "in"
    folder.mkdir()
    piece.convert("L").save(folder / "grey.png")
    piece.convert("CMYK").save(folder / "cmyk.jpg")
    piece.convert("RGBA").save(folder / "rgba.png")
    piece.convert("P").save(folder / "palette.png")
    png16(folder / "grey16.png", grey.astype(np.uint16) * 257)
    png16(folder / "rgb48.png", np.asarray(piece).astype(np.uint16) * 257)
    Image.fromarray(np.array([[[200, 30, 60]]], np.uint8)).save(folder / "one.png")
    Image.fromarray(np.zeros((3, 50, 3), np.uint8)).save(folder / "strip.png")
    assert Image.open(folder / "grey16.png").mode.startswith("I")
    images = sorted(folder.iterdir())
    deeplab = ["--weights", weights["deeplab-largefov"], "--model", "deeplab-largefov"]
    assert predict(capsys, *images, *deeplab, "--out", tmp_path / "seg")[0] == 0
    for path in images:
        label = Image.open(tmp_path / "seg" / f"{path.stem}.png")
        assert label.size == Image.open(path).size and label.mode == "P"
        assert np.asarray(label).max() < 21
    # 16 bits are scaled to 8, not clipped: the same labels as the 8-bit image
    labels = {p: np.asarray(Image.open(tmp_path / "seg" / f"{p}.png")) for p in ("grey", "grey16")}
    assert np.array_equal(labels["grey"], labels["grey16"])
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "seg" / "rgb48.png")),
        reference_scores(loaded("deeplab-largefov", weights["deeplab-largefov"]), np.asarray(piece))
        .argmax(1)[0]
        .numpy(),
    )
    # PixelNet's trunk needs 32 px: smaller images are padded, their edges not thinned
    edges = ["--weights", weights["edges"], "--model", "pixelnet", "--task", "edges"]
    small = [folder / "one.png", folder / "strip.png"]
    out = tmp_path / "edges"
    assert (
        predict(capsys, *small, *edges, "--model-options", PIXELNET_OPTIONS, "--out", out)[0] == 0
    )
    assert Image.open(out / "one_edges.png").size == (1, 1)
    assert Image.open(out / "strip_edges.png").size == (50, 3)


def _bad_files(folder: Path, jpeg: Path) -> dict[str, Path]:
    (folder / "text.jpg").write_text("not an image\n")
    data = jpeg.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return {"text": folder / "text.jpg", "truncated": folder / "truncated.jpg"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not an image", "cannot read it as an image (cannot identify image file"),
        ("truncated jpeg", "cannot read it as an image (image file is truncated"),
        ("missing file", "no such image file"),
        ("unknown experiment", "experiments: no experiment 'no-such-net'"),
        ("untrained experiment", "has no trained model at"),
        ("masked test input", "experiments.fcn32s-test-mask-fg.mask.test is 'fg'"),
        ("weights of another model", "does not hold weights of this deeplab-largefov"),
        ("other number of classes", "score_fr.weight (21, 256, 1, 1) (model (5, 256, 1, 1))"),
        ("crf on edges", "--crf refines softmax segmentation; edges predicts edges"),
        ("weights without a model", "--weights needs --model NAME"),
        ("no such device", "--device 'nowhere' is not a torch device"),
        ("depth-input model", "rgbd takes rgbd input; predict reads RGB images only"),
    ],
)
def test_bad_input_is_one_clear_line_and_nothing_is_written(
    case, expected, jpegs, weights, tmp_path, capsys
):
    bad = _bad_files(tmp_path, jpegs[0])
    fcn = ["--weights", weights["fcn8s"], "--model", "fcn8s"]
    args = {
        "not an image": [jpegs[0], bad["text"], *fcn],
        "truncated jpeg": [jpegs[0], bad["truncated"], *fcn],
        "missing file": [jpegs[0], tmp_path / "nope.png", *fcn],
        "unknown experiment": [jpegs[0], "--experiment", "no-such-net"],
        "untrained experiment": [jpegs[0], "--experiment", "fcn8s", "--params", tmp_path / "p"],
        "masked test input": [jpegs[0], "--experiment", "fcn32s-test-mask-fg"],
        "weights of another model": [
            jpegs[0], "--weights", weights["fcn8s"], "--model", "deeplab-largefov",
        ],
        "other number of classes": [jpegs[0], *fcn, "--num-classes", "5"],
        "crf on edges": [
            jpegs[0], "--weights", weights["edges"], "--model", "pixelnet", "--task", "edges",
            "--model-options", PIXELNET_OPTIONS, "--crf",
        ],
        "weights without a model": [jpegs[0], "--weights", weights["fcn8s"]],
        "no such device": [jpegs[0], *fcn, "--device", "nowhere"],
        "depth-input model": [
            jpegs[0], "--weights", weights["rgbd"], "--model", "fcn32s",
            "--model-options", "{modality: rgbd}",
        ],
    }[case]  # fmt: skip
    (tmp_path / "p").write_text((repo_root() / "params.yaml").read_text())
    out = tmp_path / "out"
    code = main(["predict", *map(str, args), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("densepipe: error:"), err
    assert not out.exists() or not any(out.iterdir())


# --- export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", ["fcn8s", "deeplab-largefov", "pixelnet"])
def test_one_exported_file_matches_pytorch_at_every_size(name, fmt, weights, tmp_path, capsys):
    out = tmp_path / f"{name}.{fmt}"
    options = ["--model-options", PIXELNET_OPTIONS] if name == "pixelnet" else []
    cli = ["export", "--weights", str(weights[name]), "--model", name, *options]
    assert main([*cli, "--format", fmt, "--out", str(out)]) == 0, capsys.readouterr().err
    assert "any height and width" in capsys.readouterr().out
    model = build_model(
        name, 21, width=WIDTH, **(yaml.safe_load(PIXELNET_OPTIONS) if options else {})
    )
    model.load_state_dict(torch.load(weights[name], weights_only=True))
    model.eval()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {"image": x})[0]
    else:
        with warnings.catch_warnings():  # loaded as a user would; not torch's deprecation note
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.load(str(out))

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return traced(torch.from_numpy(x)).numpy()

    rng = np.random.default_rng(0)
    for size in [(1, 1), (37, 53), (375, 500)]:
        x = SPEC.normalise(rng.integers(0, 256, (1, *size, 3), dtype=np.uint8))
        with torch.no_grad():
            expected = dense_scores(model, torch.from_numpy(x)).numpy()
        got = run(x)
        assert got.shape == expected.shape == (1, 21, *size)
        assert np.abs(got - expected).max() <= 1e-4, size
        assert np.array_equal(got.argmax(1), expected.argmax(1)), size
    meta = read_metadata(out, fmt)
    assert meta["model"] == name and meta["task"] == "segmentation" and meta["num_classes"] == 21
    assert meta["input"]["normalisation"] == "caffe"


class FrozenSize(nn.Module):
    """Reads its output size into Python ints: a trace freezes it to the example's size."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        return self.score(F.interpolate(F.avg_pool2d(x, 2, ceil_mode=True), size=size))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_refuses_a_graph_frozen_to_one_size(fmt, tmp_path):
    with pytest.raises(ParamsError, match="not written"):
        export_model(FrozenSize(), tmp_path / "frozen", fmt)
    assert not any(tmp_path.iterdir())


def test_class_names_come_from_the_dataset(weights):
    from pipeline.experiment import weights_model

    trained = weights_model(load_params(), weights["fcn8s"], "fcn8s", dataset="voc_aug")
    assert trained.classes == VOC_CLASSES and trained.model.width == WIDTH
