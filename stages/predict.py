"""DVC stage `predict@<run>`: the model's softmax over the val split, for the CRF stages.

Writes data/scores/<run>/scores.parquet: id, image, label, height, width, probs (encoded).
"""

import sys

import torch

from pipeline.data.prepare import read_prepared_table
from pipeline.experiment import input_spec, model_dir, train_config
from pipeline.models import build_model
from pipeline.params import load_params, repo_root
from pipeline.predict import predict_scores

if __name__ == "__main__":
    key = sys.argv[1]
    params = load_params()
    config = train_config(params, key)
    root = repo_root()
    table = read_prepared_table(root / "data" / "prepared" / params.get("data.dataset") / "val")
    model = build_model(config.model, config.num_classes, **config.model_options)
    state = torch.load(model_dir(key) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    out = root / "data" / "scores" / key
    n = predict_scores(model, table, input_spec(params), out, precision=config.precision)
    print(f"{key}: {n} score maps -> {out}")
