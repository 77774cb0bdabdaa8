"""Every file the project writes honours the process umask, as the files kfp writes do.

A TensorBoard pod, or a teammate running as another user on a shared claim, reads what training
wrote: a private (0600) event file or checkpoint is invisible to them. Each writer runs here
under a umask of 022 and of 002, and every file and folder it created must have exactly the
permissions that umask gives a plainly created one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfp_lightning.components.common.logs_location import LiveLogsConfig, parse_logs_root
from kfp_lightning.components.common.storage import DirectoryStorage
from kfp_lightning.components.download_mnist.download import (
    DownloadOptions,
    download_dataset,
)
from kfp_lightning.components.download_mnist.sources import DownloadConfig
from kfp_lightning.components.launch_tensorboard.launcher import (
    LauncherConfig,
    start_live_tensorboard,
)
from kfp_lightning.components.report_training.report import write_training_report
from kfp_lightning.components.train_mnist.config import TrainConfig
from kfp_lightning.components.train_mnist.resume import restore_logs
from kfp_lightning.components.train_mnist.train import TrainingOutputs, run_training
from kfp_lightning.pipelines.cli import compile_pipeline


@pytest.fixture(params=[0o022, 0o002], ids=["umask-022", "umask-002"])
def umask(request) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def wrong_modes(root: Path, umask: int) -> dict[str, str]:
    """Everything below `root` whose permissions differ from a plain create under `umask`."""
    wrong = {}
    for path in sorted(root.rglob("*")):
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != expected:
            wrong[str(path.relative_to(root))] = f"{mode:o} (expected {expected:o})"
    return wrong


def test_every_writer_honours_the_umask(umask, mnist_mirror, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    # tmp_path itself comes from pytest (0700); everything below `out` is ours.
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777 & ~umask)
    mirror, md5 = mnist_mirror

    download_dataset(
        out / "dataset", DownloadConfig(mirror.as_uri(), md5), DownloadOptions(retries=0)
    )
    live = parse_logs_root(str(out / "live")).child("run-1")
    config = TrainConfig(epochs=1, validation="200", gpus="0", log_every_n_steps=5)
    outputs = TrainingOutputs(out / "model", out / "logs", out / "evaluation")
    run_training(out / "dataset", outputs, config, live, live_update_seconds=1, run_name="a run")
    # What a retry restores from the lost attempt's live logs.
    restore_logs(DirectoryStorage(out / "live" / "run-1"), out / "restored", below_step=10**9)
    write_training_report(
        out / "logs", out / "evaluation", out / "report.html", out / "summary.md", "title"
    )
    start_live_tensorboard(
        out / "tensorboard.md",
        out / "ui_metadata.json",
        "run-1",
        LiveLogsConfig(str(out / "live")),
        LauncherConfig(wait_ready_seconds=0),
    )
    compile_pipeline(out / "yaml" / "pipeline.yaml")

    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    # The writers of each kind ran: event files and checkpoints live and restored, artifacts.
    assert any("tfevents" in p for p in written if p.startswith("live/run-1/a-run/"))
    assert any(p.startswith("live/run-1/checkpoints/") for p in written)
    assert "live/run-1/a-run/hparams.yaml" in written
    assert "evaluation/evaluation.json" in written
    assert any("tfevents" in p for p in written if p.startswith("restored/"))
    assert {"model/model.pt2", "dataset/mnist.npz", "report.html", "yaml/pipeline.yaml"} <= written
    assert wrong_modes(out, umask) == {}
