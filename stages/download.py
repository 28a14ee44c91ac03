"""DVC stage `download NAME`: materialise data/raw/NAME (built-in, downloaded or a local copy).

Reads ``data.<NAME>`` (source, local_path, builtin, splits); every configured split is listed
afterwards, so a missing split file, or a held-out split listing a train id
(pipeline/data/leakage.py), fails here rather than in `prepare`. The active set's
``run.datasets`` (what dvc.yaml's download/prepare stages build) is checked first: it must hold
every dataset the set's experiments read.
"""

import argparse

from pipeline.data.sources.acquire import (
    acquire,
    build_list,
    check_splits,
    data_config,
    dataset_names,
    raw_dir,
)
from pipeline.params import load_params
from pipeline.runtime.console import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help=f"dataset: one of {', '.join(dataset_names())}")
    parser.add_argument("--params", help="params file (default: params.yaml at the repo root)")
    args = parser.parse_args()
    params = load_params(args.params)
    build_list(params)
    config = data_config(params, args.name)
    root = acquire(config, raw_dir(args.name))
    counts = check_splits(config, root)
    print(f"{args.name} ({config.source}) ready at {root}: {counts}")


if __name__ == "__main__":
    run_stage(main)
