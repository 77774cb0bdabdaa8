"""The pytorch/examples MNIST network and its LightningModule.

`Net` is layer for layer the upstream example (two 3x3 convolutions, max-pool, dropout, two fully
connected layers, log-softmax), so its weights and accuracy compare directly with the original.
`MNISTClassifier` adds the training, validation and test steps and the optimiser schedules; it
never calls `.item()` on the hot path, so logging does not synchronise the GPU every step.
Its TensorBoard tags are `quantity/split` (`tag`), and `log_layout` overlays training and
validation on one Custom Scalars chart.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from kfp_lightning.components.common.training import TrainConfig

if TYPE_CHECKING:  # evaluation.py imports this module
    from lightning.pytorch.loggers import TensorBoardLogger

    from kfp_lightning.components.train_mnist.evaluation import EvaluationAccumulator

# TensorBoard tags: quantity/split, so TensorBoard groups each quantity's curves together.
TRAIN, VAL, TEST = "train", "val", "test"
LOSS, ACCURACY = "loss", "accuracy"
LEARNING_RATE = "learning_rate"  # LearningRateMonitor's tag: the scheduler's name

# `TrainConfig.optimizer` -> the torch optimiser and its settings besides the learning rate.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "adadelta": (torch.optim.Adadelta, {}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 1e-4}),
    "sgd": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
}


def tag(quantity: str, split: str) -> str:
    """The TensorBoard tag of `quantity` on `split`, e.g. "loss/val"."""
    return f"{quantity}/{split}"


def split_metrics(metrics: Mapping[str, Any], split: str) -> dict[str, float]:
    """`{quantity: value}` of the logged metrics of `split` (e.g. Lightning's callback_metrics)."""
    suffix = f"/{split}"
    return {k.removesuffix(suffix): float(v) for k, v in metrics.items() if k.endswith(suffix)}


def log_layout(logger: TensorBoardLogger) -> None:
    """Custom Scalars charts: training and validation loss on one chart, accuracies on another.

    Loss and accuracy tags are `quantity/split`, which the Scalars dashboard groups together;
    these charts overlay the splits.
    """
    logger.experiment.add_custom_scalars(
        {
            "training": {
                "loss": ["Multiline", [tag(LOSS, TRAIN), tag(LOSS, VAL), tag(LOSS, TEST)]],
                "accuracy": ["Multiline", [tag(ACCURACY, VAL), tag(ACCURACY, TEST)]],
                "learning rate": ["Multiline", [LEARNING_RATE]],
            }
        }
    )


class Net(nn.Module):
    """The convolutional network of pytorch/examples/mnist (1.2 M parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps normalised images (N x 1 x 28 x 28) to log-probabilities (N x 10)."""
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


class MNISTClassifier(L.LightningModule):
    """Trains `Net` with negative log-likelihood, logging what TensorBoard should show.

    Logged scalars: `loss/train` (every `log_every_n_steps`), `loss/val` and `accuracy/val`
    (each epoch), `loss/test` and `accuracy/test` (the test pass); the learning rate comes
    from `LearningRateMonitor` as `learning_rate`. While `evaluation` holds an
    accumulator, every evaluated batch also goes into it (see `evaluation.py`).

    Args:
        config: The run's configuration (optimiser, schedule, memory layout).
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        # Saved into checkpoints and TensorBoard's hparams, so a run can be traced to its settings.
        self.save_hyperparameters(config.as_dict())
        self.config = config
        self.net = Net().to(memory_format=torch.channels_last) if config.channels_last else Net()
        self.evaluation: EvaluationAccumulator | None = None
        # A channels-last copy of `net` that evaluation passes use on the CPU (see
        # `_start_evaluation`), empty while training. In a tuple, so that it is no submodule:
        # it never enters checkpoints, the parameters or the model summary.
        self._evaluation_net: tuple[nn.Module, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities for a batch of normalised images."""
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        loss = F.nll_loss(self(images), labels)
        # A tensor, not a float: Lightning converts it only on logging steps.
        self.log(tag(LOSS, TRAIN), loss, on_step=True, on_epoch=False, batch_size=labels.shape[0])
        return loss

    def _start_evaluation(self) -> None:
        # On the CPU, oneDNN's channels-last convolutions run this network's forward pass about
        # 1.5-2x as fast (its backward pass is slower, so training keeps the default layout):
        # a copy of the weights in that layout evaluates the validation and test sets, which on
        # the real MNIST's 10,000 test images saves seconds every epoch. The same weights, so
        # the same predictions (log-probabilities agree to about 1e-6). A copy, not the
        # weights themselves converted and back, so training's parameters, their gradients
        # and the optimiser's state never change layout.
        config = self.config
        if self.device.type == "cpu" and not config.channels_last and not config.torch_compile:
            self._evaluation_net = (copy.deepcopy(self.net).to(memory_format=torch.channels_last),)

    def _end_evaluation(self) -> None:
        self._evaluation_net = ()

    on_validation_start = on_test_start = _start_evaluation
    on_validation_end = on_test_end = _end_evaluation

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, split: str):
        images, labels = batch
        if self._evaluation_net:
            (net,) = self._evaluation_net
            log_probs = net(images.contiguous(memory_format=torch.channels_last))
        else:
            log_probs = self(images)
        loss = F.nll_loss(log_probs, labels)
        accuracy = (log_probs.argmax(dim=1) == labels).float().mean()
        # Epoch values are means weighted by batch size, i.e. exact dataset means.
        n = labels.shape[0]
        # Every process evaluates the whole split (see data.py): syncing averages equal values.
        self.log(tag(LOSS, split), loss, on_epoch=True, batch_size=n, sync_dist=True)
        self.log(tag(ACCURACY, split), accuracy, on_epoch=True, batch_size=n, sync_dist=True)
        if self.evaluation is not None:
            # Evaluation batches are in split order, all full but the last.
            self.evaluation.update(log_probs, labels, batch_idx * self.config.eval_batch_size)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, VAL)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, TEST)

    def configure_optimizers(self):
        return build_optimizer(
            self.config, self.net.parameters(), lambda: self.trainer.estimated_stepping_batches
        )


def build_optimizer(
    config: TrainConfig, parameters: Iterable[Any], total_steps: Callable[[], int | float]
) -> dict[str, Any]:
    """Creates the optimiser and scheduler in Lightning's `configure_optimizers` form.

    Args:
        config: Supplies optimizer, lr_schedule, learning_rate and gamma.
        parameters: Model parameters to optimise.
        total_steps: Returns the optimiser steps of the whole run (one-cycle spans exactly
            these); called only when needed, since Lightning must load the data to count them.

    Returns:
        {"optimizer": ..., "lr_scheduler": {...}}; the scheduler is named "learning_rate",
        the tag under which `LearningRateMonitor` logs it.
    """
    optimizer_class, options = OPTIMIZERS[config.optimizer]
    optimizer = optimizer_class(parameters, lr=config.learning_rate, **options)
    if config.lr_schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.gamma)
        interval = "epoch"
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=int(total_steps()), pct_start=0.25
        )
        interval = "step"
    schedule = {"scheduler": scheduler, "interval": interval, "name": LEARNING_RATE}
    return {"optimizer": optimizer, "lr_scheduler": schedule}
