"""Every file the project writes honours the process umask, as the files kfp writes do.

A TensorBoard pod, or a teammate running as another user on a shared claim, reads what training
wrote: a private (0600) event file or checkpoint is invisible to them. Each writer runs here
under a umask of 022 and of 002, and every file and folder it created must have exactly the
permissions that umask gives a plainly created one.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfp_lightning.components.common.logs_location import LiveLogsConfig, parse_logs_root
from kfp_lightning.components.common.storage import DirectoryStorage
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.download_mnist.download import (
    DownloadConfig,
    DownloadOptions,
    download_dataset,
)
from kfp_lightning.components.launch_tensorboard.launcher import (
    LauncherConfig,
    start_live_tensorboard,
)
from kfp_lightning.components.report_training.report import write_training_report
from kfp_lightning.components.train_mnist.live import restore_logs
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


def test_share_like_umask_opens_what_a_library_made_private(umask, tmp_path):
    # What kfp.local's cache writes: mkstemp files (0600) in mkdtemp folders (0700).
    from kfp_lightning.components.common.files import share_like_umask

    root = tmp_path / "out"
    root.mkdir(mode=0o700)
    cache = Path(tempfile.mkdtemp(dir=root))
    fd, private = tempfile.mkstemp(dir=cache)
    os.close(fd)
    script = cache / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o700)
    outside = tmp_path / "outside.txt"
    outside.write_text("not below root")
    outside.chmod(0o600)
    (root / "link").symlink_to(outside)
    before = wrong_modes(root, umask)
    assert before  # the library's modes: what this test is about

    share_like_umask(root, umask)

    expected_script = 0o777 & ~umask  # executables stay executable
    assert stat.S_IMODE(script.stat().st_mode) == expected_script
    script.chmod(0o666 & ~umask)  # for `wrong_modes`, which expects plain files
    assert wrong_modes(root, umask) == {"link": f"777 (expected {0o666 & ~umask:o})"}
    # A link is not followed: its target outside `root` keeps its mode; `root` keeps its own.
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert Path(private).is_file()


def test_share_like_umask_uses_the_process_umask(umask, tmp_path):
    from kfp_lightning.components.common.files import share_like_umask

    fd, private = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    share_like_umask(tmp_path)
    assert stat.S_IMODE(Path(private).stat().st_mode) == 0o666 & ~umask
