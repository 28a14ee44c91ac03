"""DVC stage `upper_bound`: FCN §6.3 / Appendix A, mean IU of ground truth down- and
up-sampled by each output stride, for every resampling variant (the paper does not say which).

Labels: ``upper_bound.labels`` + ``upper_bound.split`` (e.g. VOC2012 SegmentationClass and
seg11valid.txt); when they are null, the ``voc_fcn`` dataset's seg11valid labels
(``data/raw/voc_fcn``: the paper's subset of VOC2011 val under profile paper, the built-in val
labels under tiny). Writes metrics/upper_bound.json; the report prints every variant beside the
paper's row.
"""

import json

from pipeline.analysis.upper_bound import DEFAULT_METHOD, METHODS, compare_methods
from pipeline.data.datasets.base import read_split_file
from pipeline.data.datasets.sbd import SEG11VALID
from pipeline.data.sources.acquire import dataset_root
from pipeline.errors import ParamsError
from pipeline.params import load_params, repo_root
from pipeline.runtime.console import run_stage
from pipeline.runtime.fsutil import write_text_atomic


def main() -> None:
    params = load_params()
    root = repo_root()
    spec = params.section("upper_bound")
    labels, split = spec.get("labels"), spec.get("split")
    if (labels is None) != (split is None):
        raise ParamsError("upper_bound.labels and upper_bound.split are set together (or neither)")
    if labels is None:
        voc = dataset_root("voc_fcn", root / "data" / "raw" / "voc_fcn")
        labels, split = voc / "SegmentationClass", voc / SEG11VALID
        source = f"voc_fcn seg11valid labels ({params.get('data.voc_fcn.source', '?')})"
    else:
        labels, split = (root / labels).resolve(), (root / split).resolve()
        source = f"{labels} ({split.name})"
    ids = read_split_file(split)
    results = compare_methods(labels, ids, spec.get("factors"), METHODS)
    payload = {"source": source, "default_method": DEFAULT_METHOD, "methods": results}
    out = root / "metrics" / "upper_bound.json"
    write_text_atomic(out, json.dumps(payload, indent=1, default=float) + "\n")
    for method, result in results.items():
        ious = " ".join(f"{100 * s['mean_iu']:.2f}" for s in result["factors"].values())
        print(f"{method:16s} {ious}")


if __name__ == "__main__":
    run_stage(main)
