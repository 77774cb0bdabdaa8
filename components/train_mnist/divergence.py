"""Stop a diverged run at once, with one line that says where and what to change.

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
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.model import LOSS, TEST, TRAIN, VAL, split_metrics, tag


class TrainingDivergedError(RunError):
    """A loss or metric became NaN or infinite; the message names where and the likely fix."""


def non_finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries of `metrics` (numbers or one-element tensors) that are NaN or infinite."""
    numbers = {name: float(value) for name, value in metrics.items()}
    return {name: number for name, number in numbers.items() if not math.isfinite(number)}


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

    def check(self, trainer: L.Trainer) -> None:
        """Reads the recorded losses; raises at the first non-finite one.

        With several processes every one of them checks at the same steps and they agree
        (any process's bad loss stops all of them), so none is left waiting for the others.
        """
        steps, self._steps = self._steps, []
        losses = torch.stack([loss for loss, _, _ in steps]) if steps else torch.zeros(0)
        finite = torch.isfinite(losses)
        local_bad = not bool(finite.all())
        bad = local_bad
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(local_bad, all=False)
        if not bad:
            return
        if not local_bad:
            self._fail(f"{tag(LOSS, TRAIN)} not finite", "in another training process")
        loss, step, epoch = steps[int((~finite).nonzero()[0])]
        self._fail(f"{tag(LOSS, TRAIN)}={float(loss)}", f"at step {step} (epoch {epoch + 1})")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    on_validation_start = on_train_epoch_end

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # A checkpoint holds the weights a retry would resume from: never a diverged state.
        self.check(trainer)

    def _check_evaluation(self, trainer: L.Trainer, split: str) -> None:
        if bad := non_finite(split_metrics(trainer.callback_metrics, split)):
            what = ", ".join(f"{tag(name, split)}={value}" for name, value in sorted(bad.items()))
            self._fail(what, f"after epoch {trainer.current_epoch + 1}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_evaluation(trainer, VAL)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_evaluation(trainer, TEST)


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
