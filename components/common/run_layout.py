"""Where a training's launcher and its processes meet: folders of the task's location.

However training is launched (in the component's own process, as torchrun processes in its pod,
or as the nodes of a `TrainJob` or of a local run), its processes share nothing with the
launcher but the task's live location (`<tensorboard_logs_root>/<run id>/<task key>`: an s3://
prefix, a claim every node mounts, or a directory on this machine). Nodes of another machine
download the Dataset from `dataset/`, which the nodes step uploads first. Global rank 0 uploads
the model, the evaluation and `result.json` (a `TrainResult`) to `outputs/`, then writes
`outputs/complete.json` last, listing every file it published with its size. The launcher
trusts the outputs only once that marker lists them (`collect_outputs`), so a process lost in
the middle of an upload never passes for a finished run, and a retried nodes step that finds
the marker of its own finished job just downloads them again. Every launch starts the entry
point (`train_mnist/distributed.py`) with `entry_arguments`.

The TensorBoard logs are not copied to `outputs/`: rank 0 already keeps them current in the
location itself (`<run name>/events...`, the live logs the TensorBoard server and
`--compare-runs` read), and the location is the TensorBoard's logspath, so a second copy below
`outputs/` would show every curve twice. The marker lists those live files instead (their
paths outside `outputs/`), with the sizes rank 0 wrote, and the launcher builds its
`tensorboard_logs` output from them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.files import atomic_directory, write_json
from kfp_lightning.components.common.storage import Storage
from kfp_lightning.components.common.training import TrainConfig

DATASET = "dataset"
OUTPUTS = "outputs"
MARKER = "complete.json"  # in OUTPUTS, written last
RESULT = "result.json"  # in OUTPUTS: metrics, model metadata, confusion matrix
# The output folders rank 0 publishes, by the name of the KFP output artifact they become.
OUTPUT_DIRS = ("model", "tensorboard_logs", "evaluation")
# The one published from the live logs in place, not uploaded to outputs/ (see the docstring).
LIVE_LOGS = "tensorboard_logs"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run produced (`outputs/result.json`), as the component reports it.

    Attributes:
        metrics: Final scalar metrics (test accuracy and loss, last validation values, epochs,
            optimiser steps, training samples seen and per second, training and wall seconds,
            nodes and processes).
        model_metadata: The metadata written beside the model.
        labels: The class names, in the confusion matrix's order.
        confusion_matrix: Test-set counts, row = true digit, column = predicted digit.
    """

    metrics: dict[str, float]
    model_metadata: dict[str, Any]
    labels: list[str]
    confusion_matrix: list[list[int]]

    def log_to(self, metrics: Any, model: Any, classification_metrics: Any) -> None:
        """Writes the run's numbers to the component's KFP outputs (kfp.dsl's `Metrics`, `Model`
        and `ClassificationMetrics` artifacts: this module does not import kfp)."""
        for name, value in self.metrics.items():
            metrics.log_metric(name, value)
        model.metadata.update(self.model_metadata)
        classification_metrics.log_confusion_matrix(self.labels, self.confusion_matrix)


def files_under(storage: Storage, prefix: str) -> dict[str, int]:
    """The files below `prefix/` in `storage`, by path relative to the storage, with sizes."""
    return {
        path: size for path, size in storage.list_files().items() if path.startswith(f"{prefix}/")
    }


