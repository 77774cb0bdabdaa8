"""Inputs of the report tests: event files written with TensorBoard's writer, evaluation files,
and one real training run shared by the report's unit and browser tests."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.synthetic_mnist import make_split

LABELS = [str(d) for d in range(10)]


def write_training_logs(
    directory: Path,
    epochs: int,
    steps_per_epoch: int,
    log_every: int,
    every_step_first: int = 50,
    learning_rate_every_step: bool = False,
    old_names: bool = False,
    accuracies: tuple[float, float] | None = None,
) -> dict[str, list[tuple[int, float]]]:
    """Event files logged on the training's schedule, with TensorBoard's own writer.

    `loss/train` every step for the first `every_step_first` steps, then every `log_every`;
    `loss/val` and `accuracy/val` at each epoch's last step, `loss/test` and `accuracy/test`
    one step later, `learning_rate` each epoch (or with every training loss), and
    Lightning's `epoch` counter beside every logging call (one past the last epoch beside
    the test values, as Lightning logs it).

    Args:
        directory: Log directory to write.
        epochs: Epochs to log.
        steps_per_epoch: Optimiser steps per epoch.
        log_every: Steps between training losses after the first ones.
        every_step_first: Steps logged individually at the start.
        learning_rate_every_step: Log the learning rate with every training loss (a one-cycle
            schedule) instead of once per epoch (StepLR).
        old_names: Use the tags of older runs (`train_loss`, `val_loss`, ...).
        accuracies: The last epoch's validation accuracy and the test accuracy, in place of
            the curve's and 99.24%.

    Returns:
        tag -> [(step, value)] as written (new tag names).
    """
    from torch.utils.tensorboard import SummaryWriter

    rename = {
        "loss/train": "train_loss",
        "loss/val": "val_loss",
        "accuracy/val": "val_accuracy",
        "loss/test": "test_loss",
        "accuracy/test": "test_accuracy",
    }
    written: dict[str, list[tuple[int, float]]] = {}
    writer = SummaryWriter(str(directory))

    def log(name: str, value: float, step: int) -> None:
        writer.add_scalar(rename.get(name, name) if old_names else name, value, step)
        written.setdefault(name, []).append((step, value))

    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        first = epoch * steps_per_epoch
        if not learning_rate_every_step:
            log("learning_rate", 0.7**epoch, first)
        for step in range(first, first + steps_per_epoch):
            if step < every_step_first or step % log_every == 0:
                log("loss/train", 2.3 * math.exp(-step / 200) + 0.05 * rng.random(), step)
                log("epoch", epoch, step)
                if learning_rate_every_step:
                    log(
                        "learning_rate",
                        0.005 * math.sin(math.pi * step / (epochs * steps_per_epoch)),
                        step,
                    )
        last = first + steps_per_epoch - 1
        log("loss/val", 0.3 * math.exp(-epoch) + 0.02, last)
        accuracy = 0.99 - 0.1 * math.exp(-epoch)
        if accuracies and epoch == epochs - 1:
            accuracy = accuracies[0]
        log("accuracy/val", accuracy, last)
        log("epoch", epoch, last)
    # The test pass runs after the last epoch; Lightning's counter is one past it then.
    log("loss/test", 0.0252, last + 1)
    log("accuracy/test", accuracies[1] if accuracies else 0.9924, last + 1)
    log("epoch", epochs, last + 1)
    writer.close()
    return written


def write_classic_run(root: Path, epochs: int, **logs: Any) -> tuple[Path, Path]:
    """Logs and evaluation of the classic recipe on the real MNIST, the report's usual input.

    938 steps an epoch (60,000 images, batch 64), the first 50 logged one by one, then every
    50th; the learning rate once an epoch (StepLR, the recipe's schedule); the evaluation of a
    10,000-image test split with 24 mistakes shown and 20 correct examples.

    Args:
        root: Folder to write `logs/` and `evaluation/` into.
        epochs: Epochs trained.
        **logs: Further arguments of `write_training_logs`.

    Returns:
        The logs directory and the evaluation directory.
    """
    write_training_logs(root / "logs", epochs, 938, 50, **logs)
    document = evaluation_document()
    document["run"]["epochs"] = document["run"]["parameters"]["epochs"] = epochs
    if logs.get("accuracies"):
        document["run"]["test_accuracy"] = logs["accuracies"][1]
    return root / "logs", write_evaluation(root / "evaluation", document)


def write_one_epoch_run(root: Path) -> tuple[Path, Path]:
    """One epoch of the classic recipe, and every degenerate series a report can chart.

    Validation and test accuracy both 98% (a one-epoch chart of two equal points); the
    learning rate logged once (a constant); `grad_norm` 0 at every logged step (a constant
    at a bound); `lone_metric` logged once (a single point of a per-step scalar); `nan_metric`
    never finite (nothing to draw).

    Returns:
        The logs directory and the evaluation directory.
    """
    from torch.utils.tensorboard import SummaryWriter

    logs, evaluation = write_classic_run(root, 1, accuracies=(0.98, 0.98))
    writer = SummaryWriter(str(logs))
    for step in range(0, 938, 50):
        writer.add_scalar("grad_norm", 0.0, step)
    writer.add_scalar("lone_metric", 3.5, 400)
    writer.add_scalar("nan_metric", float("nan"), 0)
    writer.add_scalar("nan_metric", float("inf"), 900)
    writer.close()
    return logs, evaluation


def digit_pixels(label: int, seed: int) -> list[list[int]]:
    """A 28 x 28 test image of the synthetic data set for `label` (0-255 grey levels)."""
    rng = np.random.default_rng(seed)
    images, labels = make_split(200, rng)
    (index,) = np.flatnonzero(labels == label)[:1]
    return images[index].tolist()


def evaluation_document(mistakes: int = 24, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid `evaluation.json` of a 10,000-image test split with `mistakes` mistakes."""
    matrix = [[0] * 10 for _ in range(10)]
    for digit in range(10):
        matrix[digit][digit] = 990
    matrix[4][9], matrix[7][2], matrix[3][5] = 6, 3, 1  # 10 wrong, 9,900 + 10 = 9,910
    matrix[0][0] += 90
    wrong = [(4, 9), (7, 2), (3, 5)] * 8
    return {
        "format": "kfp-lightning/evaluation-v1",
        "split": "test",
        "samples": 10_000,
        "labels": LABELS,
        "confusion_matrix": matrix,
        "mistakes": [
            {
                "index": 1000 + i,
                "label": label,
                "predicted": predicted,
                "confidence": round(0.99 - i * 0.01, 4),
                "pixels": digit_pixels(label, i),
            }
            for i, (label, predicted) in enumerate(wrong[:mistakes])
        ],
        "examples": [
            {
                "index": 10 * digit + k,
                "label": digit,
                "predicted": digit,
                "confidence": 0.999,
                "pixels": digit_pixels(digit, 100 + k),
            }
            for digit in range(10)
            for k in range(2)
        ],
        "run": run
        or {
            "name": "mnist-lightning 2026-11-29 15:04 (run 3f2a)",
            "device": "NVIDIA H200",
            "epochs": 14,
            "test_accuracy": 0.9924,
            "test_loss": 0.0252,
            "train_seconds": 812.3,
            "train_samples_per_second": 1034.1,
            "parameters": {
                "epochs": 14,
                "batch_size": 64,
                "learning_rate": 1.0,
                "optimizer": "adadelta",
            },
        },
    }


def tensorboard_smoothing(values: list[float | None], weight: float) -> list[float | None]:
    """TensorBoard's classicSmoothing (debiased exponential moving average), for comparison.

    Written from tensorboard/webapp/widgets/line_chart_v2/data_transformer.ts, apart from the
    report's own code: a constant series and gaps (None) pass through.
    """
    if all(v == values[0] for v in values):
        return list(values)
    last, count, smoothed = 0.0, 0, []
    for value in values:
        if value is None:
            smoothed.append(None)
            continue
        count += 1
        last = last * weight + (1 - weight) * value
        smoothed.append(last / (1 - weight**count) if weight < 1 else last)
    return smoothed


def page_figures(page: str) -> dict[str, dict[str, Any]]:
    """Each chart of a report page as plotly.js draws it: element id -> data, layout, config.

    Read from the `Plotly.newPlot(id, data, layout, config)` call that Plotly's `to_html`
    writes for each chart.
    """
    decoder = json.JSONDecoder()
    figures = {}
    for call in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",', page):
        values, index = [], call.end()
        for _ in range(3):
            index += len(page[index:]) - len(page[index:].lstrip(" ,\n"))
            value, index = decoder.raw_decode(page, index)
            values.append(value)
        figures[call[1]] = dict(zip(("data", "layout", "config"), values, strict=True))
    return figures


def write_evaluation(directory: Path, document: dict[str, Any]) -> Path:
    """Writes `document` as `directory/evaluation.json`; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "evaluation.json").write_text(json.dumps(copy.deepcopy(document)))
    return directory


_TRAINED: dict[Path, tuple[Path, Any]] = {}


def trained_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A real 2-epoch training on the synthetic data set, run once per test session.

    Returns:
        The directory holding `logs/` and `evaluation/` (the training's artifacts), and the
        training's result.
    """
    from kfp_lightning.components.common.training import TrainConfig
    from kfp_lightning.components.train_mnist.train import TrainingOutputs, run_training

    if dataset not in _TRAINED:
        root = tmp_path_factory.mktemp("report-run")
        config = TrainConfig(epochs=2, validation="200", gpus="0", log_every_n_steps=5)
        outputs = TrainingOutputs(root / "model", root / "logs", root / "evaluation")
        result = run_training(dataset, outputs, config, run_name="report test run")
        _TRAINED[dataset] = (root, result)
    return _TRAINED[dataset]
