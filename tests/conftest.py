"""Shared test fixtures: the real-data fixtures folder, one local Ray runtime per session, a real
``mlflow server``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.data.builtin.voc import BuiltinSpec, write_builtin_voc
from pipeline.data.datasets.voc import VOC
from pipeline.data.prepare import prepare_split
from pipeline.runtime.localray import free_ports

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path | None:
    """``$DENSEPIPE_FIXTURES``, else ``../shared/data`` beside the repo, else None."""
    env = os.environ.get("DENSEPIPE_FIXTURES")
    root = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data fixtures folder; skips the test with a clear reason when it is absent."""
    root = fixtures_root()
    if root is None:
        pytest.skip(
            "real-data fixtures not found: set DENSEPIPE_FIXTURES or place shared/data "
            "beside the repository"
        )
    return root


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray runtime shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never a cluster another test or process of the machine runs
            num_cpus=2,
            object_store_memory=200 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray


@pytest.fixture(scope="module")
def prepared_voc8(ray_local, tmp_path_factory):
    """8 built-in VOC training images (40 px), prepared to Parquet: the short training runs'
    data (DDP equivalence, resume after a killed worker)."""
    root = tmp_path_factory.mktemp("voc8")
    voc = write_builtin_voc(root / "raw", BuiltinSpec(num_train=8, num_val=2, size=40), False)
    prepare_split(VOC(), voc, "train", root / "train")
    return root


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 (what ``make mlflow-server`` starts), its own store."""
    store = tmp_path_factory.mktemp("mlflow")
    (port,) = free_ports(1)
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [
            str(bin_dir / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
        ],
        stdout=open(store / "server.log", "w"),
        stderr=subprocess.STDOUT,
        # no job runner: it starts 7 huey consumer processes that no test uses
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start: {(store / 'server.log').read_text()}")
            time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGKILL)  # its own group (the CLI and its uvicorn): a scratch store
    proc.wait(timeout=30)


#: the suite's long modules, longest first (seconds alone on 2 cores: e2e 420, cluster 250,
#: killed driver 80, DDP 90; all the rest together about 120). `make test` runs the suite on two
#: xdist workers, one module per worker at a time in this order: starting the long ones first
#: lets the two workers finish together instead of one waiting on the e2e DAG at the end.
LONG_MODULES = (
    "test_pipeline_e2e.py",
    "test_cluster.py",
    "test_killed_driver.py",
    "test_train_ddp.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_MODULES)))  # stable
