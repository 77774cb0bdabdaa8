"""Progress reporting that suits where the output goes, and an honest throughput meter.

In a pod, stdout is a log file: a carriage-return progress bar becomes thousands of partial
lines, so `LineProgressBar` prints one complete line every few seconds instead (epoch, step,
loss, samples/s). `make_progress_bar` keeps Lightning's bar for a terminal. `ThroughputMeter`
times only the training batches (validation excluded) and synchronises the device at the edges,
so samples/s is not flattered by queued GPU work.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_size(batch: Any) -> int:
    return int(batch[1].shape[0])


class LineProgressBar(ProgressBar):
    """Prints a single, complete progress line at most every `interval_seconds`.

    Only those lines read the loss back from the device, so the default of one line every ten
    seconds costs one synchronisation per ten seconds, not one per step.

    Args:
        interval_seconds: Minimum seconds between training progress lines.
        stream: Where lines go (stdout by default).
    """

    def __init__(self, interval_seconds: float = 10.0, stream: TextIO | None = None) -> None:
        super().__init__()
        self.interval_seconds = interval_seconds
        self.stream = stream
        self._enabled = True
        self._loss: torch.Tensor | None = None
        self._epoch_start: float | None = None
        self._last_line = 0.0
        self._samples = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, file=self.stream or sys.stdout, flush=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Started here, not at epoch start: a run resumed mid-epoch gets no epoch-start hook.
        if self._epoch_start is None:
            self._epoch_start = self._last_line = time.monotonic()
            self._samples = 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._samples += _batch_size(batch)
        self._loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        now = time.monotonic()
        if now - self._last_line >= self.interval_seconds:
            self._last_line = now
            self._print(self._training_line(trainer, batch_idx + 1, now))

    def _training_line(self, trainer: L.Trainer, batches_done: int, now: float) -> str:
        loss = float(self._loss.detach()) if self._loss is not None else float("nan")
        rate = self._samples / max(now - (self._epoch_start or now), 1e-9)
        return (
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} "
            f"batch {batches_done}/{self.total_train_batches} "
            f"step {trainer.global_step} loss {loss:.4f} {rate:.0f} samples/s"
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        detail = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        self._print(
            f"{self._training_line(trainer, int(self.total_train_batches), time.monotonic())}"
            f" | end of epoch {trainer.current_epoch + 1} {detail}".rstrip()
        )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")
        }
        self._print("test " + " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


def make_progress_bar(interval_seconds: float, stream: TextIO | None = None) -> ProgressBar:
    """Lightning's bar on a terminal, `LineProgressBar` anywhere else (pod logs, files, pipes)."""
    if (stream or sys.stdout).isatty():
        return TQDMProgressBar()
    return LineProgressBar(interval_seconds, stream)


class ThroughputMeter(Callback):
    """Measures training samples per second over the training batches of every epoch."""

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._start: float | None = None

    def _stop(self, trainer: L.Trainer) -> None:
        if self._start is not None:
            _synchronize(trainer.strategy.root_device)
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The clock starts at the first batch of each stretch of training (an epoch, or the
        # rest of one after a mid-epoch resume) and stops before validation.
        if self._start is None:
            _synchronize(trainer.strategy.root_device)
            self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.samples += _batch_size(batch) * trainer.world_size

    # Lightning runs validation before `on_train_epoch_end`; stop the clock at whichever is first.
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer)

    @property
    def samples_per_second(self) -> float:
        """Training samples per second so far (0 before the first epoch ends)."""
        return self.samples / self.seconds if self.seconds else 0.0
