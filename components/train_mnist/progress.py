"""Progress reporting that suits where the output goes, and an honest throughput meter.

In a pod, stdout is a log file: a carriage-return progress bar becomes thousands of partial
lines, so `LineProgressBar` prints one complete line every few seconds instead (epoch, step,
loss, samples/s). `make_progress_bar` keeps Lightning's bar for a terminal. `ThroughputMeter`
times only the training batches (validation excluded) and synchronises the device at the edges,
so samples/s is not flattered by queued GPU work.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar

from kfp_lightning.components.train_mnist.model import TEST, VAL, split_metrics, tag


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_size(batch: Any) -> int:
    return int(batch[1].shape[0])


def _metrics(trainer: L.Trainer, split: str) -> str:
    """The split's logged metrics as "loss/val 0.1234 accuracy/val 0.9876", by name."""
    metrics = split_metrics(trainer.callback_metrics, split)
    return " ".join(f"{tag(k, split)} {v:.4f}" for k, v in sorted(metrics.items()))


class LineProgressBar(ProgressBar):
    """Prints a single, complete progress line at most every `interval_seconds`.

    Only those lines read the loss back from the device, so the default of one line every ten
    seconds costs one synchronisation per ten seconds, not one per step.

    Args:
        interval_seconds: Minimum seconds between training progress lines.
    """

    def __init__(self, interval_seconds: float = 10.0) -> None:
        super().__init__()
        self.interval_seconds = interval_seconds
        self._enabled = True
        self._loss: torch.Tensor | None = None
        self._epoch_start: float | None = None
        self._last_line, self._samples = 0.0, 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, flush=True)

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
        self._print(
            f"{self._training_line(trainer, int(self.total_train_batches), time.monotonic())}"
            f" | end of epoch {trainer.current_epoch + 1} {_metrics(trainer, VAL)}".rstrip()
        )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(f"test {_metrics(trainer, TEST)}")


def make_progress_bar(interval_seconds: float) -> ProgressBar:
    """Lightning's bar on a terminal, `LineProgressBar` anywhere else (pod logs, files, pipes)."""
    if sys.stdout.isatty():
        return TQDMProgressBar()
    return LineProgressBar(interval_seconds)


class ThroughputMeter(Callback):
    """Measures training samples per second over the training batches of every epoch.

    Its counts go into checkpoints (Lightning saves a callback's `state_dict`), so a run that
    resumed after a lost pod reports the samples, training time and wall time of its whole
    training, not only of the last attempt.
    """

    def __init__(self) -> None:
        self.samples, self.seconds = 0, 0.0
        self._start: float | None = None
        self._wall_before = 0.0  # wall seconds of earlier attempts, up to their checkpoint
        self._seconds_before = 0.0  # training seconds of earlier attempts
        self._fit_start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

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
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            _synchronize(trainer.strategy.root_device)
            self.seconds += time.perf_counter() - self._start
            self._start = None

    on_validation_start = on_train_epoch_end

    def state_dict(self) -> dict[str, float]:
        running = time.perf_counter() - self._start if self._start is not None else 0.0
        return {
            "samples": self.samples,
            "seconds": self.seconds + running,
            "wall_seconds": self.wall_seconds,
        }

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.samples = int(state_dict["samples"])
        self.seconds = float(state_dict["seconds"])
        self._seconds_before = self.seconds
        self._wall_before = float(state_dict["wall_seconds"])

    @property
    def attempt_seconds(self) -> float:
        """Training seconds of this attempt alone (a resumed one counts from its checkpoint)."""
        return self.seconds - self._seconds_before

    @property
    def wall_seconds(self) -> float:
        """Wall-clock seconds of training so far, earlier attempts included."""
        since = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return self._wall_before + since

    @property
    def samples_per_second(self) -> float:
        """Training samples per second so far (0 before the first epoch ends)."""
        return self.samples / self.seconds if self.seconds else 0.0


class LastValidation(Callback):
    """Keeps the last validation pass's metrics (`{quantity: value}`), in checkpoints too.

    A run resumed from the checkpoint written after its last epoch has nothing left to fit;
    it reports these instead of validating the same weights again.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics = split_metrics(trainer.callback_metrics, VAL)

    def state_dict(self) -> dict[str, dict[str, float]]:
        return {"metrics": dict(self.metrics)}

    def load_state_dict(self, state_dict: dict[str, dict[str, float]]) -> None:
        self.metrics = dict(state_dict["metrics"])


def process_age_seconds() -> float | None:
    """Seconds since this process started, from Linux's /proc; None where that is unknown."""
    try:
        # Field 22 of /proc/self/stat, counted after the parenthesised command name.
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Timeline:
    """Where a training task's time went, printed as one line at the end (pod logs, benchmarks).

    Marks are seconds since the process started (imports included), when the OS tells it.
    """

    def __init__(self) -> None:
        age = process_age_seconds()
        self._origin = time.monotonic() - (age if age is not None else 0.0)
        self.marks: dict[str, float] = {"entry": self.now()}

    def now(self) -> float:
        """Seconds since the process started."""
        return time.monotonic() - self._origin

    def mark(self, name: str) -> None:
        """Records that `name` is reached now."""
        self.marks[name] = self.now()

    def line(self, train_seconds: float) -> str:
        """The breakdown: start-up, training, validation, final evaluation, export (seconds)."""
        m = self.marks
        fit = m["fit_end"] - m["fit_start"]
        parts = {
            "start-up": m["fit_start"],
            "training": train_seconds,
            "validation and loop": fit - train_seconds,
            "final evaluation": m["evaluated"] - m["fit_end"],
            "export": m["exported"] - m["evaluated"],
        }
        return "timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
