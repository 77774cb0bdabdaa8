"""The typed reader of the training step's `evaluation` artifact (`evaluation.json`).

Training writes what its final evaluation pass saw (a confusion matrix, the most confidently
misclassified images, a few correctly classified ones per class) and the run's headline numbers
in format `kfp-lightning/evaluation-v1`. The report trusts nothing in it: every field is checked
for type and shape here, and a malformed file is a one-line error naming what is wrong, so a
broken artifact never becomes a half-drawn page.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from kfp_lightning.components.common.errors import invalid

FORMAT = "kfp-lightning/evaluation-v1"
FILE_NAME = "evaluation.json"
MAX_IMAGE_SIDE = 64  # MNIST images are 28 x 28; anything much larger is not an MNIST image


class _MalformedError(Exception):
    """A field of evaluation.json that does not match the format (message: which and why)."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One evaluated image.

    Attributes:
        index: Position in the evaluated split.
        label: True class, an index into `Evaluation.labels`.
        predicted: Predicted class, an index into `Evaluation.labels`.
        confidence: Probability the network gave `predicted`, in [0, 1].
        pixels: Grey levels 0-255, rows of equal length (28 x 28 for MNIST).
    """

    index: int
    label: int
    predicted: int
    confidence: float
    pixels: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class RunInfo:
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
    epochs: int | None
    test_accuracy: float | None
    test_loss: float | None
    train_seconds: float | None
    train_samples_per_second: float | None
    parameters: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The content of an `evaluation.json`.

    Attributes:
        split: The evaluated split, e.g. "test".
        samples: Images evaluated; the confusion matrix sums to it.
        labels: Class names, in class-index order.
        confusion_matrix: Counts, rows = true class, columns = predicted class.
        mistakes: Misclassified images, most confident first.
        examples: Correctly classified images.
        run: The run's headline numbers and parameters.
    """

    split: str
    samples: int
    labels: tuple[str, ...]
    confusion_matrix: tuple[tuple[int, ...], ...]
    mistakes: tuple[Sample, ...]
    examples: tuple[Sample, ...]
    run: RunInfo


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise _MalformedError(f"{where} is not an object")
    if key not in obj:
        raise _MalformedError(f"{where} has no {key!r}")
    return obj[key]


