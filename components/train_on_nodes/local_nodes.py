"""The nodes of a multi-node run as local processes: one torchrun per node, all on 127.0.0.1.

What a `TrainJob` does on a cluster, on this machine: each node is a `torchrun` process with
the environment Kubeflow Trainer's torch plugin gives a node (kubeflow/trainer v2.1.0,
pkg/runtime/framework/plugins/torch/torch.go, `EnforceMLPolicy`): `PET_NNODES` (the node
count), `PET_NPROC_PER_NODE` (processes per node), `PET_NODE_RANK` (on a cluster, the pod's
Job completion index), `PET_MASTER_ADDR` (on a cluster `<job>-node-0-0.<job>`, node 0's
hostname; here 127.0.0.1) and `PET_MASTER_PORT` (29500 on a cluster, `ContainerTrainerPort`;
here a free port, so runs never collide). torchrun's static rendezvous then forms the same
world as on a cluster, with gloo between processes on the CPU. Every node's output is relayed
to this process's, line by line, prefixed with the node's rank.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from kfp_lightning.components.common.errors import RunError

LOOPBACK = "127.0.0.1"
STOP_GRACE_SECONDS = 30.0
POLL_SECONDS = 0.5


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def node_environment(
    nodes: int, processes_per_node: int, node_rank: int, port: int, threads: int
) -> dict[str, str]:
    """The variables one local node gets: the Trainer's `PET_*` set, and its share of threads.

    Args:
        nodes: Nodes in the world.
        processes_per_node: Processes torchrun starts on each node.
        node_rank: This node's rank, 0 to `nodes` - 1.
        port: The rendezvous port on 127.0.0.1.
        threads: CPU threads each process may use (`OMP_NUM_THREADS`), so the nodes share this
            machine's cores instead of each claiming all of them.

    Returns:
        The variables to add to the environment.
    """
    return {
        "PET_NNODES": str(nodes),
        "PET_NPROC_PER_NODE": str(processes_per_node),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": LOOPBACK,
        "PET_MASTER_PORT": str(port),
        "OMP_NUM_THREADS": str(threads),
    }


def _relay(stream: IO[str], prefix: str) -> None:
    for line in stream:
        print(f"{prefix}{line}", end="", flush=True)


def _stop(processes: Sequence[subprocess.Popen]) -> None:
    """Ends every node: SIGTERM to each process group (torchrun and its workers), then SIGKILL."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_local_nodes(
    nodes: int,
    processes_per_node: int,
    module: str,
    arguments: Sequence[str],
    deadline: float,
    timeout_seconds: int,
) -> None:
    """Runs the nodes as local torchrun processes until all end, one fails or time runs out.

    Args:
        nodes: Nodes in the world.
        processes_per_node: Processes on each node.
        module: The entry point, run with `torchrun --module`.
        arguments: Its arguments.
        deadline: `time.monotonic()` by which every node must have finished.
        timeout_seconds: The same deadline in seconds from the start, for the message.

    Raises:
        RunError: A node failed (the others are stopped), or the deadline passed (all are).
    """
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // (nodes * processes_per_node))
    command = [sys.executable, "-m", "torch.distributed.run", "--module", module, *arguments]
    print(
        f"starting {nodes} nodes x {processes_per_node} process(es) on {LOOPBACK}:{port} "
        f"(torchrun, {threads} CPU thread(s) each)",
        flush=True,
    )
    processes: list[subprocess.Popen] = []
    relays = []
    try:
        for rank in range(nodes):
            env = {
                **os.environ,
                **node_environment(nodes, processes_per_node, rank, port, threads),
            }
            process = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                # Its own process group: stopping a node stops torchrun's workers too.
                start_new_session=True,
            )
            processes.append(process)
            relay = threading.Thread(
                target=_relay, args=(process.stdout, f"[node {rank}] "), daemon=True
            )
            relay.start()
            relays.append(relay)
        while True:
            codes = [p.poll() for p in processes]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                raise RunError(f"node {rank} of {nodes} failed (exit status {code}); see its log")
            if all(code == 0 for code in codes):
                return
            if time.monotonic() >= deadline:
                raise RunError(
                    f"the {nodes} nodes did not finish within the training timeout "
                    f"({timeout_seconds} s): stopped them"
                )
            time.sleep(POLL_SECONDS)
    finally:
        _stop(processes)
        for relay in relays:
            relay.join(timeout=5)
