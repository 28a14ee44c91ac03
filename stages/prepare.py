"""DVC stage `prepare NAME`: validate every example of data/raw/NAME and write Parquet shards
(Ray Data) to data/prepared/NAME/<split>, one folder per entry of ``data.<NAME>.splits``.
A held-out split sharing an id or an identical image with the train split is refused
(pipeline/data/leakage.py): by id before Ray starts, by content before anything is replaced."""

import argparse

from pipeline.data.sources.acquire import data_config, dataset_names, prepare_dataset, raw_dir
from pipeline.params import load_params, repo_root
from pipeline.runtime.console import run_stage
from pipeline.runtime.raycluster import init_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help=f"dataset: one of {', '.join(dataset_names())}")
    parser.add_argument("--params", help="params file (default: params.yaml at the repo root)")
    args = parser.parse_args()
    params = load_params(args.params)
    config = data_config(params, args.name)  # every params error before Ray starts
    init_ray(params)
    prepare_dataset(config, raw_dir(args.name), repo_root() / "data" / "prepared" / args.name)


if __name__ == "__main__":
    run_stage(main)
