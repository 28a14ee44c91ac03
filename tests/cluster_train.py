"""Driver for the fault-tolerance tests on a multi-node cluster (run as a subprocess with
``RAY_ADDRESS`` set: the test process itself is attached to the suite's local runtime).

Trains the tiny config of ``resume_helpers`` with 2 Ray Train workers (1 CPU each, one per
worker node); ``--kill-worker MARKER``: the first worker kills itself (SIGKILL) once a
checkpoint is registered. Usage: python tests/cluster_train.py DATA OUT STORAGE NAME [...]
"""

import argparse
import sys
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).parent))
from resume_helpers import config, killed_once  # noqa: E402

from pipeline.data.prepare import read_prepared  # noqa: E402
from pipeline.training.loop import train, train_loop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("data", "out", "storage", "name"):
        parser.add_argument(name)
    parser.add_argument("--kill-worker", default=None)
    parser.add_argument("--max-failures", type=int, default=0)
    args = parser.parse_args()
    ray.init(log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # read before the workers hold every CPU of the worker nodes (no Ray Data task waits)
    data = {"train": read_prepared(Path(args.data) / "train").materialize()}
    storage = Path(args.storage)
    loop = killed_once(storage, Path(args.kill_worker)) if args.kill_worker else train_loop
    train(
        config(Path(args.out), iterations=16),
        data,
        num_workers=2,
        cpus_per_worker=1,
        storage_path=str(storage),
        name=args.name,
        checkpoint_every=4,
        max_failures=args.max_failures,
        loop=loop,
    )
    print("trained", flush=True)


if __name__ == "__main__":
    main()
