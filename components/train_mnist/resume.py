"""Bring back what an earlier attempt of the same run logged, cut at the step training resumes.

A retried training task (KFP's retry after a lost pod, same run id) finds the lost attempt's
event files in the run's live location. It resumes from the newest good checkpoint, or from
scratch when there is none, and will log every step from there on again. So before training
starts, each earlier event file is cut back to the events below that step, in the live
location and in the local copy that becomes the `tensorboard_logs` artifact: every step then
appears once, whatever reads the files. TensorBoard servers that already hold the cut points
in memory drop them when the new writer's first event (a `SessionLog.START` at the resume
step, written through `purge_step`) reaches them.
"""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from kfp_lightning.components.common.files import atomic_file
from kfp_lightning.components.common.run_layout import DATASET, OUTPUTS
from kfp_lightning.components.common.storage import Storage
from kfp_lightning.components.train_mnist.checkpoints import CHECKPOINT_DIR

# Folders of a run's location that are not TensorBoard logs: the checkpoints, the dataset of
# nodes on other machines, and rank 0's published outputs (components/common/run_layout.py).
NOT_LOGS = (CHECKPOINT_DIR, DATASET, OUTPUTS)

EVENT_FILE_MARK = "tfevents"


def cut_event_file(path: Path, below_step: int) -> bool:
    """Keeps only the events of `path` logged before `below_step`, rewriting it atomically.

    The file-version header (the first event, which TensorBoard needs to read the rest) is
    always kept; every other event with `step >= below_step` is dropped.

    Args:
        path: A TensorBoard event file.
        below_step: The first step the resumed run logs again (0 when it starts over).

    Returns:
        Whether any event other than the header remains.
    """
    kept: list[bytes] = []
    holds_data = dropped = False
    for record in RawEventFileLoader(str(path)).Load():
        event = event_pb2.Event.FromString(record)
        if event.HasField("file_version") or event.step < below_step:
            kept.append(record)
            holds_data = holds_data or not event.HasField("file_version")
        else:
            dropped = True
    if dropped:
        with atomic_file(path) as tmp, tmp.open("wb") as f:
            writer = RecordWriter(f)
            for record in kept:
                writer.write(record)
    return holds_data


def restore_logs(storage: Storage, logs_dir: Path, below_step: int) -> list[str]:
    """Copies an earlier attempt's logs from the live location, cut at `below_step`.

    Event files are cut (see `cut_event_file`); a cut file is written back to the live
    location in place of the old one, and one left without data is removed from both places.
    What is not logs (`NOT_LOGS`) stays where it is.

    Args:
        storage: The run's live location.
        logs_dir: The local directory that becomes the `tensorboard_logs` artifact.
        below_step: The first step training will log again.

    Returns:
        The relative paths now in `logs_dir` that the live location holds as they are.
    """
    restored = []
    for relative in sorted(storage.list_files()):
        if relative.split("/", 1)[0] in NOT_LOGS:
            continue
        local = logs_dir / relative
        storage.download(relative, local)
        if EVENT_FILE_MARK in Path(relative).name:
            before = local.stat().st_size
            if not cut_event_file(local, below_step):
                local.unlink()
                storage.delete(relative)
                continue
            if local.stat().st_size != before:
                storage.upload(local, relative)
        restored.append(relative)
    return restored
