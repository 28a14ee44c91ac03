"""The local Ray head of `make repro` on a machine where Ray has never run."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

from pipeline.runtime.localray import LocalCluster

CLIENT = "import ray; ray.init(); print('sum', ray.get(ray.remote(lambda: 41 + 1).remote()))"
RAY_DASHBOARD_PORT = 8265  # Ray's default


def hold_port(port: int) -> socket.socket | None:
    """Listen on 127.0.0.1:port (None when something else already does: the same situation)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
    except OSError:
        sock.close()
        return None
    return sock


def test_a_fresh_machine_without_a_ray_token_gets_one_and_the_head_comes_up(tmp_path, monkeypatch):
    # a fresh machine: no ~/.ray/auth_token (Ray's Cluster does not write one, and in token mode
    # its GCS then never starts: a 30 s timeout, the first `make repro` of a new user failed)
    monkeypatch.setenv("HOME", str(tmp_path))
    # and Ray's dashboard port taken (another Ray, anything): the dashboard moves to a free one
    # (a port picked before the head started was once taken in between, and the head failed)
    held = hold_port(RAY_DASHBOARD_PORT)
    try:
        head = LocalCluster(workers=0, object_store_mb=80, head_cpus=1)
    finally:
        if held is not None:
            held.close()
    try:
        assert (tmp_path / ".ray" / "auth_token").stat().st_size > 0
        env = {**head.env, "RAY_ADDRESS": head.address}
        done = subprocess.run(
            [sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "sum 42" in done.stdout
        assert head.dashboard.startswith("http://127.0.0.1:")
        assert not head.dashboard.endswith(f":{RAY_DASHBOARD_PORT}")
        try:  # the dashboard (job API) answers; 401: it wants the token, as clients send it
            status = urllib.request.urlopen(f"{head.dashboard}/api/version", timeout=30).status
        except urllib.error.HTTPError as err:
            status = err.code
        assert status in (200, 401)
    finally:
        head.shutdown()
