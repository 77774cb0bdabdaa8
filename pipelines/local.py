"""Run the pipeline on this machine with `kfp.local`, with TensorBoard watching it live.

Every task runs as a subprocess of this Python environment (the package must be installed in
it), writing its artifacts under `<output_dir>/artifacts`. Training streams its event files to
`<output_dir>/tensorboard/<run id>`, and a `tensorboard` server on 127.0.0.1 shows them while
the pipeline runs; the URL is printed before the first task starts. Everything kfp.local and
the tasks print goes to `<output_dir>/local-run.log`; the terminal shows each task's own lines
(progress, where things are) and, when a task fails, its one-line error last, on stderr.
"""

import contextlib
import ctypes
import fcntl
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from kfp_lightning.components.common.errors import RunError, invalid
from kfp_lightning.components.common.files import atomic_write_bytes, share_like_umask, write_json
from kfp_lightning.components.common.logs_location import NAMESPACE_PLACEHOLDER, parse_logs_root
from kfp_lightning.components.common.torchrun import free_port
from kfp_lightning.components.common.training import CONSOLE_ENV
from kfp_lightning.components.train_on_nodes.nodes import LOCAL
from kfp_lightning.pipelines import parameters as run_parameters
from kfp_lightning.pipelines.mnist import build_pipeline


def _end_with_parent() -> None:
    # In the child, before it runs TensorBoard: Linux's PR_SET_PDEATHSIG (prctl(2), option 1)
    # sends it SIGTERM when the CLI ends, even by SIGKILL, which leaves the CLI no cleanup.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


