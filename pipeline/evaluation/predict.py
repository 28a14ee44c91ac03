"""Predictions for image files: the library side of ``densepipe predict``.

Any image a user has: each file is decoded to 8-bit RGB (grey, palette, CMYK, alpha and 16-bit
images included; a truncated or non-image file is a DataError naming it), normalised like the
model's training input, run at its own size (tiny ones too: ``pipeline.models.anysize``) and at
the model's test scales, and written to the output folder as

* segmentation: ``<name>.png``, the class indices as a 'P' PNG with the VOC palette (the pixel
  values are the indices, the colours are for viewing), and ``<name>_overlay.png``, the image
  with the labels blended in and a legend of the classes present; with a CRF (DeepLab's dense
  CRF on the softmax) the labels are the CRF's;
* edges: ``<name>_edges.png``, the edge probabilities thinned by the BSDS benchmark's NMS (8-bit);
* normals: ``<name>_normals.png``, the unit normals in the evaluation figures' RGB coding.

Every input is decoded before the first prediction, so a bad file stops the run before anything
is written; each output file is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from tqdm import tqdm

from pipeline.crf.dense import refine
from pipeline.crf.params import CRFParams, backend_from_params, load_best
from pipeline.data.builtin.voc import voc_palette
from pipeline.errors import DataError, ParamsError
from pipeline.evaluation.inference import logits_of_probs, multiscale_probs
from pipeline.evaluation.normals import normals_to_rgb
from pipeline.evaluation.trained import TrainedModel
from pipeline.metrics.nms import edge_nms
from pipeline.models.anysize import dense_scores
from pipeline.params import Params, positive_list
from pipeline.report import plots
from pipeline.runtime.fsutil import atomic_path
from pipeline.training.losses import predict_labels

__all__ = [
    "OUTPUTS",
    "crf_settings",
    "parse_model_options",
    "predict_files",
    "predict_image",
    "read_image",
    "resolve_device",
]

#: the files each task writes per image, as suffixes of the image's name (``.png`` added)
OUTPUTS: dict[str, tuple[str, ...]] = {
    "segmentation": ("", "_overlay"),
    "edges": ("_edges",),
    "normals": ("_normals",),
}
#: most classes a 'P' PNG holds (index 255 is VOC's void)
MAX_CLASSES = 255


def _activation(trained: TrainedModel):
    """The function of the scores that the test scales average (``TrainedModel.activation``)."""
    if trained.activation == "l2":
        return lambda z: F.normalize(z, dim=1, eps=1e-8)
    return torch.sigmoid if trained.activation == "sigmoid" else (lambda z: z.softmax(1))


# --- reading images ----------------------------------------------------------------------------


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB of any PIL mode: 16- and 32-bit grey scaled (PIL would clip them at 255),
    float grey read as 0..1 when it fits, CMYK/palette/alpha through PIL's conversion."""
    if im.mode.startswith("I"):
        grey = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or grey.max(initial=0) > 255:
            grey = grey / 257.0  # 0..65535 -> 0..255
        return np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "F":
        grey = np.nan_to_num(np.asarray(im, dtype=np.float64))
        grey = grey * 255.0 if grey.max(initial=0) <= 1.0 else grey
        return np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (the first frame of an animation); a missing, truncated
    or non-image file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            im.load()
            return np.ascontiguousarray(_to_rgb8(im))
    except Exception as exc:  # PIL raises many types for corrupt data
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: cannot read it as an image ({why})") from exc


# --- the model ---------------------------------------------------------------------------------


def parse_model_options(text: str | None) -> dict[str, Any]:
    """``--model-options``: a YAML/JSON mapping of build_model options, e.g. ``{mlp: [512]}``."""
    if not text:
        return {}
    try:
        options = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"--model-options is not YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(options, dict):
        raise ParamsError(f"--model-options must be a mapping like '{{mlp: [512]}}', got {text!r}")
    return options


def check_predictable(trained: TrainedModel) -> None:
    """What no image could fix: a model of depth or HHA input, or more classes than a PNG
    holds, or outputs that do not fit the task."""
    if trained.spec.modality != "rgb":
        raise ParamsError(
            f"{trained.name} takes {trained.spec.modality} input; predict reads RGB images only"
        )
    if trained.task == "segmentation" and trained.num_classes > MAX_CLASSES:
        raise ParamsError(
            f"{trained.name} has {trained.num_classes} classes; a label PNG holds {MAX_CLASSES}"
        )
    expected = {"edges": 1, "normals": 3}.get(trained.task)
    if expected is not None and trained.num_classes != expected:
        raise ParamsError(
            f"{trained.task} need a {expected}-output model; {trained.name} has "
            f"{trained.num_classes} (check --task and --num-classes)"
        )


