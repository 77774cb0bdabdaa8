"""Fault tolerance: a training task killed mid-epoch resumes from its last checkpoint."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kfp_lightning.components.train_mnist.component import train_mnist
from kfp_lightning.components.train_mnist.live import checkpoint_name
from tests.component_runner import component_command, logged_metrics, run_component
from tests.helpers import (
    assert_only_logs,
    predict_in_fresh_process,
    scalar_events,
    scalars,
    task_dir,
)

EPOCHS = 5
BATCH = 16
STEPS_PER_EPOCH = math.ceil(1000 / BATCH)


def parameters(live_root: Path) -> dict[str, object]:
    return {
        "run_id": "run-1",
        "tensorboard_logs_root": str(live_root),
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "gpus": "0",
        "validation": "200",
        "log_every_n_steps": 7,
        "live_update_seconds": 2,
        "checkpoint_interval_minutes": 0.01,
    }


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    process, outputs = run_component(
        train_mnist, root / "pod", parameters(root / "live"), {"dataset": dataset}
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return outputs, logged_metrics(root / "pod")


def test_component_writes_the_confusion_matrix_for_kubeflow(uninterrupted, dataset, tmp_path):
    outputs, metrics = uninterrupted
    executor_output = json.loads((outputs["model"].parents[1] / "executor_output.json").read_text())
    (artifact,) = executor_output["artifacts"]["classification_metrics"]["artifacts"]
    matrix = artifact["metadata"]["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == list("0123456789")
    rows = [row["row"] for row in matrix["rows"]]
    assert sum(map(sum, rows)) == 300  # the synthetic test split
    assert rows == predict_in_fresh_process(outputs["model"], dataset)["confusion_matrix"]
    assert sum(rows[i][i] for i in range(10)) / 300 == pytest.approx(metrics["test_accuracy"])


def _kill_mid_epoch(argv, env, cwd: Path, checkpoints: Path) -> str:
    """Starts training and SIGKILLs it right after a mid-epoch checkpoint of a later epoch."""
    # Its own process group: like a lost pod, the shell wrapper and Python die together.
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            names = [p.name for p in checkpoints.glob("*.ckpt")] if checkpoints.is_dir() else []
            mid = [
                n
                for n in names
                if (m := re.match(r"step=(\d+)-epoch=(\d+)", n))
                and int(m.group(2)) >= 2
                and int(m.group(1)) % STEPS_PER_EPOCH
            ]
            if mid:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return mid[0]
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    pytest.fail("training ended or stalled before a mid-epoch checkpoint of epoch 3")


def test_killed_training_resumes_where_it_stopped(dataset, uninterrupted, tmp_path):
    live_root = tmp_path / "live"
    checkpoints = task_dir(parameters(live_root), dataset) / "checkpoints"
    argv, env, _ = component_command(
        train_mnist, tmp_path / "pod-1", parameters(live_root), {"dataset": dataset}
    )
    _kill_mid_epoch(argv, env, tmp_path / "pod-1", checkpoints)
    newest = sorted(p.name for p in checkpoints.glob("*.ckpt"))[-1]
    step, epoch = map(int, re.match(r"step=(\d+)-epoch=(\d+)", newest).groups())
    assert 2 * STEPS_PER_EPOCH <= step < EPOCHS * STEPS_PER_EPOCH
    # A torn write from the lost pod, newer than every good checkpoint.
    torn = checkpoints / checkpoint_name(10**8, 99)
    torn.write_bytes(b"PK\x03\x04 not a whole checkpoint")

    # The retried task: a new pod, the same inputs and run id.
    process, outputs = run_component(
        train_mnist, tmp_path / "pod-2", parameters(live_root), {"dataset": dataset}
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert f"skipping unreadable checkpoint checkpoints/{torn.name}" in process.stderr
    assert not torn.exists()
    assert f"resuming from checkpoints/{newest} (epoch {epoch + 1}, step {step})" in process.stdout
    # No completed epoch was trained again: the retry started in the epoch it was killed in.
    assert f"epoch {epoch}/{EPOCHS} " not in process.stdout

    baseline_outputs, baseline_metrics = uninterrupted
    # The lost attempt's logs were restored, and nothing else of the location (checkpoints).
    assert_only_logs(outputs["tensorboard_logs"])
    resumed, baseline = (
        scalars(outputs["tensorboard_logs"]),
        scalars(baseline_outputs["tensorboard_logs"]),
    )
    # One continuous step axis, point for point where the uninterrupted run has one.
    for tag in ("loss/train", "loss/val", "learning_rate"):
        steps = [s for s, _ in resumed[tag]]
        assert steps == sorted(set(steps)), tag
        assert steps == [s for s, _ in baseline[tag]], tag
    # Lightning logs epoch-end values at the index of the epoch's last step.
    assert [s for s, _ in resumed["loss/val"]] == [
        STEPS_PER_EPOCH * (e + 1) - 1 for e in range(EPOCHS)
    ]

    metrics = logged_metrics(tmp_path / "pod-2")
    assert metrics["epochs"] == EPOCHS
    assert metrics["steps"] == EPOCHS * STEPS_PER_EPOCH
    # Every image of every epoch trained on once: the retry neither repeats nor skips a batch.
    assert metrics["train_samples_seen"] == EPOCHS * 1000
    assert metrics["test_accuracy"] == pytest.approx(baseline_metrics["test_accuracy"], abs=0.02)


# Death points of the other members of the kind: an attempt lost at any point must leave the
# retry's curves with each step once and its metrics describing the whole training.
SHORT_EPOCHS = 3


def short_parameters(live_root: Path) -> dict[str, object]:
    # Checkpoints only at epoch ends (the interval is far longer than training).
    return {**parameters(live_root), "epochs": SHORT_EPOCHS, "checkpoint_interval_minutes": 60.0}


def _checkpoint_steps(checkpoints: Path) -> list[int]:
    names = [p.name for p in checkpoints.glob("*.ckpt")] if checkpoints.is_dir() else []
    return sorted(int(m.group(1)) for n in names if (m := re.match(r"step=(\d+)-", n)))


def _loss_points(live: Path) -> int:
    try:
        return sum(tag == "loss/train" for tag, _ in scalar_events(live))
    except Exception:  # a record being written: read it again on the next poll
        return 0


def _kill_when(argv, env, cwd: Path, ready, what: str) -> None:
    """Starts training in its own process group and SIGKILLs the group once `ready()`."""
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if ready():
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"training ended or stalled before {what}")


@pytest.mark.parametrize("death", ["before-first-checkpoint", "epoch-end", "after-training"])
def test_retry_after_any_death_logs_each_step_once(dataset, tmp_path, death):
    live_root = tmp_path / "live"
    live = task_dir(short_parameters(live_root), dataset)
    checkpoints = live / "checkpoints"
    final_step = SHORT_EPOCHS * STEPS_PER_EPOCH
    ready = {
        # A few loss points are visible, and no checkpoint exists yet.
        "before-first-checkpoint": lambda: (
            not _checkpoint_steps(checkpoints) and _loss_points(live) >= 3
        ),
        # The end-of-epoch-1 checkpoint is there: validation of epoch 1 ran before it.
        "epoch-end": lambda: STEPS_PER_EPOCH in _checkpoint_steps(checkpoints),
        # The last epoch's checkpoint is there; the test pass and the outputs are not.
        "after-training": lambda: final_step in _checkpoint_steps(checkpoints),
    }[death]
    argv, env, _ = component_command(
        train_mnist, tmp_path / "pod-1", short_parameters(live_root), {"dataset": dataset}
    )
    _kill_when(argv, env, tmp_path / "pod-1", ready, death)
    assert not (tmp_path / "pod-1" / "executor_output.json").exists()
    lost = scalar_events(live)
    assert lost, "the lost attempt logged nothing to the live location"

    process, outputs = run_component(
        train_mnist, tmp_path / "pod-2", short_parameters(live_root), {"dataset": dataset}
    )
    assert process.returncode == 0, process.stderr[-3000:]
    if death == "before-first-checkpoint":
        assert "resuming from" not in process.stdout
    else:
        assert "resuming from" in process.stdout

    for where in (live, outputs["tensorboard_logs"]):
        # Lightning logs its `epoch` counter beside each logging call, twice at an epoch's end.
        events = [(tag, step) for tag, step in scalar_events(where) if tag != "epoch"]
        assert len(events) == len(set(events)), f"a step logged twice in {where}"
        steps = {tag: sorted(step for t, step in events if t == tag) for tag, _ in events}
        # Each epoch validated exactly once, at its last step.
        assert steps["loss/val"] == [STEPS_PER_EPOCH * (e + 1) - 1 for e in range(SHORT_EPOCHS)]
        assert len(steps["loss/train"]) >= SHORT_EPOCHS
    metrics = logged_metrics(tmp_path / "pod-2")
    # The whole training, not only the retry's share of it.
    assert metrics["epochs"] == SHORT_EPOCHS
    assert metrics["steps"] == final_step
    assert metrics["train_samples_seen"] == SHORT_EPOCHS * 1000
    assert metrics["train_seconds"] > 0
    assert metrics["train_samples_per_second"] == pytest.approx(
        metrics["train_samples_seen"] / metrics["train_seconds"]
    )