@contextlib.contextmanager
def local_tensorboard(logdir: Path, keep: bool, log_file: Path) -> Iterator[str]:
    """Serves `logdir` with TensorBoard on 127.0.0.1 for the duration of the block.

    Args:
        logdir: Directory to watch (each run is a subdirectory of it).
        keep: Leave the server running after the block (its pid is printed).
        log_file: Where TensorBoard's own output goes.

    Yields:
        The URL (the server answers within seconds).
    """
    logdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with log_file.open("ab") as log:
        # Rescanned every second: a new point is served within a second of reaching the file.
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)),
                *("--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in this terminal stops the pipeline, not the viewer.
            start_new_session=True,
            preexec_fn=None if keep or sys.platform != "linux" else _end_with_parent,
        )
    # Not waited for: TensorBoard loads while the first task starts, and the page answers long
    # before the first point exists. A watcher says so if it stops early.
    print(f"TensorBoard: {url} (live while the pipeline runs)", flush=True)
    stopping = threading.Event()

    def watch() -> None:
        if process.wait() != 0 and not stopping.is_set():
            print(f"warning: TensorBoard stopped (see {log_file})", file=sys.stderr, flush=True)

    threading.Thread(target=watch, name="tensorboard-watch", daemon=True).start()
    try:
        yield url
    finally:
        stopping.set()
        if keep and process.poll() is None:
            print(f"TensorBoard keeps running at {url} (stop it with: kill {process.pid})")
        else:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def hold_output_dir(output_dir: Path) -> Iterator[None]:
    """Keeps other `--local` runs out of `output_dir` for the duration of the block.

    Two runs into one folder would overwrite each other's artifacts, cache and summary. An
    advisory `flock` on `<output_dir>/.lock` (POSIX, as the rest of `--local`): the kernel
    releases it when the holder exits, however it exits, so no stale lock is ever left.

    Raises:
        UserInputError: Another run holds the folder.
    """
    with (output_dir / ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise invalid(
                "output_dir", str(output_dir), "a folder no other --local run is using"
            ) from None
        yield


LOG_FILE = "local-run.log"
# What kfp.local prints around the tasks' own output (kfp/local/logging_utils.py: its records,
# `HH:MM:SS.mmm - LEVEL - message`; each task's stream indented by four spaces; the executor's
# records `[KFP Executor <time> LEVEL]: ...`, one of which dumps the executor input as JSON).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KFP_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - (\w+) - (.*)$")
# A line of one node of a `--nodes` run (components/common/torchrun.py prefixes them).
_NODE_LINE = re.compile(r"^(\[node \d+\]) (.*)$")


def discard_output(stream: TextIO) -> None:
    """Sends what is still written to `stream` (whose reader is gone) to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class TaskConsole(io.TextIOBase):
    """Stands in for stdout while kfp.local runs: keeps all of it, shows what a user needs.

    Every line goes to the log file. On the console (unless `verbose`), kfp.local's own records
    and the executor's bookkeeping are left out, and each task line is shown as
    `[task] line`. The last `error: ...` line (or, failing that, the last line) each task
    printed is kept, so a failed run can end with the failed task's own cause.

    Args:
        console: Where the chosen lines go (the real stdout).
        log: The log file, open for writing.
        verbose: Show every line, as kfp.local prints it.
    """

    def __init__(self, console: TextIO, log: TextIO, verbose: bool) -> None:
        self.console, self.verbose = console, verbose
        self._colours = bool(getattr(console, "isatty", lambda: False)())
        self.log: TextIO | None = log
        self.task = ""
        self.in_stream = False  # between a task's "Streamed logs:" and kfp's next record
        self.in_input_dump = False
        self.last_lines: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self.failed_nodes: set[str] = set()
        self._pending = ""

    def writable(self) -> bool:
        # io.TextIOBase says False; print() does not ask, but logging and warnings may.
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        if self.log is not None:
            with contextlib.suppress(OSError):
                self.log.flush()
        self._show("")  # a flush that meets a closed pipe is handled as a write that does

    def _line(self, line: str) -> None:
        if self.log is not None:
            try:
                self.log.write(line + "\n")
            except OSError as err:  # a full disk: the tasks say so themselves; keep showing
                self.log = None
                print(f"warning: {LOG_FILE} stopped here: {err.strerror}", file=sys.stderr)
        plain = _ANSI.sub("", line)
        if self.verbose:
            # kfp.local colours its records for a terminal; a pipe or a file gets them plain.
            self._show((line if self._colours else plain) + "\n")
        if record := _KFP_RECORD.match(plain):
            message = record.group(2)
            if started := re.match(r"Executing task '([^']+)'", message):
                self.task = started.group(1)
            self.in_stream = message.startswith("Streamed logs:")
            self.in_input_dump = False
            return
        if not (self.in_stream and plain.startswith("    ")):
            return  # kfp.local's multi-line records (a task's outputs), rules, blank lines
        text = plain[4:].rstrip()  # without the four spaces
        if self.in_input_dump:
            self.in_input_dump = text != "}"  # the dump's closing brace, unindented
            return
        if text.startswith("[KFP Executor "):
            self.in_input_dump = text.endswith("Got executor_input:")
            return
        if not text.strip():
            return
        if node := _NODE_LINE.match(text):
            if node.group(2).startswith("error: "):
                self.failed_nodes.add(node.group(1))
            elif node.group(1) in self.failed_nodes:
                return  # after a node's own error, torchrun's traceback of it: the log's alone
        self.last_lines[self.task] = text.strip()
        if text.startswith("error: "):
            self.failures[self.task] = text[len("error: ") :]
        if not self.verbose:
            self._show(f"[{self.task}] {text}\n")

    def _show(self, text: str) -> None:
        try:
            self.console.write(text)
            self.console.flush()
        except BrokenPipeError:
            # The reader of stdout is gone (`| head`): the run goes on, and the log has it all.
            discard_output(self.console)

    def cause(self, task: str) -> str:
        """The failed task's own one-line error, or its last line, quoted, when it printed none."""
        if task in self.failures:
            return self.failures[task]
        last = self.last_lines.get(task)
        if last == "Killed":
            # The shell that runs a task's command says only this when the task got SIGKILL,
            # on Linux usually from the kernel's out-of-memory killer.
            return (
                f"{task} was killed (SIGKILL), most likely for lack of memory: lower "
                "batch_size, or free memory on this machine"
            )
        # No error line: a crash (a traceback's last line) or a signal from outside (whatever
        # the task was saying then), so the line is quoted rather than passed off as the cause.
        if last:
            return f"{task} failed without an error line; its last line: {last}"
        return f"{task} failed without printing anything"


def require_writable_folder(name: str, folder: Path) -> None:
    """Makes `folder` (and its parents) or refuses it, before anything runs.

    Raises:
        UserInputError: A file is in the way, or this user cannot create or write the folder.
    """
    if folder.exists() and not folder.is_dir():
        raise invalid(name, str(folder), "a folder, not a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A probe, since permission bits do not tell root about a read-only mount.
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise invalid(name, str(folder), f"a folder this user can write ({err.strerror})") from None


def run_local(
    output_dir: str | Path,
    parameters: Mapping[str, Any],
    keep_tensorboard: bool = False,
    nodes: int = 1,
    verbose: bool = False,
) -> dict[str, Any]:
    """Runs the pipeline here and writes `<output_dir>/summary.json`.

    Args:
        output_dir: Holds artifacts/, cache/, tensorboard/ and summary.json.
        parameters: Pipeline arguments; `tensorboard_logs_root` defaults to
            `<output_dir>/tensorboard`.
        keep_tensorboard: Leave the TensorBoard server running when the pipeline ends.
        nodes: Nodes to train on; more than one runs them as torchrun processes on 127.0.0.1
            (gloo on the CPU), through the same multi-node entry point as a cluster's TrainJob.
        verbose: Show everything kfp.local and the tasks print, not only the tasks' own lines
            (all of it is in `<output_dir>/local-run.log` either way).

    Returns:
        The summary that was written.

    Raises:
        UserInputError: A parameter or the output folder cannot be used (nothing ran).
        RunError: A task failed: the message is that task's own error.
    """
    from kfp import local

    if not str(output_dir):  # Path("") is the working directory: never meant
        raise invalid("output_dir", "", "a folder path")
    if NAMESPACE_PLACEHOLDER in str(output_dir):  # it would reach the default logs root
        raise invalid("output_dir", str(output_dir), "a folder path without {namespace}")
    # Normalised (`..` resolved as written): the logs root under it must be a plain path.
    output_dir = Path(os.path.abspath(output_dir))
    parameters = {"tensorboard_logs_root": str(output_dir / "tensorboard"), **parameters}
    pipeline = build_pipeline(retries=False, nodes=nodes, node_launcher=LOCAL)
    values = run_parameters.validate_parameters(parameters, nodes)
    run_parameters.check_local_run(values)
    # Local nodes share this machine's cores (components/common/torchrun.py): more processes
    # than cores only compete, each holding its own torch. Two, the least that exercises the
    # distributed path, always may.
    if nodes > (most := max(2, os.cpu_count() or 1)):
        raise invalid("nodes", nodes, f"at most {most} here (this machine's CPU cores)")
    # No namespace: the tasks run outside a pod, where `{namespace}` has nothing to become.
    root = parse_logs_root(values["tensorboard_logs_root"])
    folders = [("output_dir", output_dir)]
    if root.scheme == "file":
        logs = ("tensorboard_logs_root", Path(root.path).absolute())
        # Outside the output folder it goes first, so that refusing it leaves nothing behind.
        folders = [*folders, logs] if logs[1].is_relative_to(output_dir) else [logs, *folders]
    for name, folder in folders:
        require_writable_folder(name, folder)
    # The components name container images; here they run in this Python environment, and
    # the runner's settings (resources, display names) have no effect: said once, here.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    # Tasks inherit it: training then keeps Lightning's informational records out of the way.
    os.environ[CONSOLE_ENV] = "verbose" if verbose else "quiet"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(output_dir / "artifacts"),
        raise_on_error=True,
        enable_caching=True,
        cache_root=str(output_dir / "cache"),
    )
    viewer = (
        local_tensorboard(Path(root.path), keep_tensorboard, output_dir / "tensorboard.log")
        if root.scheme == "file"
        else contextlib.nullcontext(None)
    )
    log_path = output_dir / LOG_FILE
    with hold_output_dir(output_dir), viewer as url:
        log = log_path.open("w", encoding="utf-8")
        console = TaskConsole(sys.stdout, log, verbose)
        try:
            with contextlib.redirect_stdout(console):
                outputs = pipeline(**parameters).outputs
        except RuntimeError:
            # kfp.local runs one task at a time and stops at the first that fails: the last
            # one that started (its error names it only inside the failed pipeline's chain).
            print(f"task {console.task} failed; its whole output: {log_path}", file=sys.stderr)
            raise RunError(console.cause(console.task)) from None
        finally:
            console.flush()
            # Closing flushes: on a full disk that fails too, and the tasks' own error says so.
            with contextlib.suppress(OSError):
                log.close()
            # kfp.local's cache writes private (0600) files; the folder is the user's to share.
            share_like_umask(output_dir)
        report_page = output_dir / "report.html"
        atomic_write_bytes(report_page, Path(outputs["report"].path).read_bytes())
        metrics = dict(outputs["metrics"].metadata)
        classification = outputs["classification_metrics"]
        confusion = classification.metadata["confusionMatrix"]
        # kfp.local keeps a metrics artifact as metadata only; the summary points at a real file.
        write_json(Path(classification.path), dict(classification.metadata))
        summary = {
            **{k: metrics[k] for k in ("test_accuracy", "test_loss", "train_samples_per_second")},
            "epochs": int(metrics["epochs"]),
            # How many nodes and processes trained (training logs both).
            **{k: int(metrics.get(k, 1)) for k in ("nodes", "processes")},
            "metrics": metrics,
            **{k: outputs[k].path for k in ("model", "tensorboard_logs")},
            "classification_metrics": classification.path,
            # Rows: true digit; columns: predicted digit (the artifact's metadata, as in Kubeflow),
            # counted in integers again: kfp.local keeps metadata as protobuf numbers, floats.
            "confusion_matrix": [list(map(int, row["row"])) for row in confusion["rows"]],
            # A path that opens as a page: KFP's HTML artifact is a file without an extension.
            "report_html": str(report_page),
            # Null when the server stopped with the run: only a kept one still answers.
            "tensorboard_url": url if keep_tensorboard else None,
            "parameters": values,
        }
        write_json(output_dir / "summary.json", summary)
        return summary
