"""Progress reporting that suits where the output goes, and an honest throughput meter.

In a pod, stdout is a log file: a carriage-return progress bar becomes thousands of partial
lines, so `LineProgressBar` prints one complete line every few seconds instead (epoch, step,
loss, samples/s). `make_progress_bar` keeps Lightning's bar for a terminal. `ThroughputMeter`
times only the training batches (validation excluded) and synchronises the device at the edges,
so samples/s is not flattered by queued GPU work.

A learning rate far too high (or fp16 overflowing) turns the loss into NaN or infinity; left
alone, Lightning trains on for hours, the metrics hold NaN, and NaN is not JSON, so the run
fails at the very end, deep in KFP's output code. `DivergenceGuard` checks every training loss
and every validation and test metric, and raises `TrainingDivergedError` (a `RunError`: exit
status 1, one line) at the first non-finite value, before a checkpoint can keep it. The check
costs no GPU synchronisation per step: each step records whether its loss was finite in a
small buffer on the device, which the host reads once every `check_every_n_steps` steps, and
before every validation pass and checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.model import LOSS, TEST, TRAIN, VAL, split_metrics, tag


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        self._samples += len(batch[1])
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
        self._epoch_start = None  # the next epoch's first batch starts it again

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
        # Counted as the batch starts: every hook that reads the count (a checkpoint's
        # `state_dict`, the end of the epoch) runs after the batch has trained.
        self.samples += len(batch[1]) * trainer.world_size

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


def process_start() -> float:
    """The `time.monotonic()` reading when this process started (imports included).

    From Linux's /proc; now, where that is unknown.
    """
    try:
        # Field 22 of /proc/self/stat, counted after the parenthesised command name.
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.monotonic() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def timing_line(marks: dict[str, float], train_seconds: float) -> str:
    """Where a training task's time went, as one line for the end of it (pod logs, benchmarks).

    Args:
        marks: `time.monotonic()` readings: "start" (the process's, see `process_start`),
            "fit_start", "fit_end", "evaluated" and "exported".
        train_seconds: The training batches' seconds.

    Returns:
        The breakdown: start-up, training, validation, final evaluation, export (seconds).
    """
    parts = {
        "start-up": marks["fit_start"] - marks["start"],
        "training": train_seconds,
        "validation and loop": marks["fit_end"] - marks["fit_start"] - train_seconds,
        "final evaluation": marks["evaluated"] - marks["fit_end"],
        "export": marks["exported"] - marks["evaluated"],
    }
    return "timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())


class TrainingDivergedError(RunError):
    """A loss or metric became NaN or infinite; the message names where and the likely fix."""


def non_finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries of `metrics` (numbers or one-element tensors) that are NaN or infinite."""
    return {name: float(value) for name, value in metrics.items() if not math.isfinite(value)}


class DivergenceGuard(Callback):
    """Raises `TrainingDivergedError` at the first non-finite loss or evaluation metric.

    Args:
        hint: What to change, in words (e.g. the learning rate and optimiser in use and the
            recipes' values); appended to the error message.
        check_every_n_steps: Steps between two reads of the finiteness buffer on the host.
    """

    def __init__(self, hint: str, check_every_n_steps: int = 50) -> None:
        self.hint = hint
        self.check_every_n_steps = max(1, check_every_n_steps)
        # (loss, step, epoch) of each training step since the last check; the losses stay on
        # the device: no synchronisation until `check` reads them.
        self._steps: list[tuple[torch.Tensor, int, int]] = []

    def _fail(self, what: str, where: str) -> None:
        raise TrainingDivergedError(f"training diverged: {what} {where}; {self.hint}")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        # global_step already counts this batch's optimiser step; TensorBoard shows the loss
        # at the step before it.
        step = (loss.detach().float().reshape(()), trainer.global_step - 1, trainer.current_epoch)
        self._steps.append(step)
        if len(self._steps) == self.check_every_n_steps:
            self.check(trainer)

    def check(self, trainer: L.Trainer, *hook_args: Any) -> None:
        """Reads the recorded losses; raises at the first non-finite one.

        With several processes every one of them checks at the same steps and they agree
        (any process's bad loss stops all of them), so none is left waiting for the others.
        Also the hook at each epoch's end, before each validation pass, and before each
        checkpoint: a checkpoint holds the weights a retry would resume from, never a diverged
        state.
        """
        steps, self._steps = self._steps, []
        losses = torch.stack([loss for loss, _, _ in steps]) if steps else torch.zeros(0)
        finite = torch.isfinite(losses)
        local_bad = not bool(finite.all())
        # One process's decision as it is; several processes' combined (Lightning's DDP).
        if not trainer.strategy.reduce_boolean_decision(local_bad, all=False):
            return
        if not local_bad:
            self._fail(f"{tag(LOSS, TRAIN)} not finite", "in another training process")
        loss, step, epoch = steps[int((~finite).nonzero()[0])]
        self._fail(f"{tag(LOSS, TRAIN)}={float(loss)}", f"at step {step} (epoch {epoch + 1})")

    on_train_epoch_end = on_validation_start = on_save_checkpoint = check

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        split = TEST if trainer.testing else VAL
        if bad := non_finite(split_metrics(trainer.callback_metrics, split)):
            what = ", ".join(f"{tag(name, split)}={value}" for name, value in sorted(bad.items()))
            self._fail(what, f"after epoch {trainer.current_epoch + 1}")

    on_test_end = on_validation_end


def divergence_hint(config: TrainConfig) -> str:
    """The parameters most likely at fault, with values known to train this network.

    Args:
        config: The run's parameters (its learning rate, optimiser and precision matter).

    Returns:
        One sentence for the error message.
    """
    hint = (
        f"lower learning_rate (now {config.learning_rate:g} with optimizer={config.optimizer}; "
        "the classic recipe trains with 1.0 and adadelta, the fast one with 0.005 and adamw)"
    )
    if config.precision == "16-mixed":
        hint += " or use precision=bf16-mixed or 32-true (16-mixed can overflow)"
    return hint
