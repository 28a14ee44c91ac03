"""DCNN scores for the CRF stages: softmax of a model over a split, written as Parquet.

One row per image: ``id``, ``image`` and ``label`` (the prepared encoded bytes, unchanged),
``height``, ``width`` and ``probs`` (``crf.encode_probs`` of the softmax: 8-bit PNG, C*H x W).
The file name is fixed (``scores.parquet``) and the folder is written atomically, so a rerun
gives the same outputs and a failure leaves nothing half-written (it is a DVC output).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.crf.transport import encode_probs
from pipeline.data.loader import InputSpec
from pipeline.errors import DataError
from pipeline.evaluation.inference import predict
from pipeline.runtime.fsutil import atomic_path
from pipeline.runtime.progress import progress_bar

SCORES_FILE = "scores.parquet"


def predict_scores(
    model: torch.nn.Module,
    table: pa.Table,
    spec: InputSpec,
    out_dir: str | Path,
    *,
    precision: str = "fp32",
    progress: bool = True,
) -> int:
    """Write ``out_dir/scores.parquet`` (see module docstring); returns the number of rows."""
    ids = table.column("id").to_pylist()
    images = table.column("image").to_pylist()
    labels = table.column("label").to_pylist()
    rows: dict[str, list] = {k: [] for k in ("id", "image", "label", "height", "width", "probs")}
    preds = predict(model, table, spec, precision=precision)
    for i, p in enumerate(
        progress_bar(preds, total=table.num_rows, desc="predict", disable=not progress)
    ):
        if p.id != str(ids[i]):
            raise DataError(f"prediction {i} is for {p.id}, expected {ids[i]}")
        probs = torch.softmax(p.scores, dim=0).numpy().astype(np.float32)
        h, w = p.label.shape
        rows["id"].append(str(ids[i]))
        rows["image"].append(bytes(images[i]))
        rows["label"].append(bytes(labels[i]))
        rows["height"].append(h)
        rows["width"].append(w)
        rows["probs"].append(encode_probs(probs))
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.binary()),
            ("label", pa.binary()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("probs", pa.binary()),
        ]
    )
    out = pa.table(rows, schema=schema)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        pq.write_table(out, tmp / SCORES_FILE)
    return out.num_rows


def read_scores(scores_dir: str | Path, limit: int | None = None) -> pa.Table:
    """The predict stage's table (first ``limit`` rows when given)."""
    path = Path(scores_dir) / SCORES_FILE
    if not path.is_file():
        raise DataError(f"no scores at {path} (run the predict stage)")
    table = pq.read_table(path)
    return table.slice(0, limit) if limit is not None else table


def search_examples(table: pa.Table) -> list[dict]:
    """Rows as dicts of id / image / probs / label bytes (``crf.search``'s input)."""
    cols = {c: table.column(c).to_pylist() for c in ("id", "image", "probs", "label")}
    return [{c: cols[c][i] for c in cols} for i in range(table.num_rows)]
