"""Benchmark: time to the first curve point and whole-run time, this pipeline against the seed.

    python benchmarks/whole_run.py --mirror /path/to/mirror [--epochs 1 --repeat 1]

The mirror folder (`python ../shared/tools/mnist_mirror.py DIR` writes DIR/mirror) is served
over HTTP on 127.0.0.1, so both download MNIST as they would from a real mirror.
Runs, back to back in this invocation and in alternating order when repeated:
  seed  `benchmarks/seed_mnist.py` (PyTorch's example ported to Lightning the usual way), with
        `tensorboard --logdir lightning_logs` started just before it, as its user would;
  ours  `python pipelines/mnist.py --local`, which starts its own TensorBoard.
For each it measures, from the moment the command starts: the first training-loss point
served by TensorBoard's HTTP API (the number a user waiting for the first curve feels), and
the whole run until the command exits, and the time outside the training loop (the whole run
minus the loop's seconds: ours from the training task's `timing:` line, the seed's from the
clock `seed_mnist.py` prints, both from each epoch's first batch to its validation). For ours it
also prints where the time went:
each kfp.local task, split into its start-up, its component function and its exit (from
kfp.local's and the KFP executor's timestamps), inside training the start-up, training,
validation, final evaluation and export (from the task's `timing:` line), and the time before
the first task and after the last; medians over the runs. `--json FILE` keeps every run's
measurements. Ratios are ours /
seed, measured in the same invocation, so the machine's noise affects both alike. Nothing
here is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import http.server
import json
import math
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.2
OUTSIDE = "outside the training loop (whole run - training)"
_TASK_LINE = re.compile(
    r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task '([\w-]+)'"
    r"|Task '([\w-]+)' finished with status)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _points(url: str, tag: str) -> int:
    """Points of `tag` in any run TensorBoard at `url` serves (0 while it is not up)."""
    try:
        with urllib.request.urlopen(f"{url}data/runs", timeout=2) as response:
            runs = json.loads(response.read())
        for run in runs:
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            with urllib.request.urlopen(
                f"{url}data/plugin/scalars/scalars?{query}", timeout=2
            ) as response:
                points = json.loads(response.read())
            if points:
                return len(points)
    except (OSError, ValueError):
        pass
    return 0


def _plain(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()


def measure(command: list[str], tag: str, url: str | None, cwd: Path) -> dict[str, Any]:
    """Runs `command`, polling TensorBoard for `tag`'s first point; returns the timings.

    Args:
        command: The run to measure.
        tag: The training-loss tag it logs.
        url: TensorBoard's URL; None to read it from the command's output.
        cwd: Working directory.

    Returns:
        first_point_seconds, total_seconds, the output lines and their arrival times.
    """
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in process.stdout:
            lines.append((time.monotonic() - started, _plain(line)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first_point = None
    while process.poll() is None:
        if url is None:
            found = [m for _, text in lines if (m := re.match(r"TensorBoard: (\S+) ", text))]
            url = found[0].group(1) if found else None
        if first_point is None and url is not None and _points(url, tag):
            first_point = time.monotonic() - started
        time.sleep(POLL_SECONDS)
    total = time.monotonic() - started
    reader.join(timeout=10)
    if process.returncode != 0:
        tail = "\n".join(text for _, text in lines[-30:])
        raise SystemExit(f"{command[1]} failed (exit {process.returncode}):\n{tail}")
    return {"first_point_seconds": first_point, "total_seconds": total, "lines": lines}


def run_seed(mirror: str, epochs: int, work: Path) -> dict[str, Any]:
    port = _free_port()
    (work / "lightning_logs").mkdir(parents=True)
    viewer = subprocess.Popen(
        [
            *(sys.executable, "-m", "tensorboard.main", "--logdir", str(work / "lightning_logs")),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        command = [
            sys.executable,
            str(REPO / "benchmarks" / "seed_mnist.py"),
            *("--mirror", mirror, "--root", str(work), "--epochs", str(epochs)),
        ]
        result = measure(command, "train_loss", f"http://127.0.0.1:{port}/", work)
        found = [m for _, text in result["lines"] if (m := _SEED_TRAINING.search(text))]
        if found:
            result["outside_seconds"] = result["total_seconds"] - float(found[-1].group(1))
        return result
    finally:
        viewer.terminate()
        viewer.wait()


def run_ours(mirror: str, epochs: int, work: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        str(REPO / "pipelines" / "mnist.py"),
        "--local",
        *("--mirror", mirror, "--epochs", str(epochs), "--gpus", "0"),
        *("--output-dir", str(work / "out")),
        "--verbose",  # kfp.local's task records, which the breakdown reads
    ]
    result = measure(command, "loss/train", None, work)
    result["breakdown"] = breakdown(result["lines"], result["total_seconds"])
    result["outside_seconds"] = result["breakdown"].get(OUTSIDE)
    return result


_SEED_TRAINING = re.compile(r"seed training seconds: ([\d.]+)")
_EXECUTOR_LINE = re.compile(
    r"^\[KFP Executor \d{4}-\d\d-\d\d (\d\d:\d\d:\d\d),(\d{3}) INFO\]: "
    r"(Looking for component|Wrote executor output file)"
)


def _clock(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%H:%M:%S.%f")


def _between(start: datetime.datetime, end: datetime.datetime) -> float:
    """Seconds from `start` to `end`, two times of day: a run that passes midnight wraps."""
    return (end - start).total_seconds() % 86400


def breakdown(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Where our run's time went, in seconds.

    From kfp.local's records (`HH:MM:SS.mmm - INFO - Executing task ...`), the KFP executor's
    (`[KFP Executor ... INFO]: Looking for component` once it has started, `Wrote executor
    output file` when the component's function has returned) and the training task's
    `timing:` line. Each task splits into its start-up (the process, Python, importing kfp),
    its work, and its exit (the process ending, kfp.local reading its outputs).
    """
    parts: dict[str, float] = {}
    started: dict[str, datetime.datetime] = {}
    marks: dict[str, datetime.datetime] = {}
    first: tuple[float, datetime.datetime] | None = None
    last_end = None
    task = ""
    for at, text in lines:
        text = text.strip()
        match = _TASK_LINE.match(text)
        if match:
            stamp = _clock(match.group(1))
            if match.group(2):
                task = match.group(2)
                started[task] = stamp
                first = first or (at, stamp)
            else:
                name = match.group(3)
                parts[f"task {name}"] = _between(started[name], stamp)
                if "looking" in marks and "wrote" in marks:
                    parts[f"  {name}: start-up (process, Python, kfp)"] = _between(
                        started[name], marks["looking"]
                    )
                    parts[f"  {name}: component function"] = _between(
                        marks["looking"], marks["wrote"]
                    )
                    parts[f"  {name}: exit (process end, outputs read)"] = _between(
                        marks["wrote"], stamp
                    )
                marks = {}
                last_end = stamp
            continue
        executor = _EXECUTOR_LINE.match(text)
        if executor:
            stamp = _clock(f"{executor.group(1)}.{executor.group(2)}")
            marks["looking" if executor.group(3).startswith("Looking") else "wrote"] = stamp
        elif text.startswith("timing: "):
            for item in text.removeprefix("timing: ").split(", "):
                name, seconds, _ = item.rsplit(" ", 2)
                parts[f"  training task: {name}"] = float(seconds)
    if first is not None:
        parts["before the first task (CLI, kfp.local, TensorBoard)"] = first[0]
        if last_end is not None:
            ended_at = first[0] + _between(first[1], last_end)
            parts["after the last task (summary, TensorBoard stopped)"] = total - ended_at
    training = parts.get("  training task: training")
    if training is not None:
        parts["outside the training loop (whole run - training)"] = total - training
    return parts


