"""Run the pipeline on this machine with `kfp.local`, with TensorBoard watching it live.

Every task runs as a subprocess of this Python environment (the package must be installed in
it), writing its artifacts under `<output_dir>/artifacts`. Training streams its event files to
`<output_dir>/tensorboard/<run id>`, and a `tensorboard` server on 127.0.0.1 shows them while
the pipeline runs; the URL is printed before the first task starts.
"""

import contextlib
import re
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.files import write_json
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.pipelines.mnist import build_pipeline
from kfp_lightning.pipelines.parameters import validate_parameters

TENSORBOARD_START_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_tensorboard(logdir: Path, keep: bool, log_file: Path) -> Iterator[str]:
    """Serves `logdir` with TensorBoard on 127.0.0.1 for the duration of the block.

    Args:
        logdir: Directory to watch (each run is a subdirectory of it).
        keep: Leave the server running after the block (its pid is printed).
        log_file: Where TensorBoard's own output goes.

    Yields:
        The URL, once the server answers.
    """
    logdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)),
                *("--host", "127.0.0.1", "--port", str(port), "--reload_interval", "2"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in this terminal stops the pipeline, not the viewer.
            start_new_session=True,
        )
    deadline = time.monotonic() + TENSORBOARD_START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    if process.poll() is not None:
        print(f"warning: TensorBoard did not start (see {log_file})", file=sys.stderr)
    else:
        print(f"TensorBoard: {url} (live while the pipeline runs)", flush=True)
    try:
        yield url
    finally:
        if keep and process.poll() is None:
            print(f"TensorBoard keeps running at {url} (stop it with: kill {process.pid})")
        else:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def run_local(
    output_dir: str | Path, parameters: Mapping[str, Any], keep_tensorboard: bool = False
) -> dict[str, Any]:
    """Runs the pipeline here and writes `<output_dir>/summary.json`.

    Args:
        output_dir: Holds artifacts/, cache/, tensorboard/ and summary.json.
        parameters: Pipeline arguments; `tensorboard_logs_root` defaults to
            `<output_dir>/tensorboard`.
        keep_tensorboard: Leave the TensorBoard server running when the pipeline ends.

    Returns:
        The summary that was written.
    """
    from kfp import local

    output_dir = Path(output_dir).absolute()
    parameters = {"tensorboard_logs_root": str(output_dir / "tensorboard"), **parameters}
    pipeline = build_pipeline(retries=False)
    values = validate_parameters(pipeline, parameters)
    root = parse_logs_root(values["tensorboard_logs_root"], namespace="local")
    output_dir.mkdir(parents=True, exist_ok=True)
    # A summary from an earlier run must not pass for this run's if this one fails.
    (output_dir / "summary.json").unlink(missing_ok=True)
    # The components name container images; here they run in this Python environment.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
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
    with viewer as url:
        try:
            outputs = pipeline(**parameters).outputs
        except RuntimeError as err:
            # kfp.local reports the failed task in colour; the task's own error is above.
            message = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
            raise RunError(f"{message} Its error is printed above.") from None
    metrics = dict(outputs["metrics"].metadata)
    summary = {
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "epochs": int(metrics["epochs"]),
        "train_samples_per_second": metrics["train_samples_per_second"],
        "metrics": metrics,
        "model": outputs["model"].path,
        "tensorboard_logs": outputs["tensorboard_logs"].path,
        "report_html": outputs["report"].path,
        "tensorboard_url": url,
        "parameters": values,
    }
    write_json(output_dir / "summary.json", summary)
    return summary
