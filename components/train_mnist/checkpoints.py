"""Durable checkpoints, and resuming from them after a lost pod.

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
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from kfp_lightning.components.common.files import reported_write_faults
from kfp_lightning.components.common.run_layout import files_under
from kfp_lightning.components.common.storage import Storage

CHECKPOINT_DIR = "checkpoints"
KEEP = 2  # how many of the newest checkpoints the location keeps


def checkpoint_name(step: int, epoch: int) -> str:
    """File name of a checkpoint; zero-padded so names sort by progress."""
    return f"step={step:09d}-epoch={epoch:05d}.ckpt"


class DurableCheckpoints(Callback):
    """Saves full training state to `storage` every epoch and every `every_seconds`.

    Each checkpoint is written locally, then uploaded in one piece (an object PUT, or a
    rename on a filesystem), so a reader never sees half of one. With several processes every
    one of them takes part in each save (Lightning's `save_checkpoint` is collective; global
    rank 0 writes the file), and only rank 0 uploads. Whether the time has come is decided by
    rank 0 and sent to the others every `every_n_steps` steps, since each process's
    clock would decide differently and leave the others waiting. The newest `KEEP` are kept.

    Args:
        storage: Where checkpoints go (the `checkpoints/` folder of the live location).
        every_seconds: Longest training time between two checkpoints within an epoch.
        before_upload: Called before each upload; makes everything logged so far durable
            too, so a resumed run's curves have no gap before the checkpoint's step.
        every_n_steps: The trainer's logging interval (every step is logged up to it), which
            is also the number of steps between two decisions of whether to save, with
            several processes (one process decides every step).
    """

    def __init__(
        self,
        storage: Storage,
        every_seconds: float,
        before_upload: Callable[[], object],
        every_n_steps: int,
    ) -> None:
        self.storage, self.every_seconds = storage, every_seconds
        self.before_upload = before_upload
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
                self.before_upload()
                self.storage.upload(local, f"{CHECKPOINT_DIR}/{name}")
        self._last = time.monotonic()
        if trainer.is_global_zero:
            for old in sorted(files_under(self.storage, CHECKPOINT_DIR))[:-KEEP]:
                self.storage.delete(old)

    def _point_pending(self, trainer: L.Trainer) -> bool:
        # Lightning hands a step's loss to the logger after `on_train_batch_end`. A checkpoint
        # taken at a step whose point is still to come would be one point ahead of the logs
        # made durable with it, and a resume from it would lose that point: such a step waits
        # for the next. (The same on every process: it depends on the step alone.)
        step, every = trainer.global_step, self.every_n_steps
        return every > 1 and (step <= every or step % every == 0)

    def _time_to_save(self, trainer: L.Trainer) -> bool:
        if self._point_pending(trainer):
            return False
        due = time.monotonic() - self._last >= self.every_seconds
        if trainer.world_size == 1:
            return due
        if (trainer.global_step - 1) % self.every_n_steps:
            return False
        return bool(trainer.strategy.broadcast(due, src=0))

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


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in `state_dict` that hold a NaN or an infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def find_resumable_checkpoint(
    storage: Storage,
    hyper_parameters: dict[str, Any],
    workdir: Path,
    remove_unusable: bool = True,
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
            # Our own checkpoint (optimizer and loop state, not only tensors): full unpickling.
            checkpoint = torch.load(local, map_location="cpu", weights_only=False)
            if not {"state_dict", "loops", "global_step"} <= set(checkpoint):
                raise ValueError("not a Lightning training checkpoint")
        except Exception as err:  # a torn or corrupt file: try the next older one
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            skip(f"unreadable checkpoint {relative} ({reason}); removing it")
            continue
        if diverged := non_finite_tensors(checkpoint["state_dict"]):
            skip(
                f"checkpoint {relative}: non-finite values in {', '.join(diverged[:3])} (it was "
                "written after training diverged); removing it"
            )
        elif checkpoint.get("hyper_parameters") != hyper_parameters:
            skip(f"checkpoint {relative}: it was written with other parameters", unusable=False)
        else:
            return local, checkpoint
    return None
