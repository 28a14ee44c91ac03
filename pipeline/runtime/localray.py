"""A Ray cluster of local processes that several programs share, on 127.0.0.1 only.

``LocalCluster`` runs ``ray.cluster_utils.Cluster`` in a controller process of its own: a head
(``head_cpus``: 0 for a head that only schedules, None for every core) with its dashboard and
job server on 127.0.0.1, and 1-CPU worker nodes that can be added or killed while it runs.
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every node on the loopback address (`ray start`
would resolve 127.0.0.1 to the machine's public address, and refuses worker nodes under that
setting). Token auth stays on (Ray 2.60's default): clients run with ``RAY_AUTH_MODE=token``,
and the controller writes ``~/.ray/auth_token`` first where the machine has none.

``python -m pipeline.runtime.localray -- CMD ...`` runs CMD with ``RAY_ADDRESS`` pointing at a
fresh head: every Ray stage of ``make repro`` then connects in a fraction of a second instead of
starting its own runtime (4-7 s each). The tests use it for a real multi-node cluster.

Stopping never uses ``ray stop`` (it kills every Ray process of the machine): the controller
shuts its cluster down, then anything left that names the cluster's session is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.runtime import raylogs

# every process of the cluster and every client: one auth mode for all (a client in token mode
# rejects calls from cluster workers that are not, and the reverse)
ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # 127.0.0.1, not the machine's public address
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
    **raylogs.ENV,  # Ray Data in the cluster's workers: warnings only (a quiet `make repro`)
}


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
    """A head and ``workers`` 1-CPU nodes, driven through a controller process."""

    def __init__(self, workers: int = 2, object_store_mb: int = 120, head_cpus: int | None = 0):
        base = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        base.pop("RAY_ADDRESS", None)
        base.pop("RAY_AUTH_MODE", None)
        self.env = {**base, **ENV}  # what a client of this cluster runs with
        cmd = [
            sys.executable, "-m", "pipeline.runtime.localray", "--serve",
            f"--workers={workers}", f"--object-store-mb={object_store_mb}",
            *([] if head_cpus is None else [f"--num-cpus={head_cpus}"]),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            env={**base, **ENV},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # stopped by its own process group, never `ray stop`
        )
        ready = self._reply("READY")
        self.address, self.session = ready["address"], ready["session"]
        self.dashboard = f"http://{ready['dashboard']}"  # the head's job API (`ray job submit`)

    def _reply(self, expected: str) -> dict:
        line = self.proc.stdout.readline()
        if not line.startswith(expected):
            self.proc.kill()
            raise RuntimeError(f"local Ray cluster: expected {expected}, got {line!r}")
        return json.loads(line[len(expected) :])

    def _send(self, command: str, expected: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply(expected)

    def add_worker(self) -> str:
        """Add a 1-CPU node (as an autoscaler would); returns its node id."""
        return self._send("add", "ADDED")["node"]

    def kill_worker(self, index: int = -1) -> str:
        """A node lost: its raylet and every process on it killed at once; returns its id."""
        return self._send(f"kill {index}", "KILLED")["node"]

    def alive_nodes(self) -> list[dict]:
        return self._send("nodes", "NODES")["nodes"]

    def shutdown(self) -> None:
        try:
            self._send("quit", "DOWN")
            self.proc.wait(timeout=60)
        except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_session(self.session)


def kill_session(session: str) -> None:
    """SIGKILL what is left of one Ray session (processes naming its directory), nothing else."""
    if not session:
        return
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if session in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def serve(workers: int, object_store_mb: int, num_cpus: int | None) -> None:
    """The controller: build the cluster, then obey one command per stdin line."""
    import ray
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray.cluster_utils import Cluster

    # token mode needs ~/.ray/auth_token before the GCS starts: ray.init() writes one on a
    # machine's first run, Cluster does not, and its GCS then never comes up (a 30 s timeout on
    # a fresh machine's first `make repro`)
    ensure_token_if_auth_enabled(create_token_if_missing=True)
    store = object_store_mb * 1024 * 1024

    def node_ports() -> dict:
        # Ray's default agent port (52365) is taken by any other runtime on the machine (the
        # test suite's own): the node then has no job agent, and job submission fails
        return {"dashboard_agent_listen_port": free_ports(1)[0]}

    # the dashboard's port is Ray's choice (8265 or the next free one: its process retries when
    # a port is taken); a port picked here and handed over was sometimes taken by another
    # process before the dashboard bound it, and the head then failed to start
    head = {
        **node_ports(),
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": None,  # Cluster's default is 8265 exactly, with no retry
        "object_store_memory": store,
    }
    head["num_cpus"] = os.cpu_count() if num_cpus is None else num_cpus
    cluster = Cluster(initialize_head=True, head_node_args=head)
    nodes = [
        cluster.add_node(num_cpus=1, object_store_memory=store, **node_ports())
        for _ in range(workers)
    ]
    cluster.wait_for_nodes()
    session = cluster.head_node.get_session_dir_path()

    def say(tag: str, **payload) -> None:
        print(tag + json.dumps(payload), flush=True)

    say("READY", address=cluster.address, session=session, dashboard=cluster.head_node.webui_url)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "add":
            nodes.append(cluster.add_node(num_cpus=1, object_store_memory=store, **node_ports()))
            cluster.wait_for_nodes()
            say("ADDED", node=nodes[-1].node_id)
        elif command[0] == "kill":
            node = nodes.pop(int(command[1]))
            cluster.remove_node(node, allow_graceful=False)
            say("KILLED", node=node.node_id)
        elif command[0] == "nodes":
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
            alive = [
                {"id": n["NodeID"], "cpu": n["Resources"].get("CPU", 0.0)}
                for n in ray.nodes()
                if n["Alive"]
            ]
            ray.shutdown()
            say("NODES", nodes=alive)
    cluster.shutdown()
    say("DOWN")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.runtime.localray",
        description="Run a command with RAY_ADDRESS pointing at a fresh local Ray head on "
        "127.0.0.1 (stopped afterwards: only its own processes).",
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="head CPUs (default: all)")
    parser.add_argument("--object-store-mb", type=int, default=512)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    if args.serve:
        os.environ.update(ENV)
        serve(args.workers, args.object_store_mb, args.num_cpus)
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    start = time.perf_counter()
    cluster = LocalCluster(workers=0, object_store_mb=args.object_store_mb, head_cpus=args.num_cpus)
    try:
        print(f"ray head {cluster.address} up in {time.perf_counter() - start:.1f} s", flush=True)
        return subprocess.call(command, env={**cluster.env, "RAY_ADDRESS": cluster.address})
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
