"""Fault tolerance: a training task killed mid-epoch resumes from its last checkpoint."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kfp_lightning.components.train_mnist.checkpoints import checkpoint_name
from kfp_lightning.components.train_mnist.component import train_mnist
from tests.component_runner import component_command, logged_metrics, run_component
from tests.helpers import scalars

EPOCHS = 5
BATCH = 16
STEPS_PER_EPOCH = math.ceil(1000 / BATCH)


def parameters(live_root: Path) -> dict[str, object]:
    return {
        "run_id": "run-1",
        "tensorboard_logs_root": str(live_root),
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "gpus": 0,
        "validation": "200",
        "log_every_n_steps": 7,
        "flush_secs": 2,
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
    checkpoints = live_root / "run-1" / "checkpoints"
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
    resumed, baseline = (
        scalars(outputs["tensorboard_logs"]),
        scalars(baseline_outputs["tensorboard_logs"]),
    )
    # One continuous step axis, point for point where the uninterrupted run has one.
    for tag in ("train_loss", "val_loss", "learning_rate"):
        steps = [s for s, _ in resumed[tag]]
        assert steps == sorted(set(steps)), tag
        assert steps == [s for s, _ in baseline[tag]], tag
    # Lightning logs epoch-end values at the index of the epoch's last step.
    assert [s for s, _ in resumed["val_loss"]] == [
        STEPS_PER_EPOCH * (e + 1) - 1 for e in range(EPOCHS)
    ]

    metrics = logged_metrics(tmp_path / "pod-2")
    assert metrics["epochs"] == EPOCHS
    assert metrics["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert metrics["test_accuracy"] == pytest.approx(baseline_metrics["test_accuracy"], abs=0.02)