def run_pairs(args: argparse.Namespace, mirror: str) -> dict[str, list[dict[str, Any]]]:
    """Runs `args.repeat` pairs, alternating which goes first."""
    results: dict[str, list[dict[str, Any]]] = {"seed": [], "ours": []}
    for i in range(args.repeat):
        order = ("seed", "ours") if i % 2 == 0 else ("ours", "seed")
        for name in order:
            with tempfile.TemporaryDirectory(prefix=f"whole-run-{name}-") as tmp:
                run = run_seed if name == "seed" else run_ours
                result = run(mirror, args.epochs, Path(tmp))
                results[name].append(result)
                print(
                    f"{name}: first point {result['first_point_seconds']:.1f} s, "
                    f"whole run {result['total_seconds']:.1f} s",
                    flush=True,
                )
    return results


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    """Serves `directory` over HTTP on 127.0.0.1 for the block; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client closing early (torchvision does) is no benchmark's concern

    handler = functools.partial(Quiet, directory=str(directory))
    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", required=True, type=Path, help="folder of the *-ubyte.gz")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs, order alternating")
    parser.add_argument("--json", type=Path, help="also write every run's measurements here")
    args = parser.parse_args()
    with served(args.mirror) as mirror:
        results = run_pairs(args, mirror)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"\n{args.epochs} epoch(s), real MNIST, {args.repeat} pair(s) of runs, medians:")
    print(f"{'':22}{'seed':>10}{'ours':>10}{'ours/seed':>11}")
    for key, label in (
        ("first_point_seconds", "first point (s)"),
        ("total_seconds", "whole run (s)"),
    ):
        seed, ours = median("seed", key), median("ours", key)
        print(f"{label:22}{seed:10.1f}{ours:10.1f}{ours / seed:11.2f}")
    outside = {name: [r.get("outside_seconds") for r in runs] for name, runs in results.items()}
    if all(v is not None for runs in outside.values() for v in runs):
        seed, ours = (statistics.median(outside[name]) for name in ("seed", "ours"))
        print(f"{'outside the loop (s)':22}{seed:10.1f}{ours:10.1f}{ours / seed:11.2f}")
    print("\npairs (seconds): seed first point, seed whole, ours first point, ours whole, ratios")
    for seed, ours in zip(results["seed"], results["ours"], strict=True):
        first = (seed["first_point_seconds"] or math.nan, ours["first_point_seconds"] or math.nan)
        print(
            f"  {first[0]:6.1f} {seed['total_seconds']:6.1f} {first[1]:6.1f} "
            f"{ours['total_seconds']:6.1f}   first {first[1] / first[0]:.2f}, "
            f"whole {ours['total_seconds'] / seed['total_seconds']:.2f}"
        )
    print(f"\nours, where the time went (median of {len(results['ours'])} run(s), seconds):")
    keys = list(results["ours"][-1]["breakdown"])
    for name in keys:
        values = [r["breakdown"][name] for r in results["ours"] if name in r["breakdown"]]
        print(f"  {name:62}{statistics.median(values):8.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    name: [{k: v for k, v in r.items() if k != "lines"} for r in runs]
                    for name, runs in results.items()
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
