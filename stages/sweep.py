"""DVC stage `sweep@<name>`: run one Ray Tune sweep of params.yaml `sweeps` (active: run.sweeps).

Every trial trains the base experiment through train@'s code path with the trial's values.
Outputs: sweeps/<name>/ (trials.csv, best.yaml, curves.png, values.png, history.json) and
metrics/sweep-<name>.json. Usage: python stages/sweep.py NAME
"""

import argparse

from pipeline.params import load_params
from pipeline.runtime.console import run_stage
from pipeline.sweeps.run import run_named_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep", help="a sweep declared in params.yaml `sweeps`")
    run_named_sweep(load_params(), parser.parse_args().sweep)


if __name__ == "__main__":
    run_stage(main)
