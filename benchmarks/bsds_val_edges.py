"""Train a PixelNet edge model on BSDS500 train and score it and Canny on BSDS500 val.

One evaluation path for both (``pipeline.evaluation.edges``): dense sigmoid maps (PixelNet, then
structured-edge NMS) or soft Canny maps, then the BSDS benchmark (ODS / OIS / AP) against every
annotator of each val image.

Steps: prepare BSDS train/val from the raw BSDS500 folder into ``--work-dir`` (Ray Data,
``pipeline.data.prepare.prepare_split`` with ``get_dataset("bsds")``); train through
``pipeline.training.loop.train`` (width-scaled VGG16 hypercolumns + MLP, **from scratch**: no
ImageNet
weights are available offline); evaluate both on val; write ``results.json``, the PR curves
and qualitative grids into ``--out``.

    .venv/bin/python benchmarks/bsds_val_edges.py --iterations 200 --thresholds 9 --out /tmp/run

Data: ``--data`` or ``$DENSEPIPE_FIXTURES/BSDS500`` (default ``../shared/data/BSDS500``).
``--eval-only`` reuses a model trained by an earlier run in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _default_data() -> Path:
    root = Path(os.environ.get("DENSEPIPE_FIXTURES", REPO.parent / "shared" / "data"))
    return root / "BSDS500"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=_default_data(), help="BSDS500 root")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/bsds_val_edges"))
    ap.add_argument("--out", type=Path, default=None, help="results (default: WORK_DIR/out)")
    g = ap.add_argument_group("dataset")
    g.add_argument("--min-annotators", type=int, default=3, help="consensus edge label")
    g.add_argument(
        "--ignore-ambiguous",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pixels marked by fewer annotators become void (HED/RCF)",
    )
    g = ap.add_argument_group("model and training")
    g.add_argument("--width", type=float, default=0.125, help="VGG16 channel multiplier")
    g.add_argument(
        "--layers",
        default="conv1_2,conv2_2,conv3_3,conv4_3,conv5_3",
        help="hypercolumn taps (the paper's conv-{1_2,2_2,3_3,4_3,5_3})",
    )
    g.add_argument("--mlp", default="1024,1024", help="MLP hidden sizes at full width (x --width)")
    g.add_argument("--dropout", type=float, default=0.5)
    g.add_argument("--per-image", type=int, default=2000, help="sampled pixels per image")
    g.add_argument("--positive-share", type=float, default=0.5)
    g.add_argument("--batch-size", type=int, default=5, help="images per step (paper: 5)")
    g.add_argument("--iterations", type=int, default=200)
    g.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--train-scales", default="0.5,1.0", help="multi-scale training augment")
    g.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--train-cpus", type=int, default=2, help="CPUs of the Ray Train worker")
    g = ap.add_argument_group("evaluation")
    g.add_argument("--thresholds", type=int, default=9, help="benchmark thresholds")
    g.add_argument("--val-images", type=int, default=0, help="first N val images (0: all)")
    g.add_argument("--test-scales", default="1.0", help="multi-scale test averaging")
    g.add_argument("--eval-cpus", type=int, default=2, help="Ray CPUs for the benchmark")
    g.add_argument("--canny-sigma", type=float, default=2.0)
    g.add_argument("--no-canny", action="store_true")
    g.add_argument("--eval-only", action="store_true", help="reuse WORK_DIR/model")
    return ap.parse_args(argv)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def prepare(args) -> dict[str, Path]:
    from pipeline.data.datasets.registry import get_dataset
    from pipeline.data.prepare import prepare_split

    dataset = get_dataset(
        "bsds", min_annotators=args.min_annotators, ignore_ambiguous=args.ignore_ambiguous
    )
    out = {}
    for split in ("train", "val"):
        target = args.work_dir / "prepared" / split
        if not any(target.glob("*.parquet")):
            t0 = time.perf_counter()
            n = prepare_split(dataset, args.data, split, target)
            print(f"prepared {split}: {n} images in {time.perf_counter() - t0:.0f} s", flush=True)
        out[split] = target
    return out


def train_config(args):
    from pipeline.training.loop import TrainConfig

    return TrainConfig(
        model="pixelnet",
        num_classes=1,
        out_dir=str((args.work_dir / "model").resolve()),
        model_options={
            "width": args.width,
            "layers": args.layers.split(","),
            "mlp": [int(v) for v in args.mlp.split(",") if v.strip()],
            "dropout": args.dropout,
            "sampling": {"per_image": args.per_image, "positive_share": args.positive_share},
        },
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=0.9,
        weight_decay=5e-4 if args.optimizer == "sgd" else 0.0,
        batch_size=args.batch_size,
        iterations=args.iterations,
        task="edges",
        loss_reduction="pixel",
        precision="fp32",
        augment={
            "mirror": args.mirror,
            "scales": _floats(args.train_scales),
            "edge_labels": True,
        },
        input={"norm": "caffe"},
        seed=args.seed,
        log_every=10,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray
    import torch

    from pipeline.data.loader import InputSpec
    from pipeline.data.prepare import read_prepared, read_prepared_table
    from pipeline.evaluation.edges import evaluate_canny, evaluate_edge_model
    from pipeline.metrics.edges import EdgeResult, plot_pr_curve
    from pipeline.models import build_model

    args.work_dir.mkdir(parents=True, exist_ok=True)
    out_dir = args.out or args.work_dir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Logical CPUs: the training worker takes --train-cpus, Ray Data's readers need one more.
    ray.init(
        num_cpus=max(args.train_cpus + 1, args.eval_cpus),
        include_dashboard=False,
        configure_logging=False,
    )
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    paths = prepare(args)
    config = train_config(args)
    report["train_config"] = {
        k: v for k, v in config.__dict__.items() if k not in ("mlflow_uri", "mlflow_run_id")
    }
    if not args.eval_only:
        from pipeline.training.loop import train

        print(f"training: load average {_load()}", flush=True)
        t0 = time.perf_counter()
        history = train(
            config,
            {"train": read_prepared(paths["train"])},
            num_workers=1,
            cpus_per_worker=args.train_cpus,
            storage_path=str((args.work_dir / "ray").resolve()),
            name="bsds-pixelnet-edges",
        )
        train_seconds = time.perf_counter() - t0
        losses = [h["loss"] for h in history if "loss" in h]
        report["train"] = {
            "seconds": train_seconds,
            "steps": len(losses),
            "loss_first10": sum(losses[:10]) / max(1, len(losses[:10])),
            "loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:])),
            "load_average_after": _load(),
        }
        print(f"trained: {report['train']}", flush=True)
        from pipeline.report import plots

        plots.training_curves(history, out_dir / "train_curves.png", title="PixelNet edges")
    model = build_model(config.model, config.num_classes, **config.model_options)
    state = torch.load(Path(config.out_dir) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.tile_pixels = 65536  # bigger bands: fewer MLP passes on CPU
    torch.set_num_threads(args.eval_cpus)

    val = read_prepared_table(paths["val"])
    limit = args.val_images or None
    n_images = min(val.num_rows, limit or val.num_rows)
    spec = InputSpec(**config.input)
    results = {}
    print(f"evaluating model on {n_images} val images: load average {_load()}", flush=True)
    res = evaluate_edge_model(
        model,
        val,
        spec,
        n_thresholds=args.thresholds,
        nms=True,
        scales=_floats(args.test_scales),
        num_cpus=args.eval_cpus,
        out_dir=out_dir,
        limit=limit,
        name="pixelnet",
        progress=True,
    )
    res["load_average_after"] = _load()
    results["pixelnet"] = res
    _print(res, "pixelnet", n_images)
    if not args.no_canny:
        print(f"evaluating Canny: load average {_load()}", flush=True)
        res = evaluate_canny(
            val,
            n_thresholds=args.thresholds,
            sigma=args.canny_sigma,
            num_cpus=args.eval_cpus,
            out_dir=out_dir,
            limit=limit,
            progress=True,
        )
        res["load_average_after"] = _load()
        results["canny"] = res
        _print(res, "canny", n_images)
    plot_pr_curve(
        {k: EdgeResult.from_dict(v) for k, v in results.items()}, out_dir / "pr_curves.png"
    )
    report["evaluation"] = {
        "split": "val",
        "n_images": n_images,
        "n_thresholds": args.thresholds,
        **{
            k: {
                "ods": v["ods"],
                "ois": v["ois"],
                "ap": v["ap"],
                "predict_seconds": v["predict_seconds"],
                "eval_seconds": v["eval_seconds"],
                "settings": v["settings"],
                "load_average_after": v["load_average_after"],
            }
            for k, v in results.items()
        },
    }
    (out_dir / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out_dir / 'results.json'}")
    ray.shutdown()
    return 0


def _print(res: dict, name: str, n: int) -> None:
    ods, ois = res["ods"], res["ois"]
    print(
        f"{name}: val {n} images x {res['settings']['n_thresholds']} thresholds: "
        f"ODS {ods['f']:.3f} (P {ods['precision']:.3f} R {ods['recall']:.3f} "
        f"t {ods['threshold']:.3f}), OIS {ois['f']:.3f}, AP {res['ap']:.3f}; "
        f"maps {res['predict_seconds']:.0f} s, benchmark {res['eval_seconds']:.0f} s; "
        f"load average {res['load_average_after']}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
