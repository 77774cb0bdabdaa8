"""What a `--local` run shows and leaves: the tasks' own lines, the cause last, shareable files.

Run through the real CLI, as a user runs it, on the small MNIST-format set served on
127.0.0.1. A successful one-epoch run prints the progress, the result and where things are;
a failed one ends, on stderr, with the failed task's own one-line error; everything kfp.local
printed is in `<output_dir>/local-run.log`; everything under the output folder honours the
umask, kfp.local's cache included; and a new run never loses the previous run's summary.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

MAX_LINES = 40


def run_cli(
    *args: str, umask: int | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "mnist.py"), "--local", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=set_umask,
    )


def small(http_mirror: str, md5: dict[str, str], output_dir: Path, *extra: str) -> list[str]:
    return [
        *("--output-dir", str(output_dir), "--mirror", http_mirror),
        *("--expected-md5", json.dumps(md5), "--gpus", "0", "--validation", "200"),
        *("--epochs", "1", *extra),
    ]


@pytest.fixture(scope="module")
def one_epoch(
    http_mirror, mnist_mirror, tmp_path_factory
) -> tuple[subprocess.CompletedProcess, Path]:
    _, md5 = mnist_mirror
    output_dir = tmp_path_factory.mktemp("console") / "out"
    return run_cli(*small(http_mirror, md5, output_dir), umask=0o002), output_dir


def test_a_successful_run_shows_the_tasks_own_lines(one_epoch, http_mirror) -> None:
    done, output_dir = one_epoch
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) <= MAX_LINES, done.stdout
    assert done.stderr == ""
    for noise in (
        "[KFP Executor",
        " - INFO - ",
        "executor_input",
        "Streamed logs",
        "GPU available",
    ):
        assert noise not in done.stdout, noise
    assert lines[0].startswith("TensorBoard: http://127.0.0.1:")
    (fetched,) = [line for line in lines if line.startswith("[download-mnist] ")]
    assert re.fullmatch(
        rf"\[download-mnist\] dataset: \d+ training and \d+ test images from "
        rf"{re.escape(http_mirror)}, checksums verified",
        fetched,
    ), fetched
    assert any(line.startswith("[train-mnist] epoch 1/1 ") for line in lines), done.stdout
    assert any(line.startswith("[train-mnist] timing: ") for line in lines)
    # The result, and where things are: a report that opens as a page.
    assert lines[-4].startswith("test accuracy ")
    assert lines[-2] == f"report:  {output_dir / 'report.html'}"
    assert (output_dir / "report.html").read_text().startswith("<!DOCTYPE html>")
    # Everything kfp.local and the tasks printed is in the log.
    log = (output_dir / "local-run.log").read_text()
    assert "[KFP Executor" in log
    assert "Executing task" in log


def test_everything_under_the_output_folder_honours_the_umask(one_epoch) -> None:
    done, output_dir = one_epoch
    assert done.returncode == 0
    wrong = {}
    for path in sorted(output_dir.rglob("*")):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        executable = path.is_file() and mode & 0o111
        expected = (0o777 if path.is_dir() or executable else 0o666) & ~0o002
        if mode != expected:
            wrong[str(path.relative_to(output_dir))] = oct(mode)
    assert not wrong, wrong
    # kfp.local's cache (private files of its own making) is among them.
    assert list((output_dir / "cache").iterdir())


def test_verbose_shows_what_kfp_local_prints(http_mirror, mnist_mirror, tmp_path) -> None:
    _, md5 = mnist_mirror
    done = run_cli(*small(http_mirror, md5, tmp_path / "out", "--verbose"))
    assert done.returncode == 0, done.stderr
    assert "[KFP Executor" in done.stdout
    assert "Executing task" in done.stdout
    assert "\x1b[" not in done.stdout  # a pipe gets no terminal colours


def test_a_failed_run_ends_with_the_tasks_own_error_and_keeps_the_last_summary(
    mnist_mirror, tmp_path
) -> None:
    _, md5 = mnist_mirror
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    previous = '{"test_accuracy": 0.5}\n'
    (output_dir / "summary.json").write_text(previous)

    # Nothing listens on port 9: the download fails on every attempt.
    done = run_cli(*small("http://127.0.0.1:9/", md5, output_dir), timeout=300)

    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    *_, which, last = done.stderr.strip().splitlines()
    assert which == f"task download-mnist failed; its whole output: {output_dir / 'local-run.log'}"
    assert last.startswith("error: could not download ")
    assert "127.0.0.1:9" in last
    # The previous run's summary is still there, untouched: nothing replaced it.
    assert (output_dir / "summary.json").read_text() == previous


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_a_read_only_output_folder_is_one_line_before_anything_runs(
    http_mirror, mnist_mirror, tmp_path
) -> None:
    _, md5 = mnist_mirror
    output_dir = tmp_path / "ro"
    _mount_tmpfs(output_dir, "size=1m")
    (output_dir / "summary.json").write_text("{}\n")
    subprocess.run(["mount", "-o", "remount,ro", str(output_dir)], check=True)
    try:
        done = run_cli(*small(http_mirror, md5, output_dir))
    finally:
        subprocess.run(["umount", str(output_dir)], check=False)

    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line == (
        f"error: invalid output_dir='{output_dir}': expected a folder this user can write "
        "(Read-only file system)"
    )


def test_a_full_output_folder_fails_in_one_line_naming_the_path(
    http_mirror, mnist_mirror, tmp_path
) -> None:
    _, md5 = mnist_mirror
    output_dir = tmp_path / "full"
    # Room for the data set, but not for the training's artifacts as well.
    _mount_tmpfs(output_dir, "size=3m")
    try:
        done = run_cli(*small(http_mirror, md5, output_dir), timeout=300)
        models = list(output_dir.glob("artifacts/*/train-mnist/model"))
        summary = (output_dir / "summary.json").exists()
    finally:
        subprocess.run(["umount", str(output_dir)], check=False)

    assert done.returncode == 1, done.stdout[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left on device writing ")
    assert str(output_dir) in last
    # Nothing that looks complete: no model, no summary.
    assert (models, summary) == ([], False)


def test_a_task_the_system_killed_is_named_with_the_likely_cause(tmp_path) -> None:
    import io

    from kfp_lightning.pipelines.local import TaskConsole

    shown, log = io.StringIO(), io.StringIO()
    console = TaskConsole(shown, log, verbose=False)
    # What kfp.local prints around a task that the kernel's out-of-memory killer ended.
    console.write(
        "12:00:00.000 - INFO - Executing task \x1b[96m'train-mnist'\x1b[0m\n"
        "12:00:00.001 - INFO - Streamed logs:\n\n"
        "    [train-mnist] epoch 1/1 batch 1/1 step 1 loss 2.3\n"
        "    Killed\n"
        "12:01:00.000 - ERROR - Task \x1b[96m'train-mnist'\x1b[0m finished with status FAILURE\n"
    )

    assert console.cause("train-mnist").startswith(
        "train-mnist was killed (SIGKILL), most likely for lack of memory: lower batch_size"
    )
    assert "[train-mnist] Killed" in shown.getvalue()
    assert "    Killed" in log.getvalue()


def test_a_run_whose_stdout_reader_leaves_goes_on_and_finishes(
    http_mirror, mnist_mirror, tmp_path
) -> None:
    _, md5 = mnist_mirror
    output_dir = tmp_path / "out"
    # `... | head -1`: the reader takes the first line and goes.
    with subprocess.Popen(
        [
            sys.executable,
            str(REPO / "pipelines" / "mnist.py"),
            "--local",
            *small(http_mirror, md5, output_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        first = process.stdout.readline()
        process.stdout.close()
        stderr = process.stderr.read()
        returncode = process.wait(timeout=600)

    assert first.startswith("TensorBoard: http://127.0.0.1:")
    assert (returncode, stderr) == (0, "")
    assert json.loads((output_dir / "summary.json").read_text())["epochs"] == 1
    assert "    timing: " in (output_dir / "local-run.log").read_text()


def test_a_task_that_failed_without_an_error_line_is_quoted_not_taken_for_a_cause() -> None:
    import io

    from kfp_lightning.pipelines.local import TaskConsole

    console = TaskConsole(io.StringIO(), io.StringIO(), verbose=False)
    # A task stopped from outside (its shell got SIGKILL) while it was printing its timings.
    console.write(
        "12:00:00.000 - INFO - Executing task \x1b[96m'train-mnist'\x1b[0m\n"
        "12:00:00.001 - INFO - Streamed logs:\n\n"
        "    timing: first point 2.1 s\n"
        "12:01:00.000 - ERROR - Task \x1b[96m'train-mnist'\x1b[0m finished with status FAILURE\n"
        "12:01:00.001 - INFO - Executing task \x1b[96m'report-training'\x1b[0m\n"
    )

    assert console.cause("train-mnist") == (
        "train-mnist failed without an error line; its last line: timing: first point 2.1 s"
    )
    assert console.cause("report-training") == "report-training failed without printing anything"


def test_a_failed_node_shows_its_error_once_and_torchruns_traceback_only_in_the_log(
    http_mirror, mnist_mirror, tmp_path
) -> None:
    _, md5 = mnist_mirror
    output_dir = tmp_path / "out"
    # SGD at this rate diverges at its second step, on both nodes.
    diverging = ("--nodes", "2", "--optimizer", "sgd", "--learning-rate", "1e6")
    done = run_cli(*small(http_mirror, md5, output_dir, *diverging))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: node ")
    assert "training diverged" in done.stderr
    shown = done.stdout.splitlines()
    assert len(shown) <= MAX_LINES, done.stdout
    assert not [line for line in shown if "Traceback" in line or "ChildFailedError" in line]
    assert any(line.startswith("[train-on-nodes] [node 0] error: ") for line in shown)
    # What torchrun printed after the nodes' errors is all in the log.
    log = (output_dir / "local-run.log").read_text()
    assert log.count("ChildFailedError") >= 2, log[-3000:]
