"""train_mnist: the real network, trained at tiny sizes on the synthetic mirror."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from kfp_lightning.components.common import run_layout
from kfp_lightning.components.common.dataset import load_dataset
from kfp_lightning.components.common.errors import UserInputError
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.run_layout import collect_outputs
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist import train
from kfp_lightning.components.train_mnist.data import DeviceBatches, shift_images
from kfp_lightning.components.train_mnist.evaluation import EvaluationAccumulator
from kfp_lightning.components.train_mnist.train import (
    TrainingOutputs,
    run_training,
    select_device,
    train_from_run_form,
)
from tests.helpers import FOUR_SCALARS, predict_in_fresh_process, scalars, task_dir

TINY = {"validation": "200", "gpus": "0", "log_every_n_steps": 5}


@pytest.fixture(scope="session")
def classic_run(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("classic")
    live = parse_logs_root(str(root / "live")).child("run-1")
    config = TrainConfig(epochs=2, progress_interval_seconds=0.01, **TINY)
    outputs = TrainingOutputs(root / "model", root / "logs")
    result = run_training(dataset, outputs, config, live_logs=live, live_update_seconds=2)
    return root, result


def test_learns_the_data(classic_run):
    _, result = classic_run
    metrics = result.metrics
    # Chance is 0.1; scrambled images or labels would stay there.
    assert metrics["test_accuracy"] > 0.9
    assert metrics["val_accuracy"] > 0.9
    assert metrics["epochs"] == 2
    assert metrics["steps"] == 2 * math.ceil(1000 / 64)
    assert metrics["train_samples_per_second"] > 0
    assert result.model_metadata["test_accuracy"] == metrics["test_accuracy"]


def test_model_loads_and_predicts_without_this_package(classic_run, dataset):
    root, result = classic_run
    prediction = predict_in_fresh_process(root / "model", dataset)
    assert prediction["shape"] == [300, 10]
    assert prediction["sum_of_probs"] == pytest.approx(1.0, abs=1e-4)
    # The exported program normalises itself: raw pixels give the trained accuracy.
    assert prediction["accuracy"] == pytest.approx(result.metrics["test_accuracy"], abs=1e-6)
    # Validation held out: the test pass gathered the evaluation.
    assert result.confusion_matrix == prediction["confusion_matrix"]
    assert result.model_metadata["normalisation"]["applied_by_program"] is True
    assert result.model_metadata["input"]["shape"] == ["batch", 1, 28, 28]


def test_event_files_hold_the_four_scalars_with_the_step_schedule(classic_run):
    root, _ = classic_run
    values = scalars(root / "logs")
    assert set(values) >= FOUR_SCALARS
    assert {"accuracy/test", "loss/test"} <= set(values)
    # StepLR: 1.0 in the first epoch, 0.7 in the second.
    assert [round(v, 6) for _, v in values["learning_rate"]] == [1.0, 0.7]
    assert len(values["loss/val"]) == 2
    steps = [s for s, _ in values["loss/train"]]
    assert steps == sorted(steps)
    assert len(steps) >= 2


def test_live_location_ends_with_the_same_event_files(classic_run):
    root, _ = classic_run
    live = root / "live" / "run-1"

    def files(where):
        return {
            p.relative_to(where).as_posix(): p.read_bytes()
            for p in where.rglob("*")
            if p.is_file() and "checkpoints" not in p.parts
        }

    copied, artifact = files(live), files(root / "logs")
    assert copied == artifact
    # In a folder named after the run (no run name given: the default), never at the top.
    assert any(name.startswith("training/") and "tfevents" in name for name in copied)
    # Beside them, the newest two checkpoints (the end of each epoch).
    steps = math.ceil(1000 / 64)
    assert sorted(p.name for p in (live / "checkpoints").iterdir()) == [
        f"step={steps:09d}-epoch=00000.ckpt",
        f"step={2 * steps:09d}-epoch=00001.ckpt",
    ]


def test_progress_is_printed_as_single_lines(dataset, tmp_path, capsys):
    config = TrainConfig(epochs=1, progress_interval_seconds=0.01, **TINY)
    run_training(dataset, TrainingOutputs(tmp_path / "model", tmp_path / "logs"), config)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line.startswith("epoch 1/1 batch")]
    assert lines, out
    assert all(" loss " in line and " samples/s" in line for line in lines)
    assert any("end of epoch 1 accuracy/val" in line for line in lines)


def test_fast_preset_trains_with_one_cycle(dataset, tmp_path):
    config = TrainConfig.from_preset("fast", epochs=1, **{**TINY, "log_every_n_steps": 1})
    result = run_training(dataset, TrainingOutputs(tmp_path / "model", tmp_path / "logs"), config)
    assert result.metrics["test_accuracy"] > 0.9
    lr = [v for _, v in scalars(tmp_path / "logs")["learning_rate"]]
    assert len(lr) == math.ceil(1000 / config.batch_size)
    # One-cycle: from max_lr / 25 up to max_lr, then annealed to almost nothing.
    assert lr[0] == pytest.approx(config.learning_rate / 25, rel=1e-3)
    assert max(lr) == pytest.approx(config.learning_rate, rel=0.05)
    assert lr[-1] < config.learning_rate / 100


def test_gradient_clip_val_reaches_the_optimiser_steps(dataset, tmp_path):
    # Adadelta's step scales with the gradient when its running averages are below its eps:
    # gradients clipped to a norm of 1e-9 leave the weights where they started, at chance.
    config = TrainConfig(epochs=1, gradient_clip_val="1e-9", **TINY)
    result = run_training(dataset, TrainingOutputs(tmp_path / "model", tmp_path / "logs"), config)
    # Unclipped, the same run reaches > 0.9 (test_learns_the_data).
    assert result.metrics["test_accuracy"] < 0.3


def test_bad_validation_fails_before_any_output(dataset, tmp_path):
    config = TrainConfig(epochs=1, **{**TINY, "validation": "5000"})
    with pytest.raises(
        UserInputError,
        match=r"^invalid validation='5000': expected test-set or fewer than the 1200 training",
    ):
        run_training(dataset, TrainingOutputs(tmp_path / "model", tmp_path / "logs"), config)
    assert list(tmp_path.iterdir()) == []


def test_device_selection():
    assert select_device(0, "32-true") == ("cpu", 1)
    with pytest.raises(UserInputError, match="gpus='17'"):
        TrainConfig(gpus="17")
    assert TrainConfig(gpus="0").gpus == TrainConfig(gpus=0).gpus == 0
    # The driver hands the text as typed to Kubernetes' ParseQuantity, which refuses spaces.
    with pytest.raises(UserInputError, match="gpus=' 0 ': expected a whole number from 0 to 16"):
        TrainConfig(gpus=" 0 ")
    if not torch.cuda.is_available():
        assert select_device(1, "bf16-mixed") == ("cpu", 1)
        with pytest.raises(UserInputError, match="precision='16-mixed'"):
            select_device(1, "16-mixed")


def test_device_batches_visit_every_sample_once_per_epoch():
    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    labels = torch.arange(10)
    epoch = [0]
    batches = DeviceBatches(images, labels, 4, shuffle=True, seed=3, epoch=lambda: epoch[0])
    assert len(batches) == 3
    first = torch.cat([y for _, y in batches])
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(torch.cat([y for _, y in batches]), first)  # same epoch, same order
    epoch[0] = 1
    assert not torch.equal(torch.cat([y for _, y in batches]), first)
    for x, y in batches:  # images stay paired with their labels
        assert torch.equal(x.view(-1).long(), y)


def test_device_batches_shard_disjointly_across_ranks():
    images, labels = torch.zeros(11, 1, 1, 1), torch.arange(11)
    shards = [
        torch.cat([y for _, y in DeviceBatches(images, labels, 2, True, 5, rank=r, world_size=2)])
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 5
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_shift_images_moves_each_image_by_its_own_offset():
    images = torch.zeros(2, 1, 28, 28)
    images[:, 0, 10, 10] = 1.0
    shifted = shift_images(images, torch.tensor([[1, 0], [-2, 3]]))
    assert shifted.shape == images.shape
    assert shifted[0, 0, 11, 10] == 1.0
    assert shifted[1, 0, 8, 13] == 1.0
    assert shifted.sum() == 2.0


def test_shifted_batches_are_reproducible_and_keep_their_labels():
    images = torch.zeros(8, 1, 28, 28)
    for i in range(8):
        images[i, 0, 14, 14] = i + 1.0  # one marked pixel tells which image it is
    labels = torch.arange(8)
    batches = DeviceBatches(images, labels, 4, shuffle=True, seed=2, max_shift=1)
    first = [(x.clone(), y.clone()) for x, y in batches]
    again = list(batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    moved = 0
    for x, y in first:
        for image, label in zip(x, y, strict=True):
            (row, col), value = torch.nonzero(image[0])[0].tolist(), image.max().item()
            assert value == label.item() + 1.0  # still paired with its own label
            assert abs(row - 14) <= 1
            assert abs(col - 14) <= 1
            moved += (row, col) != (14, 14)
    assert moved > 0


def test_evaluation_counts_every_batch_and_ranks_mistakes_by_confidence():
    accumulator = EvaluationAccumulator()
    evaluation = accumulator.result()  # a pass without batches
    assert evaluation.confusion_matrix == [[0] * 10 for _ in range(10)]
    assert evaluation.mistakes == []
    assert evaluation.examples == []
    # Two batches; row i predicts digit predicted[i] with probability confidence[i].
    predicted = [[3, 1, 2], [7, 0, 5]]
    labels = [[3, 2, 2], [1, 0, 4]]
    confidence = [[0.9, 0.6, 0.8], [0.6, 0.7, 0.95]]
    first_index = 0
    for p, y, c in zip(predicted, labels, confidence, strict=True):
        probs = torch.full((len(p), 10), 0.001)
        probs[torch.arange(len(p)), torch.tensor(p)] = torch.tensor(c)
        accumulator.update(probs.log(), torch.tensor(y), first_index)
        first_index += len(p)
    evaluation = accumulator.result()
    matrix = evaluation.confusion_matrix
    expected = [[0] * 10 for _ in range(10)]
    for row, column in [(3, 3), (2, 1), (2, 2), (1, 7), (0, 0), (4, 5)]:
        expected[row][column] += 1
    assert matrix == expected
    # Most confident first; the two at 0.6 in split order.
    assert [m.index for m in evaluation.mistakes] == [5, 1, 3]
    assert [e.index for e in evaluation.examples] == [4, 2, 0]  # digits 0, 2, 3


def test_test_set_validation_is_the_test_pass(dataset, tmp_path):
    # Validation on the test set (the default): the test metrics are the last validation pass,
    # not a second pass over the same images, and its details become the evaluation.
    config = TrainConfig(epochs=2, **{**TINY, "validation": "test-set"})
    outputs = TrainingOutputs(tmp_path / "model", tmp_path / "logs", tmp_path / "evaluation")
    result = run_training(dataset, outputs, config, run_name="Run of mnist (7f3a)")
    metrics = result.metrics
    assert metrics["test_accuracy"] == metrics["val_accuracy"]
    assert metrics["test_loss"] == metrics["val_loss"]
    values = scalars(tmp_path / "logs")
    # One point each, at the last step, equal to the last validation point.
    assert values["accuracy/test"] == [(metrics["steps"], metrics["test_accuracy"])]
    assert values["accuracy/val"][-1][1] == pytest.approx(metrics["test_accuracy"])
    assert (tmp_path / "logs" / "Run-of-mnist-7f3a").is_dir()

    # The confusion matrix is what the exported model predicts, computed independently.
    prediction = predict_in_fresh_process(tmp_path / "model", dataset)
    assert result.confusion_matrix == prediction["confusion_matrix"]
    assert sum(map(sum, result.confusion_matrix)) == 300
    document = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert document["confusion_matrix"] == prediction["confusion_matrix"]
    assert document["run"]["name"] == "Run-of-mnist-7f3a"
    assert document["run"]["parameters"]["epochs"] == 2
    images = load_dataset(dataset)
    for entry in document["mistakes"] + document["examples"]:
        assert entry["pixels"] == images["test_images"][entry["index"]].tolist()
        assert entry["label"] == int(images["test_labels"][entry["index"]])
    assert all(e["label"] != e["predicted"] for e in document["mistakes"])
    confidences = [e["confidence"] for e in document["mistakes"]]
    assert confidences == sorted(confidences, reverse=True)
    assert all(e["label"] == e["predicted"] for e in document["examples"])
    assert len(document["examples"]) == 20  # two of each digit


def test_one_process_trains_here_and_collects_what_it_published(dataset, tmp_path, monkeypatch):
    # One device: the entry point runs in this very process, with no launcher and no child
    # process (a torchrun, or Lightning re-running the command, would go through these).
    def no_process(*args, **kwargs):
        raise AssertionError(f"a one-process training started a process: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(os, "fork", no_process)
    fast_exits = []
    monkeypatch.setattr(train, "exit_without_teardown", lambda: fast_exits.append(True))
    parameters = {
        "run_id": "run-1",
        "tensorboard_logs_root": str(tmp_path / "live"),
        "epochs": 1,
        "live_update_seconds": 1,
        **TINY,
    }
    location = task_dir(parameters, dataset)
    published = []

    def collect(storage, output_dirs):
        # What rank 0 published, as the launcher finds it: in a folder of this machine, not in
        # the location (an object store, on a cluster).
        handover = Path(storage.root)
        assert not handover.is_relative_to(location)
        published.append(json.loads((handover / "outputs" / "result.json").read_text()))
        return collect_outputs(storage, output_dirs)

    monkeypatch.setattr(run_layout, "collect_outputs", collect)
    outputs = {name: tmp_path / name for name in ("model", "tensorboard_logs", "evaluation")}

    result = train_from_run_form(dataset, outputs, "run-1", "one process", parameters)

    monkeypatch.undo()
    assert fast_exits == [True]  # the process may end without the interpreter's teardown
    assert published == [json.loads(json.dumps(dataclasses.asdict(result)))]
    assert result.metrics["processes"] == 1
    # The location holds the run's logs and checkpoints, never the outputs.
    held = {p.relative_to(location).parts[0] for p in location.rglob("*") if p.is_file()}
    assert held == {"checkpoints", "one-process"}
    assert scalars(outputs["tensorboard_logs"]) == scalars(location)
    evaluation = json.loads((outputs["evaluation"] / "evaluation.json").read_text())
    assert evaluation["confusion_matrix"] == result.confusion_matrix
    assert predict_in_fresh_process(outputs["model"], dataset)["accuracy"] == pytest.approx(
        result.metrics["test_accuracy"], abs=1e-6
    )
