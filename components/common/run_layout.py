"""Where the step and the training nodes of a multi-node run meet: folders of the run's location.

The nodes share nothing with the step but the run's live location (`<tensorboard_logs_root>/
<run id>`, an s3:// prefix or a claim every node mounts; a directory on this machine for local
runs). The step uploads its Dataset input to `dataset/`; every node downloads it from there;
global rank 0 uploads the model, the evaluation and `result.json` to `outputs/`, then writes
`outputs/complete.json` last, listing every file it published with its size. The step trusts
the outputs only once that marker lists them, so a node lost in the middle of an upload never
passes for a finished run, and a retried step that finds the marker of its own run's finished
job just downloads them again. The step starts every node with `entry_arguments`, which the
nodes' entry point (`train_mnist/distributed.py`) parses.

The TensorBoard logs are not copied to `outputs/`: rank 0 already keeps them current in the
location itself (`<run name>/events...`, the live logs the TensorBoard server and
`--compare-runs` read), and the location is the TensorBoard's logspath, so a second copy below
`outputs/` would show every curve twice. The marker lists those live files instead (their
paths outside `outputs/`), with the sizes rank 0 wrote, and the step builds its
`tensorboard_logs` output from them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.files import write_json
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


def files_under(storage: Storage, prefix: str) -> dict[str, int]:
    """The files below `prefix/` in `storage`, by path relative to the storage, with sizes."""
    return {
        path: size for path, size in storage.list_files().items() if path.startswith(f"{prefix}/")
    }


def upload_tree(storage: Storage, local_dir: Path, prefix: str) -> dict[str, int]:
    """Copies every file below `local_dir` to `prefix/<its relative path>`.

    Args:
        storage: The run's location.
        local_dir: A local directory.
        prefix: Folder of the storage to copy into.

    Returns:
        Path in the storage -> size in bytes, of every file copied.
    """
    copied = {}
    for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        relative = f"{prefix}/{path.relative_to(local_dir).as_posix()}"
        storage.upload(path, relative)
        copied[relative] = path.stat().st_size
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


def publish_live_logs(storage: Storage, logs_dir: Path) -> dict[str, int]:
    """Makes sure the location holds every file of rank 0's logs directory, as it is now.

    The live copy is normally complete already (training's last act is a final copy), but a
    storage failure during that copy only delays it: what is missing or of another size is
    copied now, at the same path.

    Args:
        storage: The run's location.
        logs_dir: Rank 0's local logs directory.

    Returns:
        Path in the storage (relative to the location, outside `outputs/`) -> size.
    """
    held = storage.list_files()
    files = {}
    for path in sorted(p for p in Path(logs_dir).rglob("*") if p.is_file()):
        relative = path.relative_to(logs_dir).as_posix()
        if relative.split("/", 1)[0] in (OUTPUTS, DATASET):
            raise RunError(f"a log file would shadow the run's {relative.split('/')[0]}/ folder")
        size = path.stat().st_size
        if held.get(relative) != size:
            storage.upload(path, relative)
        files[relative] = size
    return files


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
        result: JSON-serialisable facts of the run (metrics, model metadata, ...).

    Returns:
        Every file published (path in the storage -> size), as the marker lists them.
    """
    files: dict[str, int] = {}
    for name in OUTPUT_DIRS:
        if name == LIVE_LOGS:
            files.update(publish_live_logs(storage, output_dirs[name]))
        else:
            files.update(upload_tree(storage, output_dirs[name], f"{OUTPUTS}/{name}"))
    with tempfile.TemporaryDirectory(prefix="outputs-") as staging:
        result_path = Path(staging) / RESULT
        write_json(result_path, dict(result))
        storage.upload(result_path, f"{OUTPUTS}/{RESULT}")
        files[f"{OUTPUTS}/{RESULT}"] = result_path.stat().st_size
        marker = Path(staging) / MARKER
        write_json(marker, {"files": files})
        storage.upload(marker, f"{OUTPUTS}/{MARKER}")
    return files


def read_marker(storage: Storage) -> dict[str, int] | None:
    """The files rank 0 published, from the marker; None when there is no marker (yet)."""
    if f"{OUTPUTS}/{MARKER}" not in storage.list_files():
        return None
    with tempfile.TemporaryDirectory(prefix="marker-") as staging:
        local = Path(staging) / MARKER
        storage.download(f"{OUTPUTS}/{MARKER}", local)
        return {str(k): int(v) for k, v in json.loads(local.read_text())["files"].items()}


def entry_arguments(
    location: str,
    nodes: int,
    config: TrainConfig,
    s3_endpoint: str | None,
    run_name: str,
    live_update_seconds: float,
) -> list[str]:
    """The arguments after `torchrun --module <the entry module>` that start every node.

    Args:
        location: The run's location URI, `{namespace}` already filled in.
        nodes: Nodes in the world.
        config: The training configuration.
        s3_endpoint: S3 API of an s3:// location, else None.
        run_name: The pipeline run's display name.
        live_update_seconds: Longest delay before a logged point is readable in the location.

    Returns:
        The argument list.
    """
    arguments = [
        "--location",
        location,
        "--nodes",
        str(nodes),
        "--config",
        json.dumps(config.as_dict(), sort_keys=True),
        "--run-name",
        run_name,
        "--live-update-seconds",
        f"{live_update_seconds:g}",
    ]
    if s3_endpoint:
        arguments += ["--s3-endpoint", s3_endpoint]
    return arguments
