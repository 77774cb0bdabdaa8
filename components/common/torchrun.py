"""The training entry point under torchrun on this machine: the pod's GPUs, or local nodes.

One node (a training pod with several GPUs) is `torchrun --standalone --nproc-per-node N`:
torchrun's own rendezvous on a free local port (torch/distributed/run.py, `--standalone`).
Several nodes (`--local --nodes N`) are one torchrun each, with the environment Kubeflow
Trainer's torch plugin gives a node of a `TrainJob` (kubeflow/trainer v2.1.0,
pkg/runtime/framework/plugins/torch/torch.go, `EnforceMLPolicy`): `PET_NNODES`,
`PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR` (on a cluster node 0's hostname, here
127.0.0.1) and `PET_MASTER_PORT` (29500 on a cluster, here a free port, so runs never collide);
torchrun's static rendezvous then forms the same world as on a cluster. Every torchrun runs in a
session of its own, its output relayed line by line (prefixed with the node's rank when there
are several); the caller's SIGTERM or Ctrl-C, the deadline, or a failed node stops them all.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from kfp_lightning.components.common.errors import ERROR_PREFIX, RunError

LOOPBACK = "127.0.0.1"
# torchrun gives its workers this long to end after SIGTERM, then SIGKILLs them; we give torchrun
# the longer grace, so it is never killed before its workers (they run in sessions of their own,
# which a SIGKILL of torchrun's session would leave running). A rank stopped mid-step may wait in
# a collective for a peer that has already left, so a short grace loses nothing.
WORKER_GRACE_SECONDS = 10
STOP_GRACE_SECONDS = 30.0


class Cancelled(BaseException):
    """SIGTERM arrived: the run was cancelled, or the pod is being stopped."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turns SIGTERM into `Cancelled` in the main thread for the duration of the block.

    A cancelled run's pod gets SIGTERM in every process of its main container: Argo signals
    PID 1 (argoexec emissary, argoproj/argo-workflows v3.5.14, workflow/signal/signal.go,
    `SignalContainer`), which forwards it to its child's whole process group
    (cmd/argoexec/commands/emissary.go; workflow/executor/os-specific/signal_darwin.go,
    `Kill`), this Python included. KFP's launcher, our parent, has no handler and exits at
    once (kubeflow/pipelines 2.5.0, backend/src/v2/component/launcher_v2.go); emissary notices
    within a second and the container ends, so the cleanup must be one quick request.
    """

    def cancel(signum: int, _frame: object) -> None:
        # A second signal must not interrupt the cleanup the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Cancelled(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        threads: CPU threads each process may use (`OMP_NUM_THREADS`), so the processes share
            this machine's cores instead of each claiming all of them.

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


def _stop(processes: Sequence[subprocess.Popen]) -> None:
    """Ends every torchrun: SIGTERM to each one's session, then SIGKILL after a grace period.

    torchrun answers SIGTERM by sending it on to its workers, which it starts in sessions of
    their own, waiting `--shutdown-timeout` seconds and SIGKILLing the ones left
    (torch/distributed/elastic/agent/server/api.py, `run`; multiprocessing/api.py,
    `SubprocessContext._close`).
    """
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


def run_torchrun(
    nodes: int,
    processes_per_node: int,
    module: str,
    arguments: Sequence[str],
    deadline: float = math.inf,
    timeout_seconds: int = 0,
) -> None:
    """Runs `torchrun --module <module> <arguments>` as `nodes` local nodes until all end.

    Args:
        nodes: Nodes in the world: 1 for a pod's GPUs (`--standalone`), more for local nodes.
        processes_per_node: Processes torchrun starts on each node.
        module: The entry point.
        arguments: Its arguments.
        deadline: `time.monotonic()` by which every node must have finished.
        timeout_seconds: The same deadline in seconds from the start, for the message.

    Raises:
        RunError: A node failed (the others are stopped), the deadline passed, or SIGTERM or
            Ctrl-C arrived (then all are stopped).
    """
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // (nodes * processes_per_node))
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    torchrun += ["--shutdown-timeout", str(WORKER_GRACE_SECONDS)]
    if nodes == 1:
        torchrun += ["--standalone", "--nproc-per-node", str(processes_per_node)]
    print(
        f"starting {nodes} node(s) x {processes_per_node} process(es) under torchrun "
        f"({threads} CPU thread(s) each)",
        flush=True,
    )
    processes: list[subprocess.Popen] = []
    relays: list[threading.Thread] = []
    errors: dict[int, str] = {}  # by rank: the last error line of each failed node

    def relay(rank: int, process: subprocess.Popen) -> None:
        for line in process.stdout:
            print(f"[node {rank}] {line}" if nodes > 1 else line, end="", flush=True)
            # A rank ends with the one line of `errors.run_or_exit`: the cause to report.
            if line.startswith(ERROR_PREFIX):
                errors[rank] = line[len(ERROR_PREFIX) :].strip()

    try:
        with sigterm_raises():
            for rank in range(nodes):
                environment = {"OMP_NUM_THREADS": str(threads)}
                if nodes > 1:
                    environment = node_environment(nodes, processes_per_node, rank, port, threads)
                process = subprocess.Popen(
                    [*torchrun, "--module", module, *arguments],
                    env={**os.environ, **environment},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    # Its own session: a stop reaches torchrun alone, which stops its workers.
                    start_new_session=True,
                )
                processes.append(process)
                relays.append(threading.Thread(target=relay, args=(rank, process), daemon=True))
                relays[-1].start()
            while True:
                codes = [p.poll() for p in processes]
                for rank, code in enumerate(codes):
                    if code not in (None, 0):
                        who = f"node {rank} of {nodes}" if nodes > 1 else "torchrun"
                        relays[rank].join(timeout=5)  # its last lines, the error among them
                        if rank in errors:
                            raise RunError(f"{who} failed: {errors[rank]}")
                        raise RunError(f"{who} failed (exit status {code}); see its log")
                if all(code == 0 for code in codes):
                    return
                if time.monotonic() >= deadline:
                    raise RunError(
                        "training did not finish within the training timeout "
                        f"({timeout_seconds} s): stopped it"
                    )
                time.sleep(0.5)  # between two looks at the nodes: a failure stops the rest soon
    except (Cancelled, KeyboardInterrupt) as stop:
        raise RunError(f"cancelled ({stop or 'interrupted'}): stopped the training") from None
    finally:
        _stop(processes)
        for relay in relays:
            relay.join(timeout=5)
