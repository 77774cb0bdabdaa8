"""The `evaluation.json` format (`kfp-lightning/evaluation-v1`): one schema for writer and reader.

Training writes what its final evaluation pass saw (a confusion matrix, the most confidently
misclassified images, a few correctly classified ones per class) and the run's headline numbers
(train_mnist/evaluation.py); the report reads it (report_training/report.py). Both go
through these models, so a file training writes is one the report accepts, and the report
trusts nothing else: types, ranges and shapes are checked in strict mode (no string for a
number, no bool for an integer, no NaN), then the fields against each other.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

FORMAT = "kfp-lightning/evaluation-v1"
FILE_NAME = "evaluation.json"
MAX_IMAGE_SIDE = 64  # MNIST images are 28 x 28; anything much larger is not an MNIST image

Count = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)]
Row = Annotated[
    list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=1, max_length=MAX_IMAGE_SIDE)
]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, allow_inf_nan=False)


def _inconsistent(where: str, expected: str, found: object) -> PydanticCustomError:
    # The message names the field itself: these checks span fields, so pydantic's location
    # would be the whole file.
    context = {"where": where, "expected": expected, "found": str(found)}
    return PydanticCustomError(
        "inconsistent", "{where}: expected {expected}, found {found}", context
    )


class Sample(_Model):
    """One evaluated image.

    Attributes:
        index: Position in the evaluated split.
        label: True class, an index into `Evaluation.labels`.
        predicted: Predicted class, an index into `Evaluation.labels`.
        confidence: Probability the network gave `predicted`, in [0, 1].
        pixels: Grey levels 0-255, rows of equal length (28 x 28 for MNIST).
    """

    index: Count
    label: Count
    predicted: Count
    confidence: Fraction
    pixels: Annotated[list[Row], Field(min_length=1, max_length=MAX_IMAGE_SIDE)]


class RunInfo(_Model):
    """The run's headline numbers and parameters. A number is None where training had none.

    Attributes:
        name: Human-readable name of the run.
        device: What trained it, e.g. "cpu" or "NVIDIA H200".
        epochs: Epochs trained.
        test_accuracy: Accuracy on the test split, in [0, 1].
        test_loss: Mean loss on the test split.
        train_seconds: Time spent training, in seconds.
        train_samples_per_second: Training throughput.
        parameters: The run's parameters, name -> JSON value.
    """

    name: str
    device: str
    epochs: Count | None
    test_accuracy: Fraction | None
    test_loss: NonNegative | None
    train_seconds: NonNegative | None
    train_samples_per_second: NonNegative | None
    parameters: dict[str, Any]


class Evaluation(_Model):
    """The content of an `evaluation.json`.

    Attributes:
        format: Always `FORMAT`.
        split: The evaluated split, e.g. "test".
        samples: Images evaluated; the confusion matrix sums to it.
        labels: Class names, in class-index order.
        confusion_matrix: Counts, rows = true class, columns = predicted class.
        mistakes: Misclassified images, most confident first.
        examples: Correctly classified images.
        run: The run's headline numbers and parameters.
    """

    format: Literal["kfp-lightning/evaluation-v1"]
    split: str
    samples: Count
    labels: Annotated[list[str], Field(min_length=1)]
    confusion_matrix: list[list[Count]]
    mistakes: list[Sample]
    examples: list[Sample]
    run: RunInfo

    @model_validator(mode="after")
    def _consistent(self) -> Evaluation:
        classes = len(self.labels)
        if len(self.confusion_matrix) != classes:
            raise _inconsistent("confusion_matrix", f"{classes} rows", len(self.confusion_matrix))
        for r, row in enumerate(self.confusion_matrix):
            if len(row) != classes:
                raise _inconsistent(f"confusion_matrix[{r}]", f"{classes} columns", len(row))
        total = sum(map(sum, self.confusion_matrix))
        if total != self.samples:
            raise _inconsistent("samples", f"the confusion matrix's total {total}", self.samples)
        for name, correct in (("mistakes", False), ("examples", True)):
            for i, sample in enumerate(getattr(self, name)):
                where = f"{name}[{i}]"
                for field in ("label", "predicted"):
                    if getattr(sample, field) >= classes:
                        expected = f"a class index below {classes}"
                        raise _inconsistent(f"{where}.{field}", expected, getattr(sample, field))
                if (sample.label == sample.predicted) != correct:
                    kind = "a correctly classified" if correct else "a misclassified"
                    found = f"label {sample.label}, predicted {sample.predicted}"
                    raise _inconsistent(where, f"{kind} image", found)
                width = len(sample.pixels[0])
                for y, row in enumerate(sample.pixels):
                    if len(row) != width:
                        expected = f"{width} pixels, as row 0 has"
                        raise _inconsistent(f"{where}.pixels[{y}]", expected, len(row))
        return self
