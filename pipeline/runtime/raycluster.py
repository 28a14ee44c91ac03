"""Connect to Ray: a running cluster when one is named, else a small local runtime.

``RAY_ADDRESS`` (or ``ray.address`` in params.yaml) connects to a running cluster (0.1-0.6 s
instead of 4-7 s for a fresh local runtime, and how ``ray job submit`` runs stages remotely).
Without one, a fresh local runtime is started (``address="local"``): a bare ``ray.init()`` would
join whatever cluster a ``ray start`` on this machine last recorded in /tmp/ray, someone else's
included. Execution settings live in the ``ray`` section, which no stage declares as a DVC param:
changing the worker count must not invalidate results. What Ray prints is set up here, once for
every stage (``pipeline/runtime/raylogs.py``): warnings and one bar per named operation.
"""

from __future__ import annotations

import logging
import os

from pipeline.params import Params
from pipeline.runtime.raylogs import drop_benign_cluster_errors, quiet_ray


def init_ray(params: Params | None = None) -> None:
    import ray

    quiet_ray()  # before the runtime starts: its worker processes inherit the environment
    if ray.is_initialized():
        return
    section = params.get("ray", {}) if params else {}
    address = os.environ.get("RAY_ADDRESS") or section.get("address")
    if address:
        # warnings only: "Connecting to existing Ray cluster" twice per stage is noise in a
        # `make repro` of twenty stages (they all join its one head)
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
    else:
        ray.init(
            address="local",  # a fresh runtime: never another Ray instance of this machine
            num_cpus=section.get("num_cpus"),
            object_store_memory=int(section.get("object_store_mb", 512)) * 1024 * 1024,
            include_dashboard=False,
            configure_logging=False,
        )
    drop_benign_cluster_errors()