def upload_tree(
    storage: Storage, local_dir: Path, prefix: str, held: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Copies every file below `local_dir` to `prefix/<its relative path>`.

    Args:
        storage: The run's location.
        local_dir: A local directory.
        prefix: Folder of the storage to copy into ("": the location itself, beside its
            `outputs/` and `dataset/`, which no file may shadow).
        held: What the storage holds (path -> size): a file already there with the same size
            is not copied again.

    Returns:
        Path in the storage -> size in bytes, of every file below `local_dir`.

    Raises:
        RunError: A file copied to the location itself would shadow `outputs/` or `dataset/`.
    """
    copied = {}
    for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        relative = (f"{prefix}/" if prefix else "") + path.relative_to(local_dir).as_posix()
        if not prefix and (top := relative.split("/", 1)[0]) in (OUTPUTS, DATASET):
            raise RunError(f"a log file would shadow the run's {top}/ folder")
        copied[relative] = path.stat().st_size
        if (held or {}).get(relative) != copied[relative]:
            storage.upload(path, relative)
    return copied


def download_tree(storage: Storage, files: Mapping[str, int], prefix: str, local_dir: Path) -> None:
    """Copies the listed files below `prefix/` into `local_dir`, checking each one's size.

    Args:
        storage: The run's location.
        files: Path in the storage -> expected size (others below `prefix/` are ignored).
        prefix: The folder to copy from ("": the location itself).
        local_dir: Where its files go, under their path relative to `prefix/`.

    Raises:
        RunError: A file is missing or does not have the size listed.
    """
    start = f"{prefix}/" if prefix else ""
    for relative, size in sorted(files.items()):
        if not relative.startswith(start):
            continue
        target = Path(local_dir) / relative[len(start) :]
        try:
            storage.download(relative, target)
        except Exception as err:  # OSError locally; botocore's own errors for S3
            raise RunError(f"could not copy {relative} from the run's location: {err}") from err
        if target.stat().st_size != size:
            raise RunError(
                f"{relative} in the run's location has {target.stat().st_size} bytes, "
                f"{size} expected: it changed while being copied"
            )


def clear(storage: Storage, prefix: str) -> int:
    """Deletes every file below `prefix/`; returns how many there were."""
    files = files_under(storage, prefix)
    for relative in files:
        storage.delete(relative)
    return len(files)


def live_log_files(files: Mapping[str, int]) -> dict[str, int]:
    """The live log files among the files a marker lists (those outside `outputs/`)."""
    return {path: size for path, size in files.items() if not path.startswith(f"{OUTPUTS}/")}


def publish_outputs(
    storage: Storage, output_dirs: Mapping[str, Path], result: Mapping[str, Any]
) -> dict[str, int]:
    """Rank 0's last act: publishes its outputs and `result`, then the marker that lists them.

    Args:
        storage: The run's location.
        output_dirs: A key of `OUTPUT_DIRS` -> the local directory holding that output; the
            `LIVE_LOGS` one is the directory the live logs are copied from.
        result: A `TrainResult`'s fields (`dataclasses.asdict`).

    Returns:
        Every file published (path in the storage -> size), as the marker lists them.
    """
    files: dict[str, int] = {}
    for name in OUTPUT_DIRS:
        # The live logs are normally complete in the location already (training's last act is
        # a final copy), but a storage failure during that copy only delays it: what is
        # missing or of another size is copied now, at the same path (outside `outputs/`).
        live = name == LIVE_LOGS
        prefix, held = ("", storage.list_files()) if live else (f"{OUTPUTS}/{name}", None)
        files.update(upload_tree(storage, output_dirs[name], prefix, held))
    with tempfile.TemporaryDirectory(prefix="outputs-") as staging:
        write_json(Path(staging) / RESULT, dict(result))
        files.update(upload_tree(storage, Path(staging), OUTPUTS))
        write_json(Path(staging) / MARKER, {"files": files})
        storage.upload(Path(staging) / MARKER, f"{OUTPUTS}/{MARKER}")
    return files


def read_marker(storage: Storage) -> dict[str, int] | None:
    """The files rank 0 published, from the marker; None when there is no marker (yet)."""
    if f"{OUTPUTS}/{MARKER}" not in storage.list_files():
        return None
    with tempfile.TemporaryDirectory(prefix="marker-") as staging:
        local = Path(staging) / MARKER
        storage.download(f"{OUTPUTS}/{MARKER}", local)
        return {str(k): int(v) for k, v in json.loads(local.read_text())["files"].items()}


def collect_outputs(storage: Storage, output_dirs: Mapping[str, str | Path]) -> TrainResult:
    """Copies what rank 0 published into the launcher's output directories, each atomically.

    The model and evaluation come from `outputs/`, the TensorBoard logs from the live logs the
    marker lists.

    Args:
        storage: The task's location.
        output_dirs: Each name of `OUTPUT_DIRS` -> the directory to create.

    Returns:
        The published `result.json`.

    Raises:
        RunError: Rank 0 published nothing, or a file is missing or incomplete.
    """
    files = read_marker(storage)
    if files is None:
        raise RunError(
            "training finished, but rank 0 published no outputs "
            f"({OUTPUTS}/{MARKER} is missing from the run's location)"
        )
    result_file = f"{OUTPUTS}/{RESULT}"
    with contextlib.ExitStack() as stack:
        staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="result-")))
        download_tree(storage, {result_file: files[result_file]}, OUTPUTS, staging)
        result = json.loads((staging / RESULT).read_text())
        for name in OUTPUT_DIRS:
            directory = stack.enter_context(atomic_directory(output_dirs[name]))
            if name == LIVE_LOGS:  # where rank 0 kept them current (see the module docstring)
                download_tree(storage, live_log_files(files), "", directory)
            else:
                download_tree(storage, files, f"{OUTPUTS}/{name}", directory)
    result["metrics"] = {k: float(v) for k, v in result["metrics"].items()}
    return TrainResult(**result)


def entry_arguments(
    location: str,
    nodes: int,
    config: TrainConfig,
    s3_endpoint: str | None,
    run_name: str,
    live_update_seconds: float,
    dataset: str | Path | None = None,
) -> list[str]:
    """The arguments of the entry point (after `torchrun --module <the entry module>`).

    Args:
        location: The task's location URI, `{namespace}` already filled in.
        nodes: Nodes in the world.
        config: The training configuration.
        s3_endpoint: S3 API of an s3:// location, else None.
        run_name: The pipeline run's display name.
        live_update_seconds: Longest delay before a logged point is readable in the location.
        dataset: The Dataset's directory on this machine; None: every process downloads it
            from the location's `dataset/` (nodes on other machines).

    Returns:
        The argument list.
    """
    arguments = ["--location", location, "--nodes", str(nodes)]
    arguments += ["--config", json.dumps(config.as_dict(), sort_keys=True), "--run-name", run_name]
    arguments += ["--live-update-seconds", f"{live_update_seconds:g}"]
    if s3_endpoint:
        arguments += ["--s3-endpoint", s3_endpoint]
    if dataset is not None:
        arguments += ["--dataset", str(dataset)]
    return arguments
