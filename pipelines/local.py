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
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kfp_lightning.components.common.errors import RunError, invalid
from kfp_lightning.components.common.files import write_json
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.train_on_nodes.nodes import LOCAL
from kfp_lightning.pipelines.mnist import build_pipeline
from kfp_lightning.pipelines.parameters import check_local_run, validate_parameters


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
        The URL (the server answers within seconds).
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


def run_local(
    output_dir: str | Path,
    parameters: Mapping[str, Any],
    keep_tensorboard: bool = False,
    nodes: int = 1,
) -> dict[str, Any]:
    """Runs the pipeline here and writes `<output_dir>/summary.json`.

    Args:
        output_dir: Holds artifacts/, cache/, tensorboard/ and summary.json.
        parameters: Pipeline arguments; `tensorboard_logs_root` defaults to
            `<output_dir>/tensorboard`.
        keep_tensorboard: Leave the TensorBoard server running when the pipeline ends.
        nodes: Nodes to train on; more than one runs them as torchrun processes on 127.0.0.1
            (gloo on the CPU), through the same multi-node entry point as a cluster's TrainJob.

    Returns:
        The summary that was written.
    """
    from kfp import local

    output_dir = Path(output_dir).absolute()
    parameters = {"tensorboard_logs_root": str(output_dir / "tensorboard"), **parameters}
    pipeline = build_pipeline(retries=False, nodes=nodes, node_launcher=LOCAL)
    values = validate_parameters(parameters)
    check_local_run(values)
    root = parse_logs_root(values["tensorboard_logs_root"], namespace="local")
    if output_dir.exists() and not output_dir.is_dir():
        raise invalid("output_dir", str(output_dir), "a folder, not a file")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, or a folder this user cannot write
        raise invalid(
            "output_dir", str(output_dir), f"a folder this user can write ({err.strerror})"
        ) from None
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
    classification = outputs["classification_metrics"]
    confusion = classification.metadata["confusionMatrix"]
    # kfp.local keeps a metrics artifact as metadata only; the summary points at a real file.
    write_json(Path(classification.path), dict(classification.metadata))
    summary = {
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "epochs": int(metrics["epochs"]),
        "train_samples_per_second": metrics["train_samples_per_second"],
        # How many nodes and processes trained (training logs both).
        "nodes": int(metrics.get("nodes", 1)),
        "processes": int(metrics.get("processes", 1)),
        "metrics": metrics,
        "model": outputs["model"].path,
        "tensorboard_logs": outputs["tensorboard_logs"].path,
        "classification_metrics": classification.path,
        # Rows: true digit; columns: predicted digit (the artifact's metadata, as Kubeflow shows).
        "confusion_matrix": [row["row"] for row in confusion["rows"]],
        "report_html": outputs["report"].path,
        "tensorboard_url": url,
        "parameters": values,
    }
    write_json(output_dir / "summary.json", summary)
    return summary