def resolve_device(name: str | None) -> torch.device:
    """``--device``: CUDA when there is one and none is named; a named CUDA device must exist."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ParamsError(f"--device {name!r} is not a torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"--device {name}: no CUDA device is available here")
    return device


def crf_settings(params: Params, trained: TrainedModel) -> tuple[CRFParams, str, str]:
    """(CRF parameters, backend, where they come from): the experiment's searched ones
    (``models/crf/<name>/best.json``) when they exist, else params.yaml ``crf.base`` over the
    release defaults."""
    if trained.task != "segmentation" or trained.loss_kind != "softmax":
        what = trained.task if trained.task != "segmentation" else f"{trained.loss_kind} scores"
        raise ParamsError(f"--crf refines softmax segmentation; {trained.name} predicts {what}")
    section = params.get("crf", None) or {}
    backend = backend_from_params(section)
    if trained.crf_file is not None and trained.crf_file.is_file():
        return load_best(trained.crf_file), backend, f"searched parameters ({trained.crf_file})"
    base = CRFParams.from_params(section.get("base"), prefix="crf.base")
    why = f"no {trained.crf_file}" if trained.crf_file else "weights, not an experiment"
    return base, backend, f"params.yaml crf defaults ({why})"


# --- predicting --------------------------------------------------------------------------------


def thin_edges(probs: np.ndarray) -> np.ndarray:
    """The benchmark's edge NMS; a map under 2 px on a side has no gradient to thin along."""
    return edge_nms(probs) if min(probs.shape) >= 2 else probs.astype(np.float64)


def predict_image(
    trained: TrainedModel,
    image: np.ndarray,
    device: torch.device | str = "cpu",
    *,
    scales: Sequence[float] | None = None,
    crf: CRFParams | None = None,
    crf_backend: str = "pydensecrf",
) -> np.ndarray:
    """One RGB image's prediction at its size: labels (HxW uint8), NMS'd edge strengths (HxW,
    0..1) or unit normals (HxWx3). The model must be on ``device`` in eval mode."""
    scales = positive_list("--scales", list(scales or trained.scales))
    x = torch.from_numpy(trained.spec.normalise(image[None])).to(device)
    with torch.no_grad():
        run = partial(dense_scores, trained.model)
        probs = multiscale_probs(run, x, scales, _activation(trained))
    if trained.task == "edges":
        return thin_edges(probs[0, 0].clamp(0.0, 1.0).cpu().numpy())
    if trained.task == "normals":
        return F.normalize(probs, dim=1, eps=1e-8)[0].permute(1, 2, 0).cpu().numpy()
    if crf is not None:
        return refine(image, probs[0].cpu().numpy(), crf, crf_backend)
    labels = predict_labels(logits_of_probs(probs, trained.loss_kind), trained.loss_kind)
    return labels[0].cpu().numpy().astype(np.uint8)


def _save_png(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def save_label_png(label: np.ndarray, path: Path) -> Path:
    """Class indices as a 'P' PNG with the VOC palette (VOC's own label format)."""
    im = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
    im.putpalette(voc_palette())  # an 'L' image becomes 'P' with its values as indices
    return _save_png(im, path)


def write_prediction(
    trained: TrainedModel, image: np.ndarray, result: np.ndarray, out_dir: Path, stem: str
) -> list[Path]:
    """The task's files for one image (see :data:`OUTPUTS`); returns their paths."""
    out_dir = Path(out_dir)
    if trained.task == "segmentation":
        overlay = out_dir / f"{stem}_overlay.png"
        plots.overlay(image, result, overlay, trained.classes)
        return [save_label_png(result, out_dir / f"{stem}.png"), overlay]
    if trained.task == "edges":
        edges = np.round(np.clip(result, 0.0, 1.0) * 255.0).astype(np.uint8)
        return [_save_png(Image.fromarray(edges), out_dir / f"{stem}_edges.png")]
    return [_save_png(Image.fromarray(normals_to_rgb(result)), out_dir / f"{stem}_normals.png")]


def _check_outputs(task: str, paths: list[Path], out_dir: Path) -> None:
    """Two inputs with one name would overwrite each other's outputs; an output must not
    overwrite an input."""
    seen: dict[str, Path] = {}
    inputs = {p.resolve() for p in paths if p.exists()}
    for path in paths:
        if path.stem in seen and seen[path.stem] != path:
            raise DataError(
                f"{seen[path.stem]} and {path} would both write {path.stem}*.png into {out_dir}"
            )
        seen[path.stem] = path
        for suffix in OUTPUTS[task]:
            if (out_dir / f"{path.stem}{suffix}.png").resolve() in inputs:
                raise DataError(
                    f"{out_dir / f'{path.stem}{suffix}.png'} is an input; choose another --out"
                )


def predict_files(
    trained: TrainedModel,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    scales: Sequence[float] | None = None,
    crf: CRFParams | None = None,
    crf_backend: str = "pydensecrf",
    progress: bool = True,
) -> list[Path]:
    """Predict every image file into ``out_dir`` (see the module docstring); the written paths.

    Every input is read first, so a bad one stops the run before anything is written.
    """
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    if not paths:
        raise DataError("no images given")
    check_predictable(trained)
    _check_outputs(trained.task, paths, out_dir)
    for path in paths:
        read_image(path)
    trained.model.to(device).eval()
    written: list[Path] = []
    for path in tqdm(paths, desc="predict", unit="img", disable=not progress):
        image = read_image(path)
        try:
            result = predict_image(
                trained, image, device, scales=scales, crf=crf, crf_backend=crf_backend
            )
        except torch.OutOfMemoryError as exc:
            size = f"{image.shape[1]}x{image.shape[0]}"
            raise DataError(f"{path}: {size} does not fit in {device}'s memory") from exc
        written += write_prediction(trained, image, result, out_dir, path.stem)
    return written
