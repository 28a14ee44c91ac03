"""The local Ray head of `make repro` on a machine where Ray has never run."""

from __future__ import annotations

import subprocess
import sys

from pipeline.runtime.localray import LocalCluster

CLIENT = "import ray; ray.init(); print('sum', ray.get(ray.remote(lambda: 41 + 1).remote()))"


def test_a_fresh_machine_without_a_ray_token_gets_one_and_the_head_comes_up(tmp_path, monkeypatch):
    # a fresh machine: no ~/.ray/auth_token (Ray's Cluster does not write one, and in token mode
    # its GCS then never starts: a 30 s timeout, the first `make repro` of a new user failed)
    monkeypatch.setenv("HOME", str(tmp_path))
    head = LocalCluster(workers=0, object_store_mb=80, head_cpus=1)
    try:
        assert (tmp_path / ".ray" / "auth_token").stat().st_size > 0
        env = {**head.env, "RAY_ADDRESS": head.address}
        done = subprocess.run(
            [sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "sum 42" in done.stdout
    finally:
        head.shutdown()
