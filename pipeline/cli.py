"""The ``densepipe`` command: the library's one-off tools (pipeline stages run through DVC).

Each subcommand imports what it uses inside its function, so ``densepipe --help`` answers at once
(no torch, Ray or MLflow import); the only module that does so (tests/test_layout.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import DensepipeError


def _describe(args: argparse.Namespace) -> None:
    import torch
    import yaml

    from pipeline.errors import ParamsError
    from pipeline.models import build_model
    from pipeline.models.geometry import describe

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"--option {item!r}: expected KEY=VALUE, e.g. modality=rgb-hha")
        options[key] = yaml.safe_load(value)
    with torch.device("meta"):  # full-width nets without allocating their weights
        model = build_model(args.model, args.num_classes, width=args.width, **options)
    print(json.dumps(describe(model), indent=1))


def _models(args: argparse.Namespace) -> None:
    from pipeline.models import list_models

    print("\n".join(list_models()))


def _download(args: argparse.Namespace) -> None:
    from pipeline.data.sources.download import fetch

    out = fetch(args.name, Path(args.root), from_dir=args.from_dir, force=args.force)
    print(out)


def _upper_bound(args: argparse.Namespace) -> None:
    from pipeline.analysis.upper_bound import upper_bound
    from pipeline.data.datasets.base import read_split_file

    ids = read_split_file(Path(args.split))
    result = upper_bound(Path(args.labels), ids, args.factors, method=args.method)
    print(json.dumps(result, indent=1, default=float))


def _sweep(args: argparse.Namespace) -> None:
    import os

    from pipeline.params import load_params
    from pipeline.sweeps.run import run_named_sweep

    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    run_named_sweep(load_params(args.params), args.name)


#: the flags that describe a --weights file (an experiment declares all of them itself)
_WEIGHTS_FLAGS = ("model", "num_classes", "width", "task", "model_options", "dataset")


def _trained(args: argparse.Namespace):
    """(params, TrainedModel) of --experiment, or of --weights and the flags describing it."""
    from pipeline.errors import ParamsError
    from pipeline.evaluation.predict import parse_model_options
    from pipeline.experiment import trained_model, weights_model
    from pipeline.params import load_params

    params = load_params(args.params)
    if args.experiment:
        given = [f"--{f.replace('_', '-')}" for f in _WEIGHTS_FLAGS if getattr(args, f) is not None]
        if given:
            raise ParamsError(
                f"{', '.join(given)}: only with --weights (experiment {args.experiment!r} "
                f"declares its model in {params.source})"
            )
        root = Path(params.source).resolve().parent if args.params else None
        return params, trained_model(params, args.experiment, root)
    if not args.model:
        raise ParamsError("--weights needs --model NAME (`densepipe models` lists the names)")
    return params, weights_model(
        params,
        args.weights,
        args.model,
        n_classes=args.num_classes,
        width=args.width,
        task=args.task or "segmentation",
        options=parse_model_options(args.model_options),
        dataset=args.dataset,
    )


def _predict(args: argparse.Namespace) -> None:
    from pipeline.evaluation.predict import crf_settings, predict_files, resolve_device
    from pipeline.params import positive_list

    params, trained = _trained(args)
    scales = positive_list("--scales", args.scales) if args.scales else None
    device = resolve_device(args.device)
    crf, backend = None, "pydensecrf"
    if args.crf:
        crf, backend, source = crf_settings(params, trained)
        print(f"CRF ({backend}): {source}: {crf}")
    written = predict_files(
        trained, args.images, args.out, device=device, scales=scales, crf=crf, crf_backend=backend
    )
    print(f"{trained.name} ({trained.task}) on {device}: {len(written)} files in {args.out}")


def _export(args: argparse.Namespace) -> None:
    from pipeline.models.export import export_model

    _, trained = _trained(args)
    diffs = export_model(
        trained.model, args.out, args.format, spec=trained.spec, metadata=trained.metadata()
    )
    print(
        f"{args.out}: {trained.name} as {args.format}, any height and width; matches PyTorch at "
        f"{', '.join(diffs)} (max |diff| {max(diffs.values()):.2g})"
    )


def _add_model_source(p: argparse.ArgumentParser) -> None:
    """--experiment, or --weights and what the file holds (predict and export)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="a trained experiment: models/NAME/model.pt")
    source.add_argument("--weights", help="a trained state-dict file (with --model)")
    p.add_argument("--model", help="--weights: the model name (see `densepipe models`)")
    p.add_argument(
        "--num-classes",
        type=int,
        help="--weights: outputs (default: edges 1, normals 3, else params.yaml model.num_classes)",
    )
    p.add_argument("--width", type=float, help="--weights: channel scale (default: read off it)")
    p.add_argument(
        "--task", choices=["segmentation", "edges", "normals"], help="--weights: its task"
    )
    p.add_argument(
        "--model-options",
        help="--weights: build_model options as YAML, e.g. '{layers: [conv1_2, conv5_3]}'",
    )
    p.add_argument("--dataset", help="--weights: a dataset name, for its class names")
    p.add_argument("--params", default=None, help="params file (default: the repo's params.yaml)")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.analysis.upper_bound import DEFAULT_METHOD, METHODS

    parser = argparse.ArgumentParser(
        prog="densepipe",
        description="densepipe: FCN, DeepLab v1 and PixelNet. The pipeline itself runs with "
        "`dvc repro` (see README.md); these are its stand-alone tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model names build_model accepts")
    p.set_defaults(func=_models)

    p = sub.add_parser(
        "describe",
        help="conv layers, parameters, receptive field and max stride of a model "
        "(computed from its module graph)",
    )
    p.add_argument("model", help="a model name (see `densepipe models`)")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--width", type=float, default=1.0, help="channel scale (1.0 = the paper's)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option as in params.yaml model_options (YAML value), repeatable: "
        "modality=rgbd, modality=rgb-hha, 'extra_heads={geo_label: 3}'",
    )
    p.set_defaults(func=_describe)

    p = sub.add_parser(
        "download",
        help="download, verify (md5/sha256) and extract a dataset from "
        "pipeline/data/sources/sources.yaml",
    )
    p.add_argument("name", help="source name, e.g. voc2012, sbd, nyudv2, siftflow, bsds500")
    p.add_argument("--root", default="data/downloads", help="where archives and extracted data go")
    p.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        default=None,
        help="take already-downloaded archives from this folder (clusters without internet)",
    )
    p.add_argument("--force", action="store_true", help="re-extract even if already done")
    p.set_defaults(func=_download)

    p = sub.add_parser(
        "upper-bound",
        help="FCN §6.3: mean IU upper bound when labels are predicted at a coarser stride",
    )
    p.add_argument("--labels", required=True, help="folder of label PNGs (class indices, 255 void)")
    p.add_argument("--split", required=True, help="file listing the ids to use")
    p.add_argument("--factors", type=int, nargs="+", default=[128, 64, 32, 16, 8, 4])
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=list(METHODS) + ["nearest"],
        help=f"how labels are downsampled (default {DEFAULT_METHOD})",
    )
    p.set_defaults(func=_upper_bound)

    p = sub.add_parser(
        "sweep",
        help="run a Ray Tune sweep of params.yaml `sweeps` outside DVC (the sweep@ stage's code): "
        "writes sweeps/NAME/ and metrics/sweep-NAME.json",
    )
    p.add_argument("name", help="a sweep declared in params.yaml `sweeps`")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run on (e.g. 127.0.0.1:6379 or auto); default: RAY_ADDRESS, "
        "params.yaml ray.address, else a local runtime",
    )
    p.add_argument("--params", default=None, help="params file (default: the repo's params.yaml)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser(
        "predict",
        help="run a trained model on image files: label PNG + overlay (segmentation), NMS'd "
        "edge map (edges) or RGB normals (normals) per image",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size and mode)")
    _add_model_source(p)
    p.add_argument(
        "--crf",
        action="store_true",
        help="refine with the dense CRF: the experiment's searched parameters, else params.yaml's",
    )
    p.add_argument(
        "--scales", type=float, nargs="+", help="test scales (default: the experiment's, else 1)"
    )
    p.add_argument("--out", default="predictions", help="output folder (default: predictions/)")
    p.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "export",
        help="write a trained model as ONNX or TorchScript taking any height and width, checked "
        "against PyTorch before it is written",
    )
    _add_model_source(p)
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="the file to write")
    p.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DensepipeError as exc:
        print(f"densepipe: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
