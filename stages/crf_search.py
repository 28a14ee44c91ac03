"""DVC stage `crf_search@<run>`: DeepLab §5 coarse-to-fine search of the dense-CRF parameters.

Reads the first ``crf.search.num_images`` rows of data/scores/<run>/, runs every grid point as
Ray tasks, logs each trial as a child run of this stage's MLflow run, and writes the best
parameters to models/crf/<run>/best.json.
"""

import sys

import mlflow

from pipeline.crf.params import CRFParams, backend_from_params, save_best
from pipeline.crf.search import coarse_to_fine_search
from pipeline.evaluation.scores import read_scores, search_examples
from pipeline.experiment import crf_best_path
from pipeline.params import load_params, positive, repo_root
from pipeline.runtime.console import run_stage
from pipeline.runtime.raycluster import init_ray
from pipeline.runtime.tracking import flatten, stage_run, tracking_uri


def main() -> None:
    key = sys.argv[1]
    params = load_params()
    root = repo_root()
    crf = params.section("crf")
    search = params.section("crf.search")
    base = CRFParams.from_params(crf.get("base"), prefix="crf.base")
    backend = backend_from_params(crf)
    n = int(positive("crf.search.num_images", search.get("num_images"), kind=int))
    table = read_scores(root / "data" / "scores" / key, limit=n)
    init_ray(params)
    with stage_run(params, f"crf_search {key}", tags={"densepipe.kind": "crf_search"}) as run:
        mlflow.log_params(flatten(search, "crf.search."))
        mlflow.log_params({"images": table.num_rows, "backend": backend})
        best, trials = coarse_to_fine_search(
            search_examples(table),
            params.get("model.num_classes"),
            coarse=search["coarse"],
            fine_steps=search.get("fine"),
            mlflow_parent_run_id=run.info.run_id,
            tracking_uri=tracking_uri(params),
            base=base,
            backend=backend,
            radius=int(search.get("radius", 2)),
            progress=True,
        )
        score = max(t["mean_iu"] for t in trials if t["mean_iu"] == t["mean_iu"])
        save_best(
            crf_best_path(key),
            best,
            mean_iu=score,
            num_images=table.num_rows,
            num_trials=len(trials),
        )
    print(f"{key}: best of {len(trials)} trials on {table.num_rows} images: {best} ({score:.4f})")


if __name__ == "__main__":
    run_stage(main)
