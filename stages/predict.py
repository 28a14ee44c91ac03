"""DVC stage `predict@<run>`: the model's softmax over the val split, for the CRF stages.

Writes data/scores/<run>/scores.parquet: id, image, label, height, width, probs (encoded).
"""

import sys

from pipeline.evaluation.scores import predict_scores
from pipeline.experiment import input_spec, load_trained, prepared_split
from pipeline.params import load_params, repo_root
from pipeline.runtime.console import announce_limits, run_stage


def main() -> None:
    key = sys.argv[1]
    params = load_params()
    root = repo_root()
    announce_limits(params)
    model, config = load_trained(params, key)
    table = prepared_split(params, key, "val")
    out = root / "data" / "scores" / key
    n = predict_scores(model, table, input_spec(params, key), out, precision=config.precision)
    print(f"{key}: {n} score maps -> {out}")


if __name__ == "__main__":
    run_stage(main)
