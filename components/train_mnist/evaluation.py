"""The final evaluation's details: a confusion matrix, the most confident mistakes, examples.

Accuracy says how often the network is wrong; a person deciding whether to trust it also wants
to see *how*: which digits it confuses, and the images it gets wrong while being sure of
itself. `CollectEvaluation` gathers that during the run's final evaluation pass, the one that
produces the test metrics (the last validation pass when validation runs on the test set, the
test pass otherwise), so no image is evaluated twice. Every image's outcome (four numbers)
stays on the device until the pass ends: no batch waits for the host. Its result goes into
checkpoints, so a run resumed after its last epoch still has it, as does the last validation
pass's metrics. The evaluation, the run's parameters and its final metrics also go to
TensorBoard (the Text, Images and HParams dashboards), and the events go into a folder named
after the pipeline run (`run_folder_name`), which TensorBoard names the run after.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.tensorboard.summary import hparams

from kfp_lightning.components.common import evaluation as schema
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.model import TEST, VAL, split_metrics, tag

CLASSES = 10
MISTAKES = 24  # most confidently misclassified test images kept
EXAMPLES_PER_CLASS = 2  # correctly classified test images kept per digit


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One test image's outcome.

    Attributes:
        index: Position in the test split.
        label: True digit.
        predicted: Predicted digit.
        confidence: Probability the network gave `predicted`, in [0, 1].
    """

    index: int
    label: int
    predicted: int
    confidence: float


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What the final evaluation pass saw.

    Attributes:
        confusion_matrix: 10 x 10 counts; row = true digit, column = predicted digit.
        mistakes: The most confidently misclassified images, most confident first.
        examples: Correctly classified images, `EXAMPLES_PER_CLASS` per digit where the split
            has them, by digit.
    """

    confusion_matrix: list[list[int]]
    mistakes: list[Prediction]
    examples: list[Prediction]


class EvaluationAccumulator:
    """Every evaluated image's outcome, kept on the device of the predictions until the end."""

    def __init__(self) -> None:
        # Per batch, its columns in `Prediction`'s field order: index, label, predicted,
        # confidence.
        self._batches: list[tuple[torch.Tensor, ...]] = []

    def update(self, log_probs: torch.Tensor, labels: torch.Tensor, first_index: int) -> None:
        """Adds one batch (no host sync).

        Args:
            log_probs: N x 10 log-probabilities.
            labels: N true digits.
            first_index: Position of the batch's first image in the split.
        """
        confidence, predicted = log_probs.detach().float().exp().max(dim=1)
        index = torch.arange(labels.shape[0], device=labels.device) + first_index
        self._batches.append((index, labels, predicted, confidence))

    def result(self) -> Evaluation:
        """The pass's evaluation (reads the device)."""
        if not self._batches:  # a pass without batches: nothing counted, nothing to show
            return Evaluation([[0] * CLASSES for _ in range(CLASSES)], [], [])
        columns = [torch.cat(column) for column in zip(*self._batches, strict=True)]
        _, labels, predicted, confidence = columns
        counts = torch.bincount(labels * CLASSES + predicted, minlength=CLASSES * CLASSES)
        wrong = predicted != labels
        # The most confident mistakes first; equally confident ones in split order.
        ranked = torch.argsort(confidence[wrong], descending=True, stable=True)[:MISTAKES]
        mistakes = _predictions(*(column[wrong][ranked] for column in columns))
        # Correct examples: the first few per digit, in split order.
        examples: dict[int, list[Prediction]] = {digit: [] for digit in range(CLASSES)}
        for p in _predictions(*(column[~wrong] for column in columns)):
            if len(examples[p.label]) < EXAMPLES_PER_CLASS:
                examples[p.label].append(p)
        matrix = counts.view(CLASSES, CLASSES).tolist()
        return Evaluation(matrix, mistakes, [p for digit in examples.values() for p in digit])


def _predictions(*columns: torch.Tensor) -> list[Prediction]:
    """Rows of (index, label, predicted, confidence) tensors as `Prediction`s (one device read)."""
    # `tolist` gives Python ints for the integer columns and floats for the confidence.
    return [Prediction(*row) for row in zip(*(c.tolist() for c in columns), strict=True)]


