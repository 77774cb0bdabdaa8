"""The whole pipeline through the real CLI with kfp.local, and TensorBoard watching it live."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.helpers import (
    FOUR_SCALARS,
    assert_self_contained_html,
    predict_in_fresh_process,
    scalars,
)
from tests.synthetic_mnist import copy_mirror

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 10


def cli(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "pipelines" / "mnist.py"), *args]


def small_run_args(mirror: str, md5: dict[str, str], output_dir: Path) -> list[str]:
    return [
        "--local",
        *("--output-dir", str(output_dir)),
        *("--mirror", mirror, "--expected-md5", json.dumps(md5)),
        *("--gpus", "0", "--validation", "200", "--live-update-seconds", "2"),
    ]


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def live_run(http_mirror, mnist_mirror, tmp_path_factory):
    """Runs the CLI and, while it trains, polls its TensorBoard for validation-loss points."""
    _, md5 = mnist_mirror
    output_dir = tmp_path_factory.mktemp("local")
    process = subprocess.Popen(
        # Small batches make each epoch long enough for TensorBoard to see it grow, even on a
        # fast machine.
        cli(
            *small_run_args(http_mirror, md5, output_dir),
            "--epochs",
            str(EPOCHS),
            "--batch-size",
            "16",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    url, observed = None, []
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
        if url is None:
            found = [m for line in lines if (m := re.match(r"TensorBoard: (\S+) ", line))]
            url = found[0].group(1) if found else None
            continue
        try:
            runs = _get_json(f"{url}data/runs")
            if runs:
                points = _get_json(f"{url}data/plugin/scalars/scalars?run={runs[0]}&tag=loss%2Fval")
                observed.append(len(points))
        except OSError:
            pass  # not loaded yet, or already stopped
    process.wait(timeout=60)
    reader.join(timeout=10)
    return process.returncode, "".join(lines), url, observed, output_dir


def test_tensorboard_shows_points_while_training_runs(live_run):
    returncode, output, url, observed, _ = live_run
    assert returncode == 0, output[-3000:]
    assert url is not None
    assert url.startswith("http://127.0.0.1:")
    growth = sorted(set(observed))
    # Seen at least twice with a different, growing number of epochs logged, before the end.
    assert len([n for n in growth if 0 < n < EPOCHS]) >= 2, observed
    assert observed == sorted(observed)


def test_tensorboard_is_stopped_at_the_end(live_run):
    _, _, url, _, _ = live_run
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(url, timeout=2)


def test_artifacts_and_summary(live_run):
    returncode, output, _, _, output_dir = live_run
    assert returncode == 0, output[-3000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert 0.9 < summary["test_accuracy"] <= 1
    assert summary["test_loss"] >= 0
    assert summary["epochs"] == EPOCHS
    assert summary["train_samples_per_second"] > 0
    assert summary["tensorboard_url"] is None  # the server stopped with the run
    assert f"test accuracy {summary['test_accuracy']:.4f}" in output
    # Kubeflow's confusion matrix, also in the summary: every test image counted once.
    assert summary["classification_metrics"].endswith("classification_metrics")
    matrix = summary["confusion_matrix"]
    written = json.loads(Path(summary["classification_metrics"]).read_text())
    assert [row["row"] for row in written["confusionMatrix"]["rows"]] == matrix
    assert sum(map(sum, matrix)) == 300
    assert all(type(count) is int for row in matrix for count in row), matrix  # counts, not 970.0
    assert sum(matrix[i][i] for i in range(10)) / 300 == pytest.approx(summary["test_accuracy"])

    model, logs, report = (Path(summary[k]) for k in ("model", "tensorboard_logs", "report_html"))
    (dataset,) = output_dir.glob("artifacts/*/download-mnist/dataset")
    prediction = predict_in_fresh_process(model, dataset)
    assert prediction["shape"] == [300, 10]
    assert prediction["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)

    values = scalars(logs)
    assert set(values) >= FOUR_SCALARS
    assert len(values["loss/val"]) == EPOCHS
    assert_self_contained_html(report.read_text())

    # The live copy TensorBoard read is the artifact, file for file: the run's folder holds
    # the training task's folder (its name and a digest of its inputs).
    (run_folder,) = (output_dir / "tensorboard").iterdir()
    (live,) = run_folder.iterdir()
    assert live.name.startswith("train-mnist-")

    def files(where: Path) -> dict[str, bytes]:
        return {
            p.relative_to(where).as_posix(): p.read_bytes()
            for p in where.rglob("*")
            if p.is_file() and "checkpoints" not in p.parts
        }

    assert files(live) == files(logs)
    # One run, named after the pipeline run (kfp.local: the pipeline's name and start time).
    (run,) = {p.parent.name for p in logs.rglob("*tfevents*")}
    assert run.startswith("mnist-lightning-")


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "0"], "error: invalid epochs=0: expected an integer from 1 to 2147483647"),
        (
            ["--learning-rate", "-1"],
            "error: invalid learning_rate=-1.0: expected a number from 1.2e-38 to 3.4e38",
        ),
        (["--gamma", "1.5"], "error: invalid gamma=1.5: expected a number in (0, 1]"),
    ],
)
def test_bad_values_stop_before_any_task(http_mirror, mnist_mirror, tmp_path, extra, message):
    _, md5 = mnist_mirror
    process = _run(small_run_args(http_mirror, md5, tmp_path / "out") + extra)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [process.stderr.strip()]
    assert process.stderr.strip().startswith(message)
    assert not (tmp_path / "out").exists()


def _assert_download_failed(process, output_dir: Path, reason: str) -> None:
    assert process.returncode == 1
    # The failed task's own error is the last line, on stderr; the one before names the task.
    *_, which, last = process.stderr.strip().splitlines()
    assert which.startswith("task download-mnist failed; its whole output: ")
    assert last.startswith("error: ")
    assert reason in last
    assert not (output_dir / "summary.json").exists()
    assert not list(output_dir.glob("artifacts/*/download-mnist/dataset"))


def test_unreachable_mirror_fails_cleanly(mnist_mirror, tmp_path):
    _, md5 = mnist_mirror
    process = _run(small_run_args("http://127.0.0.1:9/", md5, tmp_path))
    _assert_download_failed(process, tmp_path, "error: could not download")


def test_corrupt_file_fails_cleanly(mnist_mirror, tmp_path):
    directory, md5 = mnist_mirror

    def change_a_label(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([(data[-1] + 1) % 10]) if "t10k-labels" in name else data

    corrupt = copy_mirror(directory, tmp_path / "mirror", change_a_label)
    process = _run(small_run_args(corrupt.as_uri(), md5, tmp_path / "out"))
    _assert_download_failed(process, tmp_path / "out", "checksum mismatch")


# Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the CLI, the task
# kfp.local runs, and everything they started. `kill -INT`, an IDE's stop button or a
# supervisor's SIGTERM reach the CLI alone, which must then stop its tasks itself. The last
# member: a script's `cmd &` then `kill $!`, where without job control the CLI does not lead
# its process group but shares the script's.
STOPS = {
    "ctrl-c": (signal.SIGINT, os.killpg, 130),
    "sigint-to-the-cli": (signal.SIGINT, os.kill, 130),
    "sigterm-to-the-cli": (signal.SIGTERM, os.kill, 143),
    "sigterm-to-the-cli-in-a-script": (signal.SIGTERM, os.kill, 143),
}


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stopped_run_ends_with_one_line_and_no_task_left(
    http_mirror, mnist_mirror, tmp_path, stop
):
    signum, send, status = STOPS[stop]
    _, md5 = mnist_mirror
    # The script: the leader of a process group the CLI joins (one session holds both).
    script = subprocess.Popen(["sleep", "600"], process_group=0)
    in_script = stop.endswith("in-a-script")
    output_dir = tmp_path / "out"
    args = small_run_args(http_mirror, md5, output_dir)
    process = subprocess.Popen(
        # The script's run trains on two nodes: torchrun's processes, in sessions of their own.
        cli(*args, "--epochs", "50", *(["--nodes", "2"] if in_script else [])),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **({"process_group": script.pid} if in_script else {"start_new_session": True}),
    )
    try:
        _stop_and_check(process, args, signum, send, status)
        # No process of the run goes on as an orphan (each names the output folder).
        deadline = time.monotonic() + 30
        while left := _processes_naming(output_dir):
            assert time.monotonic() < deadline, f"{left} of the run still alive after {stop}"
            time.sleep(0.2)
    finally:
        script.kill()
        script.wait()
        for pid in _processes_naming(output_dir):
            os.kill(pid, signal.SIGKILL)


def _stop_and_check(process, args, signum, send, status) -> None:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any("TensorBoard logs:" in line for line in lines):
        assert process.poll() is None, "".join(lines)[-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    time.sleep(2)  # training is under way
    # A second run into the same folder is refused while this one holds it.
    second = subprocess.run(cli(*args), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-3000:]
    output_dir = Path(args[args.index("--output-dir") + 1])
    assert second.stderr.strip() == (
        f"error: invalid output_dir='{output_dir}': expected a folder no other --local run is using"
    )
    send(process.pid, signum)
    stderr = process.stderr.read()
    process.wait(timeout=120)
    reader.join(timeout=10)
    assert process.returncode == status, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in stderr
    assert not (output_dir / "summary.json").exists()
    # The local TensorBoard, in its own session, was stopped all the same.
    url = next(m.group(1) for line in lines if (m := re.match(r"TensorBoard: (\S+) ", line)))
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_a_killed_run_takes_its_tensorboard_with_it(http_mirror, mnist_mirror, tmp_path):
    # SIGKILL leaves the CLI no cleanup; the viewer, in a session of its own, would serve on.
    _, md5 = mnist_mirror
    output_dir = tmp_path / "out"
    process = subprocess.Popen(
        cli(*small_run_args(http_mirror, md5, output_dir), "--epochs", "50"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout.readline().startswith("TensorBoard: ")
        assert _processes_naming(output_dir / "tensorboard")  # the viewer runs
        process.kill()
        process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while viewers := _processes_naming(output_dir / "tensorboard"):
            assert time.monotonic() < deadline, f"TensorBoard {viewers} outlived the run"
            time.sleep(0.2)
    finally:
        for pid in _processes_naming(output_dir):
            os.kill(pid, signal.SIGKILL)


def test_a_stop_reaches_a_task_blocked_in_a_download(mnist_mirror, tmp_path):
    # A supervisor's SIGTERM to the CLI alone, while the download task waits on a mirror that
    # took the connection and never answers: left alone, that task would wait out its 60 s
    # request timeout and retry, an orphan (no output pipe to break: stdout goes nowhere).
    _, md5 = mnist_mirror
    with socket.create_server(("127.0.0.1", 0)) as server:
        mirror = f"http://127.0.0.1:{server.getsockname()[1]}/"
        process = subprocess.Popen(
            cli(*small_run_args(mirror, md5, tmp_path / "out")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        server.settimeout(300)
        connection, _ = server.accept()  # the download task now waits for an answer
        with connection:
            os.kill(process.pid, signal.SIGTERM)
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 143, stderr[-3000:]
            assert stderr.strip().splitlines()[-1] == "error: interrupted"
            deadline = time.monotonic() + 30
            while _group_alive(process.pid):
                assert time.monotonic() < deadline, "the download task outlived the run"
                time.sleep(0.2)


def _processes_naming(path: Path) -> set[int]:
    found = set()
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and str(path) in " ".join(
                process.cmdline()
            ):
                found.add(process.pid)
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
