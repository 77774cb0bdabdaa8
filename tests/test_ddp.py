"""Several processes in one training pod: torchrun's, run as KFP runs the component.

Without a GPU, `gpus=2` trains as two CPU processes (gloo) exactly as two GPUs would (NCCL):
the component runs `torchrun --standalone` as its child, which starts the entry point once per
device; the component alone writes executor_output.json, from what global rank 0 published.
With one process, the component trains in its own process, and writes the same outputs.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kfp_lightning.components.train_mnist.component import train_mnist
from tests.component_runner import component_command, logged_metrics
from tests.helpers import FileWrites, scalar_events, scalars, task_dir

TRAIN_SAMPLES = 1000  # the synthetic set: 1200 training images, 200 held out
GLOBAL_BATCH = 32
EPOCHS = 3


def parameters(live_root: Path, processes: int) -> dict[str, object]:
    return {
        "run_id": "run-1",
        "tensorboard_logs_root": str(live_root),
        "epochs": EPOCHS,
        "batch_size": GLOBAL_BATCH // processes,  # the same global batch either way
        "gpus": str(processes),
        "validation": "200",
        "log_every_n_steps": 4,
        "live_update_seconds": 2,
        "checkpoint_interval_minutes": 0.01,
    }


def processes_of(marker: Path) -> list[int]:
    """Processes whose command line names `marker` (torchrun and its workers name the location)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(marker) in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            continue
    return found


