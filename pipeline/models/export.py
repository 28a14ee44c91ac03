"""Trained models as TorchScript or ONNX files that take any image size (``densepipe export``).

The file holds :class:`~pipeline.models.anysize.DenseGraph`: input ``image``, a normalised
N x C x H x W float32 batch (C = 3 for RGB; the metadata says how), output ``scores``,
N x K x H x W logits (before softmax or sigmoid); batch, height and width are dynamic. Both
formats are traces (TorchScript's ``torch.jit.trace``; ONNX through torch's TorchScript-based
exporter, opset 17, since the torch.export-based one needs ``onnxscript``), and a trace freezes
whatever Python decides from a size to the example's size. The models therefore keep sizes as
traced values (FCN crops, DeepLab's interpolation, PixelNet's padding and its one-pass dense
path), and every file is checked before it is written: loaded back (``torch.jit.load``;
onnxruntime on CPU) and run at sizes other than the traced one against the PyTorch model. A
file that disagrees is not written.

What a caller needs to use the file (model, task, classes, input normalisation) travels inside
it: ONNX ``metadata_props["densepipe"]``, the TorchScript archive's extra file
``densepipe.json`` (both JSON).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from pipeline.data.loader import InputSpec
from pipeline.errors import ParamsError
from pipeline.models.anysize import DenseGraph, dense_scores
from pipeline.runtime.fsutil import atomic_path

__all__ = ["FORMATS", "PROBE_SIZES", "export_model", "load_exported", "read_metadata"]

FORMATS = ("onnx", "torchscript")
#: the trace's example input (odd, and large enough that no size-dependent branch degenerates)
EXAMPLE_SIZE = (67, 91)
#: sizes the written file is checked at: other remainders modulo every stride than the example's
PROBE_SIZES: tuple[tuple[int, int], ...] = ((1, 1), (37, 53))
#: largest |exported - PyTorch| accepted, relative to the largest |score| (at least 1)
TOLERANCE = 1e-4
ONNX_OPSET = 17
METADATA_KEY = "densepipe"
TORCHSCRIPT_EXTRA = "densepipe.json"
_AXES = {0: "batch", 2: "height", 3: "width"}
#: channels of each modality's input before normalising (``pipeline.data.loader.decode_input``)
DECODED_CHANNELS = {"rgb": 3, "hha": 3, "rgbd": 4, "rgb-hha": 6}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings a user cannot act on: the tracer's notes on frozen Python checks (the
    probes verify the result) and torch's deprecation of both trace-based formats."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, FutureWarning, DeprecationWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        yield


def _write(graph: nn.Module, example: torch.Tensor, path: Path, fmt: str, meta: str) -> None:
    with _quiet():
        if fmt == "torchscript":
            traced = torch.jit.trace(graph, example, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: meta})
            return
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes={"image": _AXES, "scores": _AXES},
            opset_version=ONNX_OPSET,
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {METADATA_KEY: meta})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def load_exported(path: str | Path, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """A written file as a function of a normalised N x 3 x H x W float32 array (CPU)."""
    if fmt == "torchscript":
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu")

        def run_torchscript(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()

        return run_torchscript
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


def read_metadata(path: str | Path, fmt: str) -> dict[str, Any]:
    """The metadata :func:`export_model` stored in the file."""
    if fmt == "torchscript":
        extra = {TORCHSCRIPT_EXTRA: ""}
        with _quiet():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return json.loads(extra[TORCHSCRIPT_EXTRA])
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY])


def _probe(size: tuple[int, int], spec: InputSpec, seed: int) -> np.ndarray:
    """A random input of the model's modality (8-bit pixels, depth 0.5-5 m), normalised."""
    rng = np.random.default_rng(seed)
    decoded = rng.integers(0, 256, (1, *size, DECODED_CHANNELS[spec.modality]), dtype=np.uint8)
    if spec.modality == "rgbd":
        decoded = decoded.astype(np.float32)
        decoded[..., 3] = rng.uniform(500.0, 5000.0, size)
    return spec.normalise(decoded)


