"""DVC stage `edges_baseline`: Canny (scikit-image) on the BSDS val split, through the same
benchmark as the learned edge models (PixelNet Table 7's Canny row).

Writes metrics/canny.json and reports/figures/canny/ (PR curve, examples).
"""

import json

from pipeline.data.prepare import read_prepared_table
from pipeline.evaluation.edges import evaluate_canny, summary
from pipeline.experiment import prepared_dir
from pipeline.params import capped, load_params, repo_root
from pipeline.runtime.console import announce_limits, run_stage
from pipeline.runtime.fsutil import write_text_atomic
from pipeline.runtime.raycluster import init_ray


def main() -> None:
    params = load_params()
    root = repo_root()
    edges = params.section("evaluate.edges")
    limits = announce_limits(params)
    table = read_prepared_table(prepared_dir("bsds", "val"))
    table = table.slice(0, capped(table.num_rows, limits.get("eval_images")))
    init_ray(params)
    result = evaluate_canny(
        table,
        n_thresholds=edges["n_thresholds"],
        max_dist=edges["max_dist"],
        sigma=edges["canny_sigma"],
        out_dir=root / "reports" / "figures" / "canny",
        name="canny",
        progress=True,
    )
    metrics = {**summary(result), "num_images": table.num_rows, "dataset": "bsds"}
    if limits:
        metrics["limits"] = limits
    write_text_atomic(root / "metrics" / "canny.json", json.dumps(metrics, indent=1) + "\n")
    print(f"canny: ODS {metrics['ods']:.4f} OIS {metrics['ois']:.4f} AP {metrics['ap']:.4f}")


if __name__ == "__main__":
    run_stage(main)
