"""A real multi-node Ray cluster on this machine, for the cluster tests: ``ray start --head``
with 0 CPUs and worker nodes with ``ray start --address``, each its own process group, every
port distinct, everything on 127.0.0.1, token auth on (Ray 2.60's default for clusters).

Stopping never uses ``ray stop`` (it kills every Ray process of the machine): each node's
process group gets SIGTERM then SIGKILL, and what is left is found by this cluster's own temp
dir in its command line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class LocalCluster:
    """Head (0 CPUs, dashboard + job server on 127.0.0.1) and ``workers`` 1-CPU nodes."""

    def __init__(self, workers: int = 2, object_store_mb: int = 120):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayc", dir="/tmp"))  # short: socket paths
        self.object_store = str(object_store_mb * 1024 * 1024)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        self.env.pop("RAY_ADDRESS", None)
        gcs, dash, client, agent, grpc, metrics, env_agent, nm, om = free_ports(9)
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.nodes: list[subprocess.Popen] = []
        self.killed: list[subprocess.Popen] = []
        try:
            self._start_all(workers, gcs, dash, client, agent, grpc, metrics, env_agent, nm, om)
        except BaseException:
            self.shutdown()
            raise

    def _start_all(self, workers, gcs, dash, client, agent, grpc, metrics, env_agent, nm, om):
        self._start(
            "--head",
            f"--port={gcs}",
            "--num-cpus=0",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            f"--temp-dir={self.temp_dir}",
            *self._node_ports(agent, grpc, metrics, env_agent, nm, om),
        )
        self.wait_for(alive=1)
        for _ in range(workers):
            self.add_worker()

    def _node_ports(self, agent, grpc, metrics, env_agent, nm, om) -> list[str]:
        low = free_ports(1)[0]
        return [
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={env_agent}",
            f"--node-manager-port={nm}",
            f"--object-manager-port={om}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 40}",
        ]

    def _start(self, *args: str) -> subprocess.Popen:
        log = open(self.temp_dir / f"node-{len(self.nodes)}.log", "w")
        proc = subprocess.Popen(
            [
                RAY,
                "start",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--object-store-memory={self.object_store}",
                "--disable-usage-stats",
                *args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped by pid, never `ray stop`
        )
        self.nodes.append(proc)
        return proc

    def add_worker(self) -> subprocess.Popen:
        proc = self._start(
            f"--address={self.address}", "--num-cpus=1", *self._node_ports(*free_ports(6))
        )
        self.wait_for(alive=len(self.alive_nodes()) + 1)
        return proc

    def python(self, code: str, timeout: float = 60) -> str:
        """Run ``code`` in a fresh driver connected to this cluster; its stdout."""
        result = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address={self.address!r}); {code}"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode:
            raise RuntimeError(f"driver failed: {result.stderr[-2000:]}")
        return result.stdout

    def alive_nodes(self) -> list[dict]:
        out = self.python(
            "import json; print(json.dumps([{'id': n['NodeID'], 'cpu': n['Resources']"
            ".get('CPU', 0)} for n in ray.nodes() if n['Alive']]))"
        )
        import json

        return json.loads(out.strip().splitlines()[-1])

    def wait_for(self, alive: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for proc in self.nodes:
                if proc not in self.killed and proc.poll() is not None:
                    raise RuntimeError(f"a ray node exited: {self.logs()}")
            try:
                if len(self.alive_nodes()) >= alive:
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(1)
        raise TimeoutError(f"{alive} Ray nodes not alive after {timeout} s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text()[-1500:] for p in sorted(self.temp_dir.glob("node-*.log")))

    def kill_node(self, proc: subprocess.Popen) -> None:
        """A node lost: SIGKILL its whole process group (raylet, workers, agents)."""
        self.killed.append(proc)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def shutdown(self) -> None:
        for proc in reversed(self.nodes):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        for proc in self.nodes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # workers that started their own process group: found by this cluster's temp dir
        mine = str(self.temp_dir)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if mine in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