def _check(
    model: nn.Module,
    run: Callable[[np.ndarray], np.ndarray],
    sizes: Sequence[tuple[int, int]],
    spec: InputSpec,
) -> dict[str, float]:
    """Max |exported - PyTorch| per probe size; a ParamsError when the file disagrees."""
    diffs = {}
    for i, size in enumerate(sizes):
        x = _probe(tuple(size), spec, seed=i)
        with torch.no_grad():
            ref = dense_scores(model, torch.from_numpy(x)).numpy()
        where = f"{size[0]}x{size[1]}"
        try:
            got = run(x)
        except Exception as exc:  # a frozen size in the trace: the runtime's own error
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise ParamsError(
                f"the exported {getattr(model, 'name', 'model')} fails at {where} ({why[:200]}): "
                "not written"
            ) from exc
        if got.shape != ref.shape:
            raise ParamsError(
                f"the exported {getattr(model, 'name', 'model')} gives scores of shape "
                f"{got.shape} at {where}, the model {ref.shape}: not written"
            )
        diff = float(np.abs(got - ref).max()) if ref.size else 0.0
        limit = TOLERANCE * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        flips = got.argmax(1) != ref.argmax(1)
        if ref.shape[1] > 1:  # a label may only change where the best two are within rounding
            top2 = np.sort(ref, axis=1)[:, -2:]
            flips &= (top2[:, 1] - top2[:, 0]) > 2 * diff
        if diff > limit or flips.any():
            raise ParamsError(
                f"the exported {getattr(model, 'name', 'model')} does not reproduce the model at "
                f"{where} (max |diff| {diff:.3g}, {int(flips.sum())} labels differ): not written"
            )
        diffs[where] = diff
    return diffs


def export_model(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    *,
    spec: InputSpec | None = None,
    metadata: dict[str, Any] | None = None,
    probe_sizes: Sequence[tuple[int, int]] = PROBE_SIZES,
) -> dict[str, float]:
    """Write ``model`` (on the CPU, in eval mode) to ``path`` as ``fmt``, checked first at
    ``probe_sizes``; returns the max |exported - PyTorch| score difference at each of them."""
    if fmt not in FORMATS:
        raise ParamsError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    spec = spec or InputSpec()
    was_training = model.training
    model = model.cpu().eval()
    meta = {
        "model": getattr(model, "name", type(model).__name__),
        "input": {"name": "image", "layout": "NCHW float32", **_spec_dict(spec)},
        "output": {"name": "scores", "layout": "NCHW float32 logits"},
        **(metadata or {}),
    }
    example = torch.from_numpy(_probe(EXAMPLE_SIZE, spec, seed=len(probe_sizes)))
    try:
        with torch.no_grad(), atomic_path(path) as tmp:
            _write(DenseGraph(model).eval(), example, tmp, fmt, json.dumps(meta, sort_keys=True))
            diffs = _check(model, load_exported(tmp, fmt), probe_sizes, spec)
    finally:
        model.train(was_training)
    return diffs


def _spec_dict(spec: InputSpec) -> dict[str, Any]:
    """How pixels become the ``image`` input (``InputSpec.normalise``), spelled out."""
    out: dict[str, Any] = {"modality": spec.modality, "normalisation": spec.norm}
    if spec.norm == "caffe":
        out.update(colour="BGR order, 0-255, minus mean_bgr", mean_bgr=list(spec.mean_bgr))
    else:
        out.update(colour="RGB, /255, minus ImageNet mean, / ImageNet std")
    if spec.modality in ("hha", "rgb-hha"):
        out.update(hha="0-255 minus hha_mean (after the colour channels)", hha_mean=spec.hha_mean)
    if spec.modality == "rgbd":
        out.update(
            depth="log(depth in mm) - log_depth_mean, 0 where missing",
            log_depth_mean=spec.log_depth_mean,
        )
    return out
