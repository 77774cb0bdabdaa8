"""The run's live location: the logs copied there while training runs, checkpoints, resuming.

Event files are written to a local directory (fast, and always complete for the final
artifact) and a background thread (`LiveSync`) copies what changed to the live location every
few seconds, where the TensorBoard server reads them. A storage outage only delays the curves:
failures are reported once and retried on the next tick. Only a checkpoint waits for the store:
it is saved with the points logged before it, and a save that fails ends the attempt, which
KFP's retry resumes from the last checkpoint saved.

GPU nodes are often preemptible: the pod can vanish at any step. `DurableCheckpoints` writes a
Lightning checkpoint at the end of every epoch and, within an epoch, whenever `every_seconds`
have passed, to storage that outlives the pod (the run's live logs location), keeping the
newest few. A restarted task (KFP's retry, same run id) calls `find_resumable_checkpoint`,
which takes the newest checkpoint that loads, holds finite weights and belongs to the same
configuration, skipping a torn or diverged one with a warning, so the run continues where it
stopped instead of starting over.

Lightning's own `ModelCheckpoint(train_time_interval=..., save_last=True)` with
`fit(ckpt_path="last")` covers the schedule but not the rest: it reaches S3 only through
s3fs (whose aiobotocore pins fight boto3, which the live logs already use); its local saves
stage the file in the system temp directory (fsspec's `LocalFileOpener`), so on a mounted
claim the final move is a copy that a lost pod can tear; `fit` fails on a torn, diverged or
foreign `last.ckpt` instead of falling back to an older one; and it cannot flush the live logs
before each save, which keeps a resumed run's curves free of gaps. Hence this small callback.

The retried task also finds the lost attempt's event files in the live location. It resumes
from the newest good checkpoint, or from scratch when there is none, and will log every step
from there on again. So before training starts, each earlier event file is cut back to the
events below that step (`restore_logs`), in the live location and in the local copy that
becomes the `tensorboard_logs` artifact: every step then appears once, whatever reads the
files. TensorBoard servers that already hold the cut points in memory drop them when the new
writer's first event (a `SessionLog.START` at the resume step, written through `purge_step`)
reaches them.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from kfp_lightning.components.common.files import atomic_file, reported_write_faults
from kfp_lightning.components.common.logs_location import LogsLocation
from kfp_lightning.components.common.run_layout import DATASET, OUTPUTS, files_under
from kfp_lightning.components.common.storage import Storage
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.model import log_layout

CHECKPOINT_DIR = "checkpoints"
KEEP = 2  # how many of the newest checkpoints the location keeps
# Seconds before each retry of the last copy to the live location, when it fails.
FINAL_COPY_PAUSES = (2.0, 8.0)


def checkpoint_name(step: int, epoch: int) -> str:
    """File name of a checkpoint; zero-padded so names sort by progress."""
    return f"step={step:09d}-epoch={epoch:05d}.ckpt"


class EarlyPoints(Callback):
    """Logs every training step until the first logging interval ends, and publishes the first.

    A user opens TensorBoard to see training start: with Lightning's `log_every_n_steps` the
    first point waits that many steps, then up to a flush period. Before each training batch
    this sets `Trainer.log_every_n_steps` (which Lightning reads at each step) to 1 while the
    step is below `every_n_steps`, and to `every_n_steps` after; at the first batch after a
    step was logged it calls `make_readable` once, so that point is in the live location at
    once.

    Args:
        every_n_steps: The trainer's logging interval (its `log_every_n_steps`).
        make_readable: Flushes and copies what was logged so far.
    """

    def __init__(self, every_n_steps: int, make_readable: Callable[[], object]) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self.make_readable = make_readable
        self._published = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        early = trainer.global_step < self.every_n_steps
        trainer.log_every_n_steps = 1 if early else self.every_n_steps
        # Lightning hands a step's metrics to the logger after `on_train_batch_end`: by the
        # next batch's start the first point has been written.
        if not self._published and trainer.global_step >= 1:
            self._published = True
            self.make_readable()


class DurableCheckpoints(Callback):
    """Saves the full training state to the live location every epoch and every `every_seconds`.

    It acts at the end of each epoch, and after a training batch that is not its epoch's last
    once `every_seconds` of training have passed since the previous save. Each checkpoint is
    written locally, then uploaded in one piece (an object PUT, or a rename on a filesystem),
    so a reader never sees half of one; the newest `KEEP` are kept. With several processes
    every one of them takes part in each save (Lightning's `save_checkpoint` is collective;
    global rank 0 writes the file), and only rank 0 uploads. Whether the time has come is
    decided by rank 0 and sent to the others every `every_n_steps` steps, since each process's
    clock would decide differently and leave the others waiting.

    Args:
        every_n_steps: The trainer's logging interval (its `log_every_n_steps`), which is also
            the number of steps between two decisions of whether to save, with several
            processes (one process decides every step).
        make_readable: Flushes and copies what was logged so far; called before each
            checkpoint's upload, so a resumed run's curves have no gap before its step.
        storage: Where checkpoints go (the `checkpoints/` folder of the live location).
        every_seconds: Longest training time between two checkpoints within an epoch.
    """

    def __init__(
        self,
        every_n_steps: int,
        make_readable: Callable[[], object],
        storage: Storage,
        every_seconds: float,
    ) -> None:
        self.storage, self.every_seconds = storage, every_seconds
        self.make_readable = make_readable
        self.every_n_steps = max(1, every_n_steps)
        self._last = time.monotonic()

    def _save(self, trainer: L.Trainer) -> None:
        name = checkpoint_name(trainer.global_step, trainer.current_epoch)
        # A full or read-only temp folder or location ends training with one line naming
        # what could not be written (the upload reports its own).
        scratch = Path(tempfile.gettempdir())
        with reported_write_faults(scratch), tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
            local = Path(tmp) / name
            with reported_write_faults(local):
                trainer.save_checkpoint(local, weights_only=False)
            if trainer.is_global_zero:
                self.make_readable()
                self.storage.upload(local, f"{CHECKPOINT_DIR}/{name}")
        self._last = time.monotonic()
        if trainer.is_global_zero:
            for old in sorted(files_under(self.storage, CHECKPOINT_DIR))[:-KEEP]:
                self.storage.delete(old)

    def _time_to_save(self, trainer: L.Trainer) -> bool:
        # Lightning hands a step's loss to the logger after `on_train_batch_end`. A checkpoint
        # taken at a step whose point is still to come would be one point ahead of the logs
        # made durable with it, and a resume from it would lose that point: such a step waits
        # for the next. (The same on every process: it depends on the step alone.)
        step, every = trainer.global_step, self.every_n_steps
        if every > 1 and (step <= every or step % every == 0):
            return False
        due = time.monotonic() - self._last >= self.every_seconds
        if trainer.world_size == 1:
            return due
        return (step - 1) % every == 0 and bool(trainer.strategy.broadcast(due, src=0))

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # The epoch's last batch is followed by `on_train_epoch_end`, which saves anyway.
        if batch_idx + 1 < trainer.num_training_batches and self._time_to_save(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)


def find_resumable_checkpoint(
    storage: Storage, hyper_parameters: dict[str, Any], workdir: Path, remove_unusable: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """Downloads the newest checkpoint that loads and matches this run's configuration.

    Args:
        storage: The live location (checkpoints are under `checkpoints/`).
        hyper_parameters: This run's configuration; a checkpoint of another is not resumed.
        workdir: Local directory to download into.
        remove_unusable: Delete a torn or diverged checkpoint from `storage` (global rank 0
            does; the other processes of a distributed run only skip it, as rank 0 does).

    Returns:
        The local checkpoint and its contents, or None to start from scratch.

    Raises:
        RunError: A listed checkpoint could not be fetched (the store refused or is down).
        WriteError: `workdir`'s disk is full, read-only...
    """

    def skip(why: str, unusable: bool = True) -> None:
        """Warns, and drops the checkpoint the loop below is at (`relative`, `local`)."""
        print(f"warning: skipping {why}", file=sys.stderr, flush=True)
        local.unlink(missing_ok=True)
        # Left in place it would stay the newest name, shadowing good checkpoints forever;
        # another configuration's checkpoint is kept for that configuration.
        if unusable and remove_unusable:
            storage.delete(relative)

    # Newest first: the zero-padded names sort by progress.
    for relative in sorted(files_under(storage, CHECKPOINT_DIR), reverse=True):
        local = workdir / Path(relative).name
        try:
            storage.download(relative, local)
        except Exception:
            # Gone since the listing: global rank 0 removed it as unusable, and skips it too.
            # Any other failure to fetch it (the store restarting, a full disk) ends this
            # attempt instead of skipping a checkpoint that may be sound: the retry resumes
            # from it, and every process of a distributed run makes the same choice.
            if relative in files_under(storage, CHECKPOINT_DIR):
                raise
            continue
        try:
            # Our own checkpoint (optimizer and loop state, not only tensors): full unpickling.
            checkpoint = torch.load(local, map_location="cpu", weights_only=False)
            if not {"state_dict", "loops", "global_step"} <= set(checkpoint):
                raise ValueError("not a Lightning training checkpoint")
        except Exception as err:  # a torn or corrupt file: every process skips it alike
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            skip(f"unreadable checkpoint {relative} ({reason}); removing it")
            continue
        # The tensors that hold a NaN or an infinity (an integer tensor is always finite).
        diverged = [
            name
            for name, value in checkpoint["state_dict"].items()
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all())
        ]
        if diverged:
            skip(
                f"checkpoint {relative}: non-finite values in {', '.join(diverged[:3])} (it was "
                "written after training diverged); removing it"
            )
        elif checkpoint.get("hyper_parameters") != hyper_parameters:
            skip(f"checkpoint {relative}: it was written with other parameters", unusable=False)
        else:
            return local, checkpoint
    return None


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
    loaded = RawEventFileLoader(str(path)).Load()
    records = [(record, event_pb2.Event.FromString(record)) for record in loaded]
    kept = [(r, e) for r, e in records if e.HasField("file_version") or e.step < below_step]
    if len(kept) < len(records):
        with atomic_file(path) as tmp, tmp.open("wb") as f:
            writer = RecordWriter(f)
            for record, _ in kept:
                writer.write(record)
    return any(not event.HasField("file_version") for _, event in kept)


def restore_logs(storage: Storage, logs_dir: Path, below_step: int) -> list[str]:
    """Copies an earlier attempt's logs from the live location, cut at `below_step`.

    Event files are cut (see `cut_event_file`); a cut file is written back to the live
    location in place of the old one, and one left without data is removed from both places.
    What is not logs (the checkpoints, the dataset of nodes on other machines, and rank 0's
    published outputs: components/common/run_layout.py) stays where it is.

    Args:
        storage: The run's live location.
        logs_dir: The local directory that becomes the `tensorboard_logs` artifact.
        below_step: The first step training will log again.

    Returns:
        The relative paths now in `logs_dir` that the live location holds as they are.
    """
    restored = []
    for relative in sorted(storage.list_files()):
        if relative.split("/", 1)[0] in (CHECKPOINT_DIR, DATASET, OUTPUTS):
            continue
        local = logs_dir / relative
        storage.download(relative, local)
        if "tfevents" in Path(relative).name:
            before = local.stat().st_size
            if not cut_event_file(local, below_step):
                local.unlink()
                storage.delete(relative)
                continue
            if local.stat().st_size != before:
                storage.upload(local, relative)
        restored.append(relative)
    return restored


def _state(path: Path) -> tuple[int, int]:
    """What tells a file's versions apart here: (size, mtime_ns)."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class LiveSync:
    """Copies new and grown files from `source` to `storage` periodically, in a daemon thread.

    Started at once (its first copy after `interval` seconds), it first prints where the
    copies go and how often.

    Args:
        source: Local directory the loggers write to.
        storage: The live location.
        interval: Seconds between copies.
        label: How to name the destination in messages (its URI).
        already_there: Files of `source` that the live location already holds as they are
            now (restored from it), so they are not sent back.
    """

    def __init__(
        self, source: Path, storage: Storage, interval: float, label: str, already_there: list[str]
    ) -> None:
        self.source, self.storage, self.interval, self.label = source, storage, interval, label
        # relative path -> `_state` when last copied
        self._copied = {relative: _state(source / relative) for relative in already_there}
        self._stop = threading.Event()
        # Copies also run from the training thread (before a checkpoint): one at a time.
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="live-log-sync", daemon=True)
        self._failing = False
        print(f"TensorBoard logs: {label} (updated every {interval:g} s)", flush=True)
        self._thread.start()

    def sync_once(self) -> None:
        """Copies every file that is new or changed since the last copy."""
        with self._lock:
            for path in sorted(p for p in self.source.rglob("*") if p.is_file()):
                relative = path.relative_to(self.source).as_posix()
                state = _state(path)
                previous = self._copied.get(relative)
                if previous == state:
                    continue
                grew = previous is not None and "tfevents" in path.name and state[0] > previous[0]
                self.storage.upload(path, relative, append_from=previous[0] if grew else None)
                self._copied[relative] = state

    def copy(self) -> bool:
        """Copies what changed; a failure is reported once, not raised. Whether it worked."""
        try:
            self.sync_once()
        except Exception as err:  # any storage failure: retried on the next tick
            if not self._failing:
                print(
                    f"warning: copying TensorBoard logs to {self.label} failed ({err}); "
                    f"retrying every {self.interval:g} s",
                    file=sys.stderr,
                    flush=True,
                )
            self._failing = True
        else:
            if self._failing:
                print(f"copying TensorBoard logs to {self.label} works again", flush=True)
            self._failing = False
        return not self._failing

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.copy()

    def stop(self) -> None:
        """Stops the thread and makes a last copy, retried while the store may be restarting.

        Training has succeeded by then and its `tensorboard_logs` artifact holds every point,
        so a last copy that still fails is a warning, not a failed run.
        """
        self._stop.set()
        self._thread.join()
        for pause in FINAL_COPY_PAUSES:
            if self.copy():
                return
            time.sleep(pause)
        if not self.copy():
            print(
                f"warning: the last TensorBoard points did not reach {self.label}; the "
                "tensorboard_logs artifact holds every point",
                file=sys.stderr,
                flush=True,
            )


