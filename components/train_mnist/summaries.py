"""What TensorBoard shows beyond the curves: the run's name, overlaid charts, HParams, mistakes.

TensorBoard names a run after the folder holding its event files, so the events go into a
folder named after the pipeline run (`run_folder_name`), never the logs root itself ("." in
TensorBoard's run list). Loss and accuracy tags are `quantity/split`, which TensorBoard's
Scalars dashboard groups together; a Custom Scalars layout overlays training and validation
on one chart. At the end, the HParams dashboard gets the run's parameters and final metrics
(so runs under one root compare by parameter), the Text dashboard the confusion matrix, and
the Images dashboard the most confident mistakes and a few correct examples.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.evaluation import CLASSES, Evaluation, Prediction
from kfp_lightning.components.train_mnist.model import (
    ACCURACY,
    LEARNING_RATE,
    LOSS,
    TEST,
    TRAIN,
    VAL,
    tag,
)

DEFAULT_RUN_FOLDER = "training"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@,-]+")


def run_folder_name(run_name: str) -> str:
    """The folder (and so TensorBoard's run name) for a run's event files.

    Args:
        run_name: The pipeline run's display name (KFP's `PIPELINE_JOB_NAME_PLACEHOLDER`: the
            name shown in the Kubeflow run list; `kfp.local` gives the pipeline name and the
            start time).

    Returns:
        The name with every run of characters an object key or path segment should not hold
        replaced by "-", at most 100 characters; `DEFAULT_RUN_FOLDER` when nothing is left.
    """
    slug = _UNSAFE.sub("-", run_name.strip()).strip("-.")[:100].strip("-.")
    return slug or DEFAULT_RUN_FOLDER


def log_layout(logger: TensorBoardLogger) -> None:
    """Custom Scalars charts: training and validation loss on one chart, accuracies on another."""
    logger.experiment.add_custom_scalars(
        {
            "training": {
                "loss": ["Multiline", [tag(LOSS, TRAIN), tag(LOSS, VAL), tag(LOSS, TEST)]],
                "accuracy": ["Multiline", [tag(ACCURACY, VAL), tag(ACCURACY, TEST)]],
                "learning rate": ["Multiline", [LEARNING_RATE]],
            }
        }
    )


def confusion_markdown(evaluation: Evaluation) -> str:
    """The confusion matrix as a Markdown table (TensorBoard's Text dashboard renders it)."""
    header = "| true \\ predicted | " + " | ".join(str(d) for d in range(CLASSES)) + " |"
    rule = "|" + "---|" * (CLASSES + 1)
    rows = [
        f"| **{digit}** | " + " | ".join(str(n) for n in row) + " |"
        for digit, row in enumerate(evaluation.confusion_matrix)
    ]
    return "\n".join([header, rule, *rows])


def image_grid(test_images: torch.Tensor, predictions: list[Prediction]) -> torch.Tensor:
    """The predictions' images side by side, 3 x H x W float in [0, 1] for `add_image`."""
    from torchvision.utils import make_grid

    if not predictions:
        return torch.zeros(3, 28, 28)
    batch = torch.stack([test_images[p.index] for p in predictions]).unsqueeze(1).float() / 255
    return make_grid(batch, nrow=min(len(predictions), 8), padding=2, pad_value=0.5)


def log_evaluation(
    logger: TensorBoardLogger, evaluation: Evaluation | None, test_images: torch.Tensor, step: int
) -> None:
    """The confusion matrix (Text dashboard) and the mistakes and examples (Images dashboard).

    Args:
        logger: The run's logger.
        evaluation: The final evaluation; None logs nothing.
        test_images: The test split as uint8, N x 28 x 28, on the CPU.
        step: The step to log them at (the last).
    """
    if evaluation is None:
        return
    writer = logger.experiment
    writer.add_text("evaluation/confusion_matrix", confusion_markdown(evaluation), step)
    mistakes = ", ".join(
        f"{p.label}→{p.predicted} ({p.confidence:.0%})" for p in evaluation.mistakes
    )
    writer.add_text("evaluation/mistakes", f"true→predicted (confidence): {mistakes}", step)
    writer.add_image("evaluation/mistakes", image_grid(test_images, evaluation.mistakes), step)
    writer.add_image(
        "evaluation/correct_examples", image_grid(test_images, evaluation.examples), step
    )


def log_hyperparameters(
    logger: TensorBoardLogger,
    config: TrainConfig,
    test: dict[str, float],
    validation: dict[str, float],
) -> None:
    """The run's parameters and final metrics for TensorBoard's HParams dashboard.

    The metrics are the tags already logged (the dashboard reads each tag's last value), so
    nothing is logged twice. Written the way Lightning's own `log_hyperparams` writes them
    (lightning/fabric/loggers/tensorboard.py), without the extra step-0 points it logs.

    Args:
        logger: The run's logger.
        config: The parameters.
        test: Final test metrics, by quantity.
        validation: Final validation metrics, by quantity.
    """
    parameters: dict[str, Any] = {
        k: v if isinstance(v, (bool, int, float, str)) else str(v)
        for k, v in config.as_dict().items()
    }
    splits = ((TEST, test), (VAL, validation))
    metrics = {tag(k, split): v for split, values in splits for k, v in values.items()}
    writer = logger.experiment._get_file_writer()
    # The experiment, session-start and session-end summaries.
    for summary in hparams(parameters, metrics):
        writer.add_summary(summary)