def _int(value: Any, where: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _MalformedError(f"{where} is {value!r}, not an integer >= {low}")
    if high is not None and value > high:
        raise _MalformedError(f"{where} is {value!r}, not an integer <= {high}")
    return value


def _number(value: Any, where: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _MalformedError(f"{where} is {value!r}, not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise _MalformedError(f"{where} is {value!r}, outside [{low}, {high}]")
    return float(value)


def _optional_number(value: Any, where: str, low: float | None = None, high: float | None = None):
    return None if value is None else _number(value, where, low, high)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _MalformedError(f"{where} is {value!r}, not a string")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise _MalformedError(f"{where} is not a list")
    return value


def _pixels(value: Any, where: str) -> tuple[tuple[int, ...], ...]:
    rows = _list(value, where)
    if not 1 <= len(rows) <= MAX_IMAGE_SIDE:
        raise _MalformedError(f"{where} has {len(rows)} rows, not 1 to {MAX_IMAGE_SIDE}")
    width = len(_list(rows[0], f"{where}[0]"))
    if not 1 <= width <= MAX_IMAGE_SIDE:
        raise _MalformedError(f"{where}[0] has {width} pixels, not 1 to {MAX_IMAGE_SIDE}")
    image = []
    for y, row in enumerate(rows):
        row = _list(row, f"{where}[{y}]")
        if len(row) != width:
            raise _MalformedError(f"{where}[{y}] has {len(row)} pixels, row 0 has {width}")
        image.append(tuple(_int(v, f"{where}[{y}][{x}]", 0, 255) for x, v in enumerate(row)))
    return tuple(image)


def _sample(value: Any, where: str, classes: int, correct: bool) -> Sample:
    sample = Sample(
        index=_int(_field(value, "index", where), f"{where}.index"),
        label=_int(_field(value, "label", where), f"{where}.label", 0, classes - 1),
        predicted=_int(_field(value, "predicted", where), f"{where}.predicted", 0, classes - 1),
        confidence=_number(_field(value, "confidence", where), f"{where}.confidence", 0, 1),
        pixels=_pixels(_field(value, "pixels", where), f"{where}.pixels"),
    )
    if (sample.label == sample.predicted) != correct:
        kind = "a correctly classified" if correct else "a misclassified"
        raise _MalformedError(
            f"{where} is not {kind} image (label {sample.label}, predicted {sample.predicted})"
        )
    return sample


def _run(value: Any) -> RunInfo:
    parameters = _field(value, "parameters", "run")
    if not isinstance(parameters, dict):
        raise _MalformedError("run.parameters is not an object")
    epochs = _field(value, "epochs", "run")
    return RunInfo(
        name=_string(_field(value, "name", "run"), "run.name"),
        device=_string(_field(value, "device", "run"), "run.device"),
        epochs=None if epochs is None else _int(epochs, "run.epochs"),
        test_accuracy=_optional_number(
            _field(value, "test_accuracy", "run"), "run.test_accuracy", 0, 1
        ),
        test_loss=_optional_number(_field(value, "test_loss", "run"), "run.test_loss", 0),
        train_seconds=_optional_number(
            _field(value, "train_seconds", "run"), "run.train_seconds", 0
        ),
        train_samples_per_second=_optional_number(
            _field(value, "train_samples_per_second", "run"), "run.train_samples_per_second", 0
        ),
        parameters=dict(parameters),
    )


def parse_evaluation(document: Any) -> Evaluation:
    """Checks and converts a parsed `evaluation.json`.

    Args:
        document: The JSON value.

    Returns:
        The evaluation.

    Raises:
        ValueError: A field is missing or malformed; the message names it.
    """
    try:
        found = _field(document, "format", "the file")
        if found != FORMAT:
            raise _MalformedError(f"format is {found!r}, not {FORMAT!r}")
        labels = tuple(
            _string(v, f"labels[{i}]")
            for i, v in enumerate(_list(_field(document, "labels", "the file"), "labels"))
        )
        if not labels:
            raise _MalformedError("labels is empty")
        classes = len(labels)
        samples = _int(_field(document, "samples", "the file"), "samples")
        rows = _list(_field(document, "confusion_matrix", "the file"), "confusion_matrix")
        if len(rows) != classes:
            raise _MalformedError(f"confusion_matrix has {len(rows)} rows, not {classes}")
        matrix = []
        for r, row in enumerate(rows):
            row = _list(row, f"confusion_matrix[{r}]")
            if len(row) != classes:
                raise _MalformedError(
                    f"confusion_matrix[{r}] has {len(row)} columns, not {classes}"
                )
            matrix.append(tuple(_int(v, f"confusion_matrix[{r}][{c}]") for c, v in enumerate(row)))
        if sum(map(sum, matrix)) != samples:
            raise _MalformedError(
                f"confusion_matrix sums to {sum(map(sum, matrix))}, not {samples}"
            )
        mistakes = tuple(
            _sample(v, f"mistakes[{i}]", classes, correct=False)
            for i, v in enumerate(_list(_field(document, "mistakes", "the file"), "mistakes"))
        )
        examples = tuple(
            _sample(v, f"examples[{i}]", classes, correct=True)
            for i, v in enumerate(_list(_field(document, "examples", "the file"), "examples"))
        )
        return Evaluation(
            split=_string(_field(document, "split", "the file"), "split"),
            samples=samples,
            labels=labels,
            confusion_matrix=tuple(matrix),
            mistakes=mistakes,
            examples=examples,
            run=_run(_field(document, "run", "the file")),
        )
    except _MalformedError as err:
        raise ValueError(str(err)) from None


def read_evaluation(evaluation_dir: str | Path) -> Evaluation:
    """Reads the `evaluation.json` of an evaluation artifact.

    Args:
        evaluation_dir: The artifact directory.

    Returns:
        The evaluation.

    Raises:
        UserInputError: The file is missing, is not JSON, or does not match the format; the
            one-line message says which field is wrong.
    """
    path = Path(evaluation_dir) / FILE_NAME
    accepted = f"a directory holding {FILE_NAME} in format {FORMAT}"
    if not path.is_file():
        raise invalid("evaluation", str(evaluation_dir), f"{accepted} (there is no {FILE_NAME})")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise invalid("evaluation", str(path), f"{accepted} (not JSON: {err})") from None
    try:
        return parse_evaluation(document)
    except ValueError as err:
        raise invalid("evaluation", str(path), f"{accepted} ({err})") from None
