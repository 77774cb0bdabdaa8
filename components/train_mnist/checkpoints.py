"""Durable checkpoints, and resuming from them after a lost pod.

GPU nodes are often preemptible: the pod can vanish at any step. `DurableCheckpoints` writes a
Lightning checkpoint at the end of every epoch and, within an epoch, whenever `every_seconds`
have passed, to storage that outlives the pod (the run's live logs location), keeping the
newest few. A restarted task (KFP's retry, same run id) calls `find_resumable_checkpoint`,
which takes the newest checkpoint that loads and belongs to the same configuration, skipping a
corrupt one with a warning, so the run continues where it stopped instead of starting over.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from kfp_lightning.components.common.storage import Storage

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step=(\d+)-epoch=(\d+)\.ckpt")


def checkpoint_name(step: int, epoch: int) -> str:
    """File name of a checkpoint; zero-padded so names sort by progress."""
    return f"step={step:09d}-epoch={epoch:05d}.ckpt"


class DurableCheckpoints(Callback):
    """Saves full training state to `storage` every epoch and every `every_seconds`.

    Each checkpoint is written locally, then uploaded in one piece (an object PUT, or a
    rename on a filesystem), so a reader never sees half of one.

    Args:
        storage: Where checkpoints go (the `checkpoints/` folder of the live location).
        every_seconds: Longest training time between two checkpoints within an epoch.
        keep: How many of the newest checkpoints to keep.
        before_upload: Called before each upload; makes everything logged so far durable
            too, so a resumed run's curves have no gap before the checkpoint's step.
    """

    def __init__(
        self,
        storage: Storage,
        every_seconds: float,
        keep: int = 2,
        before_upload: Callable[[], object] | None = None,
    ) -> None:
        self.storage, self.every_seconds, self.keep = storage, every_seconds, keep
        self.before_upload = before_upload
        self._last = time.monotonic()
        self.saved: list[str] = []

    def _save(self, trainer: L.Trainer) -> None:
        name = checkpoint_name(trainer.global_step, trainer.current_epoch)
        with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
            local = Path(tmp) / name
            trainer.save_checkpoint(local, weights_only=False)
            if self.before_upload is not None:
                self.before_upload()
            self.storage.upload(local, f"{CHECKPOINT_DIR}/{name}")
        self.saved.append(name)
        self._last = time.monotonic()
        existing = sorted(
            p for p in self.storage.list_files() if p.startswith(f"{CHECKPOINT_DIR}/")
        )
        for old in existing[: -self.keep]:
            self.storage.delete(old)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if not last_batch and time.monotonic() - self._last >= self.every_seconds:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def find_resumable_checkpoint(
    storage: Storage, hyper_parameters: dict[str, Any], workdir: Path
) -> tuple[Path, dict[str, Any]] | None:
    """Downloads the newest checkpoint that loads and matches this run's configuration.

    Args:
        storage: The live location (checkpoints are under `checkpoints/`).
        hyper_parameters: This run's configuration; a checkpoint of another is not resumed.
        workdir: Local directory to download into.

    Returns:
        The local checkpoint and its contents, or None to start from scratch.
    """
    names = sorted(
        (p for p in storage.list_files() if p.startswith(f"{CHECKPOINT_DIR}/")), reverse=True
    )
    for relative in names:
        local = workdir / Path(relative).name
        try:
            storage.download(relative, local)
            # Our own checkpoint (optimizer and loop state, not only tensors): full unpickling.
            checkpoint = torch.load(local, map_location="cpu", weights_only=False)
            if not {"state_dict", "loops", "global_step"} <= set(checkpoint):
                raise ValueError("not a Lightning training checkpoint")
        except Exception as err:  # a torn or corrupt file: try the next older one
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            _warn(f"skipping unreadable checkpoint {relative} ({reason}); removing it")
            local.unlink(missing_ok=True)
            # Left in place it would stay the newest name, shadowing good checkpoints forever.
            storage.delete(relative)
            continue
        if checkpoint.get("hyper_parameters") != hyper_parameters:
            _warn(f"skipping checkpoint {relative}: it was written with other parameters")
            local.unlink(missing_ok=True)
            continue
        return local, checkpoint
    return None