def lose_the_pod(process: subprocess.Popen, marker: Path) -> None:
    """SIGKILLs every process of the "pod", as a lost pod's container ends them all.

    torchrun, and each of its workers, run in sessions of their own, out of the component's
    process group: they are found by their command line.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in processes_of(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def run(workdir: Path, dataset: Path, live_root: Path, processes: int, **overrides) -> dict:
    form = {**parameters(live_root, processes), **overrides}
    argv, env, outputs = component_command(train_mnist, workdir, form, {"dataset": dataset})
    writes = FileWrites(workdir, "executor_output.json")
    try:
        process = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, text=True)
        time.sleep(0.5)  # a late second writer would show now
        return {
            "process": process,
            "outputs": outputs,
            "executor_output_writes": writes.count(),
        }
    finally:
        writes.close()


@pytest.fixture(scope="module")
def one_process(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    # An interval longer than an epoch of either run: an epoch must still get a loss point.
    return run(root / "pod", dataset, root / "live", 1, log_every_n_steps=50)


@pytest.fixture(scope="module")
def two_processes(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    return run(root / "pod", dataset, root / "live", 2, log_every_n_steps=50)


def test_only_rank_zero_writes_the_outputs(two_processes):
    process = two_processes["process"]
    assert process.returncode == 0, process.stderr[-3000:]
    assert two_processes["executor_output_writes"] == 1
    metrics = logged_metrics(two_processes["outputs"]["model"].parents[1])
    assert metrics["processes"] == 2
    # One run's logs, written once: each step once.
    events = [
        (tag, step)
        for tag, step in scalar_events(two_processes["outputs"]["tensorboard_logs"])
        if tag != "epoch"
    ]
    assert len(events) == len(set(events))
    # Progress lines come from rank 0 alone.
    ends = [line for line in process.stdout.splitlines() if "end of epoch 1 " in line]
    assert len(ends) == 1, process.stdout
    # torchrun started the two, as the component's child.
    assert "starting 1 node(s) x 2 process(es) under torchrun" in process.stdout


def test_one_process_trains_without_torchrun(one_process):
    process = one_process["process"]
    assert process.returncode == 0, process.stderr[-3000:]
    assert "torchrun" not in process.stdout + process.stderr
    assert one_process["executor_output_writes"] == 1
    assert logged_metrics(one_process["outputs"]["model"].parents[1])["processes"] == 1


def test_two_processes_learn_like_one_on_the_same_global_batch(one_process, two_processes):
    for result in (one_process, two_processes):
        assert result["process"].returncode == 0, result["process"].stderr[-3000:]
    one = logged_metrics(one_process["outputs"]["model"].parents[1])
    two = logged_metrics(two_processes["outputs"]["model"].parents[1])
    # The same number of optimiser steps, each over the same number of images...
    assert one["steps"] == two["steps"] == EPOCHS * math.ceil(TRAIN_SAMPLES / GLOBAL_BATCH)
    # ... and every training image of every epoch seen once, by one process or the other.
    assert two["train_samples_seen"] == one["train_samples_seen"] == EPOCHS * TRAIN_SAMPLES
    # The batches are split differently (a strided share each), so the numbers differ a
    # little; stated tolerance: 2 points of accuracy, 0.1 of loss, on this easy set.
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=0.02)
    assert two["test_loss"] == pytest.approx(one["test_loss"], abs=0.1)
    assert two["test_accuracy"] > 0.9


def test_every_epoch_has_a_training_loss_point(one_process, two_processes):
    steps_per_epoch = math.ceil(TRAIN_SAMPLES / GLOBAL_BATCH)  # of each process, either way
    for result in (one_process, two_processes):
        assert result["process"].returncode == 0, result["process"].stderr[-3000:]
        events = scalar_events(result["outputs"]["tensorboard_logs"])
        epochs = {step // steps_per_epoch for tag, step in events if tag == "loss/train"}
        assert epochs == set(range(EPOCHS)), result["process"].stdout[-2000:]


def test_a_killed_distributed_run_resumes(dataset, tmp_path):
    live_root = tmp_path / "live"
    checkpoints = task_dir(parameters(live_root, 2), dataset) / "checkpoints"
    steps_per_epoch = math.ceil(TRAIN_SAMPLES / GLOBAL_BATCH)
    argv, env, _ = component_command(
        train_mnist, tmp_path / "pod-1", parameters(live_root, 2), {"dataset": dataset}
    )
    # Its own process group: like a lost pod, both processes and the wrapper die together.
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=tmp_path / "pod-1",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline:
            names = [p.name for p in checkpoints.glob("*.ckpt")] if checkpoints.is_dir() else []
            mid = [
                n
                for n in names
                if (m := re.match(r"step=(\d+)-epoch=(\d+)", n))
                and int(m.group(2)) >= 1
                and int(m.group(1)) % steps_per_epoch
            ]
            if mid:
                break
            time.sleep(0.05)
    finally:
        lose_the_pod(process, live_root)
    assert process.returncode == -signal.SIGKILL, "no mid-epoch checkpoint of epoch 2 was seen"

    retry = run(tmp_path / "pod-2", dataset, live_root, 2)
    assert retry["process"].returncode == 0, retry["process"].stderr[-3000:]
    assert "resuming from checkpoints/" in retry["process"].stdout
    assert retry["executor_output_writes"] == 1
    metrics = logged_metrics(tmp_path / "pod-2")
    assert metrics["epochs"] == EPOCHS
    assert metrics["steps"] == EPOCHS * steps_per_epoch
    assert metrics["train_samples_seen"] == EPOCHS * TRAIN_SAMPLES
    values = scalars(retry["outputs"]["tensorboard_logs"])
    assert [s for s, _ in values["loss/val"]] == [
        steps_per_epoch * (e + 1) - 1 for e in range(EPOCHS)
    ]


def test_a_cancelled_run_stops_its_ranks(dataset, tmp_path):
    live_root = tmp_path / "live"
    argv, env, outputs = component_command(
        train_mnist, tmp_path / "pod", parameters(live_root, 2), {"dataset": dataset}
    )
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=tmp_path / "pod",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        live = task_dir(parameters(live_root, 2), dataset)
        deadline = time.monotonic() + 300
        # Training is under way: rank 0 has logged to the live location.
        while not list(live.rglob("*tfevents*")):
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        # KFP's cancellation: SIGTERM to the component's process group (argoexec's emissary
        # signals its child's group), which torchrun, in a session of its own, is not part of.
        os.killpg(process.pid, signal.SIGTERM)
        stderr = process.communicate(timeout=120)[1]
        assert stderr.strip().splitlines()[-1] == "error: cancelled (SIGTERM): stopped the training"
        assert not any(path.exists() for path in outputs.values())
        deadline = time.monotonic() + 30
        while processes_of(live_root):
            assert time.monotonic() < deadline, "a rank outlived the cancelled component"
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            lose_the_pod(process, live_root)