class CollectEvaluation(Callback):
    """Gathers an `Evaluation` during the pass that yields the test metrics.

    It also keeps the last validation pass's metrics (`validation`, `{quantity: value}`): a
    run resumed from the checkpoint written after its last epoch has nothing left to fit, and
    reports these instead of validating the same weights again.

    Args:
        on_test_set_validation: The validation split is the test set: collect during the last
            epoch's validation pass (the test metrics come from it). Otherwise collect during
            the test pass.
    """

    def __init__(self, on_test_set_validation: bool) -> None:
        self.on_test_set_validation = on_test_set_validation
        self.evaluation: Evaluation | None = None
        self.validation: dict[str, float] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_test_set_validation and trainer.current_epoch == trainer.max_epochs - 1:
            pl_module.evaluation = EvaluationAccumulator()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.on_test_set_validation:
            pl_module.evaluation = EvaluationAccumulator()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.evaluation is not None:
            self.evaluation = pl_module.evaluation.result()
            pl_module.evaluation = None

    on_test_epoch_end = on_validation_epoch_end

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation = split_metrics(trainer.callback_metrics, VAL)

    def state_dict(self) -> dict[str, Any]:
        evaluation = dataclasses.asdict(self.evaluation) if self.evaluation else None
        return {"evaluation": evaluation, "validation": dict(self.validation)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validation = dict(state_dict.get("validation", {}))
        if saved := state_dict.get("evaluation"):
            self.evaluation = Evaluation(
                saved["confusion_matrix"],
                [Prediction(**p) for p in saved["mistakes"]],
                [Prediction(**p) for p in saved["examples"]],
            )


def evaluation_document(
    evaluation: Evaluation, test_images: torch.Tensor, run: dict[str, Any]
) -> dict[str, Any]:
    """The content of `evaluation.json`, the report's input, checked against its schema.

    Args:
        evaluation: The final evaluation.
        test_images: The split's images as uint8, N x 28 x 28, on the CPU.
        run: Run facts for the report's header: the fields of `schema.RunInfo` (name, device,
            headline numbers, parameters).

    Returns:
        A JSON-ready dict in format `schema.FORMAT`.

    Raises:
        pydantic.ValidationError: Something the report would reject (a bug, not an input).
    """

    def sample(p: Prediction) -> dict[str, Any]:
        return {**dataclasses.asdict(p), "pixels": test_images[p.index].tolist()}

    document = schema.Evaluation(
        format=schema.FORMAT,
        split="test",
        samples=sum(map(sum, evaluation.confusion_matrix)),
        labels=[str(digit) for digit in range(CLASSES)],
        confusion_matrix=evaluation.confusion_matrix,
        mistakes=[sample(p) for p in evaluation.mistakes],
        examples=[sample(p) for p in evaluation.examples],
        run=run,
    )
    return document.model_dump(mode="json")


def run_folder_name(run_name: str) -> str:
    """The folder (and so TensorBoard's run name) for a run's event files.

    TensorBoard names a run after the folder holding its event files: never the logs root
    itself ("." in TensorBoard's run list).

    Args:
        run_name: The pipeline run's display name (KFP's `PIPELINE_JOB_NAME_PLACEHOLDER`: the
            name shown in the Kubeflow run list; `kfp.local` gives the pipeline name and the
            start time).

    Returns:
        The name with every run of characters an object key or path segment should not hold
        replaced by "-", at most 100 characters; "training" when nothing is left.
    """
    slug = re.sub(r"[^A-Za-z0-9._=+@,-]+", "-", run_name.strip()).strip("-.")[:100].strip("-.")
    return slug or "training"


def image_grid(test_images: torch.Tensor, predictions: list[Prediction]) -> torch.Tensor:
    """The predictions' images side by side, 3 x H x W float in [0, 1] for `add_image`."""
    from torchvision.utils import make_grid

    if not predictions:
        return torch.zeros(3, 28, 28)
    batch = torch.stack([test_images[p.index] for p in predictions]).unsqueeze(1).float() / 255
    return make_grid(batch, nrow=min(len(predictions), 8), padding=2, pad_value=0.5)


def log_results(
    trainer: L.Trainer,
    collected: CollectEvaluation,
    test_images: torch.Tensor,
    config: TrainConfig,
    test: dict[str, float],
) -> None:
    """The evaluation, and the run's parameters and final metrics, for TensorBoard.

    The Text dashboard gets the confusion matrix (a Markdown table), the Images dashboard the
    most confident mistakes and a few correct examples, and the HParams dashboard the
    parameters and final metrics, so runs under one root compare by parameter. Those metrics
    are the tags already logged (the dashboard reads each tag's last value), so nothing is
    logged twice; they are written the way Lightning's own `log_hyperparams` writes them
    (lightning/fabric/loggers/tensorboard.py), without the extra step-0 points it logs.

    Args:
        trainer: The run's trainer: its logger writes them, at its last step.
        collected: What the run collected: the final evaluation and validation metrics.
        test_images: The test split as uint8, N x 28 x 28, on the CPU.
        config: The parameters.
        test: Final test metrics, by quantity.
    """
    writer, step, evaluation = trainer.logger.experiment, trainer.global_step, collected.evaluation
    header = "| true \\ predicted | " + " | ".join(str(d) for d in range(CLASSES)) + " |"
    rows = [
        f"| **{digit}** | " + " | ".join(str(n) for n in row) + " |"
        for digit, row in enumerate(evaluation.confusion_matrix)
    ]
    confusion = "\n".join([header, "|" + "---|" * (CLASSES + 1), *rows])
    writer.add_text("evaluation/confusion_matrix", confusion, step)
    mistakes = ", ".join(
        f"{p.label}→{p.predicted} ({p.confidence:.0%})" for p in evaluation.mistakes
    )
    writer.add_text("evaluation/mistakes", f"true→predicted (confidence): {mistakes}", step)
    writer.add_image("evaluation/mistakes", image_grid(test_images, evaluation.mistakes), step)
    writer.add_image(
        "evaluation/correct_examples", image_grid(test_images, evaluation.examples), step
    )
    parameters: dict[str, Any] = {
        k: v if isinstance(v, (bool, int, float, str)) else str(v)
        for k, v in config.as_dict().items()
    }
    splits = ((TEST, test), (VAL, collected.validation))
    metrics = {tag(k, split): v for split, values in splits for k, v in values.items()}
    # The experiment, session-start and session-end summaries.
    for summary in hparams(parameters, metrics):
        writer._get_file_writer().add_summary(summary)