@contextlib.contextmanager
def live_logging(
    logs_dir: Path,
    run_label: str,
    config: TrainConfig,
    early_steps: int,
    live_logs: LogsLocation | None,
    storage: Storage | None,
    update_seconds: float,
) -> Iterator[tuple[TensorBoardLogger, list[Callback], Path | None]]:
    """Sets up the logger, the live copy and the checkpoints, resuming a lost attempt's run.

    Args:
        logs_dir: The local logs directory (the future `tensorboard_logs` artifact).
        run_label: The folder, and TensorBoard run name, of this run's event files.
        config: The run's parameters: the checkpoint interval, and the hyperparameters that
            recognise a checkpoint of the same configuration (the module saves the same dict).
        early_steps: The trainer's logging interval; every step is logged until the first
            one ends (see `EarlyPoints`).
        live_logs: The run's live location (its URI is for messages); None keeps everything
            local.
        storage: The live location, opened.
        update_seconds: Longest delay before a logged point is readable there.

    Yields:
        The logger, its callbacks (`EarlyPoints`, and `DurableCheckpoints` with a `storage`)
        and the checkpoint file to resume from (None to start over); on exit, whatever
        happened, every point logged so far is copied to the live location (a last copy that
        fails even when retried is a warning: the local directory holds every point).
    """
    # Writer flushes and copies each happen every half period: a point is readable within one.
    half_period = update_seconds / 2
    # Of several processes, global rank 0 alone writes logs and checkpoints; every one of them
    # resumes from the same checkpoint.
    writer = storage is not None and rank_zero_only.rank == 0
    with tempfile.TemporaryDirectory(prefix="resume-") as resume_dir:
        resume = None
        if storage is not None:
            resume = find_resumable_checkpoint(
                storage, config.as_dict(), Path(resume_dir), remove_unusable=writer
            )
        # The first step this run logs (0 when it starts over).
        start_step = int(resume[1]["global_step"]) if resume else 0
        # Everything a lost attempt logged from the resume step on is logged again.
        restored = restore_logs(storage, logs_dir, start_step) if writer else []
        logger = TensorBoardLogger(
            save_dir=str(logs_dir),
            # One folder per run, so TensorBoard names the run after it rather than ".".
            name=run_label,
            version="",
            default_hp_metric=False,
            flush_secs=half_period,
            # A running TensorBoard drops the points a lost attempt logged past the resume step.
            purge_step=start_step if restored else None,
        )
        log_layout(logger)
        sync = LiveSync(logs_dir, storage, half_period, live_logs.uri, restored) if writer else None

        def publish_first_point() -> None:
            """Flushes the event files and copies them to the live location now, or warns."""
            logger.experiment.flush()
            if sync is not None:
                sync.copy()  # a failure only delays the curves: the next copy retries it

        def make_durable() -> None:
            """Flushes the event files and copies them, raising if the copy fails."""
            logger.experiment.flush()
            if sync is not None:
                # Like the checkpoint's own upload: a resume from it must find its points.
                sync.sync_once()

        callbacks: list[Callback] = [EarlyPoints(early_steps, publish_first_point)]
        if storage is not None:
            every_seconds = config.checkpoint_interval_minutes * 60
            callbacks.append(DurableCheckpoints(early_steps, make_durable, storage, every_seconds))
        if resume and writer:
            print(
                f"resuming from {CHECKPOINT_DIR}/{resume[0].name} "
                f"(epoch {resume[1]['epoch'] + 1}, step {resume[1]['global_step']})",
                flush=True,
            )
        try:
            yield logger, callbacks, resume[0] if resume else None
        finally:
            logger.experiment.flush()
            if sync is not None:
                sync.stop()
