"""Faults of the machine while writing end in one line, a non-zero exit and nothing complete.

Each write site of the project runs here against a real full filesystem (a small tmpfs) and a
real read-only one (a tmpfs remounted read-only: permission bits do not stop root, a read-only
mount does). What must hold: the error is one line naming the path the user knows (never a
temporary name) and the cause; a component exits 1 with that line last on stderr; nothing
that looks complete is left, and no temporary either.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from kfp_lightning.components.common.errors import WriteError
from kfp_lightning.components.common.files import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_text,
)
from kfp_lightning.components.common.storage import DirectoryStorage
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.download_mnist.download import (
    DownloadConfig,
    DownloadOptions,
    download_dataset,
)
from kfp_lightning.components.report_training.component import report_training
from kfp_lightning.components.report_training.report import write_training_report
from tests.component_runner import run_component
from tests.report_fixtures import evaluation_document, write_evaluation, write_training_logs

NO_SPACE = "no space left on device"
READ_ONLY = "read-only file system"
MB = 1 << 20


def _mount(target: Path, *options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[..., Path]]:
    """Mounts small tmpfs filesystems below `tmp_path`: `tmpfs(bytes, read_only=False)`.

    A read-only one can be given content first (`fill`), written before it is remounted.
    """
    mounted: list[Path] = []

    def mount(size: int, read_only: bool = False, fill: dict[str, bytes] | None = None) -> Path:
        target = tmp_path / f"fs{len(mounted)}"
        _mount(target, f"size={size}", "mode=755")
        mounted.append(target)
        for relative, data in (fill or {}).items():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (target / relative).write_bytes(data)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def files_below(root: Path) -> list[str]:
    """Every file below `root`, temporaries included."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def last_stderr_line(process: subprocess.CompletedProcess[str]) -> str:
    lines = process.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def test_a_read_only_tmpfs_stops_root(tmpfs):
    # What the read-only tests rely on: chmod 0555 would not stop root, this does.
    read_only = tmpfs(MB, read_only=True)
    with pytest.raises(OSError, match="Read-only file system"):
        (read_only / "x").write_bytes(b"x")


# --- the shared helpers, on which every artifact writer stands ---------------------------


def test_an_atomic_file_on_a_full_disk(tmpfs):
    full = tmpfs(MB)
    with pytest.raises(WriteError) as err:
        atomic_write_bytes(full / "data.bin", bytes(2 * MB))
    assert str(err.value) == f"{NO_SPACE} writing {full}/data.bin"
    assert files_below(full) == []


def test_an_atomic_directory_on_a_full_disk(tmpfs):
    # numpy's writer names no file: the directory being written is named.
    full = tmpfs(MB)

    def write_arrays() -> None:
        with atomic_directory(full / "arrays") as staging:
            (staging / "small.txt").write_text("fits")
            np.savez(staging / "big.npz", x=np.zeros(MB, dtype=np.uint8))

    with pytest.raises(WriteError) as err:
        write_arrays()
    assert str(err.value) == f"{NO_SPACE} writing {full}/arrays"
    assert list(full.iterdir()) == []


def test_torch_save_on_a_full_disk_says_so(tmpfs):
    # PyTorch's zip writer says "unexpected pos 576 vs 534": nothing about space.
    import torch

    full = tmpfs(MB)
    with pytest.raises(WriteError) as err, atomic_directory(full / "model") as staging:
        torch.save({"weights": torch.zeros(MB)}, staging / "weights.pt")
    assert str(err.value).startswith(f"{NO_SPACE} writing {full}/model: ")
    assert "\n" not in str(err.value)
    assert list(full.iterdir()) == []


def test_atomic_writes_to_a_read_only_folder(tmpfs):
    read_only = tmpfs(MB, read_only=True)
    with pytest.raises(WriteError) as err:
        atomic_write_text(read_only / "summary.json", "{}")
    assert str(err.value) == f"{READ_ONLY} writing {read_only}/summary.json"
    with pytest.raises(WriteError) as err, atomic_directory(read_only / "runs" / "model"):
        pass
    # The first folder that could not be made.
    assert str(err.value) == f"{READ_ONLY} writing {read_only}/runs"
    assert list(read_only.iterdir()) == []


def test_a_copy_to_a_full_location_names_the_destination(tmpfs, tmp_path):
    full = tmpfs(MB)
    source = tmp_path / "step=1.ckpt"
    source.write_bytes(bytes(2 * MB))
    with pytest.raises(WriteError) as err:
        DirectoryStorage(full / "run").upload(source, "checkpoints/step=1.ckpt")
    target = full / "run" / "checkpoints" / "step=1.ckpt"
    assert str(err.value) == f"{NO_SPACE} writing {target}"
    assert files_below(full) == []


def test_an_append_that_does_not_fit_is_cut_back(tmpfs, tmp_path):
    # A live event file grows by appends: a torn tail would be read as its last record.
    full = tmpfs(MB)
    source = tmp_path / "events.out.tfevents.1"
    source.write_bytes(b"a" * 1000)
    storage = DirectoryStorage(full)
    storage.upload(source, "run/events.out.tfevents.1")
    source.write_bytes(b"a" * 1000 + b"b" * (2 * MB))
    with pytest.raises(WriteError) as err:
        storage.upload(source, "run/events.out.tfevents.1", append_from=1000)
    assert str(err.value) == f"{NO_SPACE} writing {full}/run/events.out.tfevents.1"
    assert (full / "run" / "events.out.tfevents.1").read_bytes() == b"a" * 1000


def test_storage_on_a_read_only_location(tmpfs, tmp_path):
    read_only = tmpfs(MB, read_only=True, fill={"checkpoints/old.ckpt": b"old"})
    storage = DirectoryStorage(read_only)
    with pytest.raises(WriteError) as err:
        storage.delete("checkpoints/old.ckpt")
    assert str(err.value) == f"{READ_ONLY} writing {read_only}/checkpoints/old.ckpt"
    source = tmp_path / "new.ckpt"
    source.write_bytes(b"new")
    with pytest.raises(WriteError) as err:
        storage.upload(source, "checkpoints/new.ckpt")
    assert str(err.value) == f"{READ_ONLY} writing {read_only}/checkpoints/new.ckpt"
    with pytest.raises(WriteError) as err:
        storage.download("checkpoints/old.ckpt", read_only / "copy.ckpt")
    assert str(err.value) == f"{READ_ONLY} writing {read_only}/copy.ckpt"
    assert files_below(read_only) == ["checkpoints/old.ckpt"]


# --- the download -------------------------------------------------------------------------


def _download(http_mirror: str, md5: dict[str, str], destination: Path) -> None:
    config = DownloadConfig(http_mirror, md5)
    download_dataset(destination, config, DownloadOptions(retries=0))


def test_the_download_on_a_full_disk(tmpfs, http_mirror, mnist_mirror):
    full = tmpfs(MB)  # the synthetic set's arrays take 1.2 MB
    with pytest.raises(WriteError) as err:
        _download(http_mirror, mnist_mirror[1], full / "dataset")
    assert str(err.value) == f"{NO_SPACE} writing {full}/dataset/mnist.npz"
    assert list(full.iterdir()) == []


def test_the_download_into_a_read_only_folder(tmpfs, http_mirror, mnist_mirror):
    read_only = tmpfs(MB, read_only=True)
    with pytest.raises(WriteError) as err:
        _download(http_mirror, mnist_mirror[1], read_only / "dataset")
    assert str(err.value) == f"{READ_ONLY} writing {read_only}/dataset"


def test_the_download_component_on_a_full_disk(tmpfs, http_mirror, mnist_mirror):
    full = tmpfs(MB)
    process, outputs = run_component(
        download_mnist,
        full / "task",
        {"mirror": http_mirror, "expected_md5": mnist_mirror[1]},
        timeout=300,
    )
    assert process.returncode == 1, process.stderr
    expected = f"error: {NO_SPACE} writing {outputs['dataset']}/mnist.npz"
    assert last_stderr_line(process) == expected
    assert "Traceback" not in process.stderr
    assert [f for f in files_below(full) if "mnist" in f or "metadata" in f] == []


# --- the report -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report-inputs")
    write_training_logs(root / "logs", epochs=2, steps_per_epoch=60, log_every=10)
    write_evaluation(root / "evaluation", evaluation_document())
    return root / "logs", root / "evaluation"


def _report(inputs: tuple[Path, Path], folder: Path) -> None:
    write_training_report(*inputs, folder / "report.html", folder / "summary.md", "faults")


def test_the_report_on_a_full_disk(tmpfs, report_inputs):
    full = tmpfs(MB)  # the page alone (about 1.3 MB, most of it Plotly's script) does not fit
    with pytest.raises(WriteError) as err:
        _report(report_inputs, full)
    assert str(err.value) == f"{NO_SPACE} writing {full}/report.html"
    assert files_below(full) == []


def test_a_report_whose_summary_does_not_fit_leaves_neither(tmpfs, report_inputs, tmp_path):
    # Room for the page and not one byte more: the page is written, the summary is not.
    _report(report_inputs, tmp_path / "sized")
    page = (tmp_path / "sized" / "report.html").stat().st_size
    full = tmpfs(-(-page // 4096) * 4096)
    with pytest.raises(WriteError) as err:
        _report(report_inputs, full)
    assert str(err.value) == f"{NO_SPACE} writing {full}/summary.md"
    assert files_below(full) == []


def test_the_report_into_a_read_only_folder(tmpfs, report_inputs):
    read_only = tmpfs(MB, read_only=True)
    with pytest.raises(WriteError) as err:
        _report(report_inputs, read_only)
    assert str(err.value) == f"{READ_ONLY} writing {read_only}/report.html"


def test_the_report_component_on_a_full_disk(tmpfs, report_inputs):
    full = tmpfs(MB)
    logs, evaluation = report_inputs
    process, outputs = run_component(
        report_training,
        full / "task",
        input_artifacts={"tensorboard_logs": logs, "evaluation": evaluation},
        timeout=300,
    )
    assert process.returncode == 1, process.stderr
    expected = f"error: {NO_SPACE} writing {outputs['report']}"
    assert last_stderr_line(process) == expected
    assert "Traceback" not in process.stderr
    assert not outputs["report"].exists()
    assert not outputs["summary"].exists()


# --- training: the checkpoint copy, the event files, the model ------------------------------

# Trains one epoch on the synthetic set through `run_or_exit`, as the component does, with
# each output (and the live location) where argv says.
_TRAIN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.common.logs_location import parse_logs_root
    from kfp_lightning.components.common.training import TrainConfig
    from kfp_lightning.components.train_mnist.train import TrainingOutputs, run_training

    dataset, model, logs, evaluation, live = sys.argv[1:]
    config = TrainConfig(epochs=1, validation="200", gpus="0", log_every_n_steps=5)
    location = parse_logs_root(live).child("run-1") if live else None
    outputs = TrainingOutputs(Path(model), Path(logs), Path(evaluation))
    run_or_exit(run_training, dataset, outputs, config, location, live_update_seconds=1)
    """
)


def train(dataset: Path, out: Path, **where: Path) -> subprocess.CompletedProcess[str]:
    paths = {name: out / name for name in ("model", "logs", "evaluation")}
    paths.update(where)
    live = str(where.get("live", ""))
    argv = [sys.executable, "-c", _TRAIN, str(dataset)]
    argv += [str(paths[n]) for n in ("model", "logs", "evaluation")] + [live]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def test_the_checkpoint_copy_to_a_full_location(tmpfs, dataset, tmp_path):
    full = tmpfs(MB)  # a checkpoint is 14 MB
    process = train(dataset, tmp_path, live=full / "live")
    assert process.returncode == 1, process.stderr
    prefix = f"error: {NO_SPACE} writing {full}/live/run-1/checkpoints/step="
    assert last_stderr_line(process).startswith(prefix), process.stderr[-2000:]
    assert last_stderr_line(process).endswith(".ckpt")
    assert "Traceback" not in process.stderr
    assert [f for f in files_below(full) if "ckpt" in f] == []
    assert not (tmp_path / "model").exists()


def test_event_files_on_a_full_disk(tmpfs, dataset, tmp_path):
    # TensorBoard's writer thread meets the full disk; its owner raises it later.
    full = tmpfs(MB, fill={"filler": bytes(MB - 8192)})
    process = train(dataset, tmp_path, logs=full / "logs")
    assert process.returncode == 1, process.stderr
    assert last_stderr_line(process) == f"error: {NO_SPACE} writing {full}/logs"
    assert "Traceback" not in process.stderr
    assert files_below(full) == ["filler"]
    assert not (tmp_path / "model").exists()


def test_the_model_export_on_a_full_disk(tmpfs, dataset, tmp_path):
    # torch.export.save to a path aborted the process here (its writer's destructor throws
    # again): the export serialises in memory and writes with Python's file I/O.
    full = tmpfs(3 * MB)  # the program and the weights take 4.8 MB each
    process = train(dataset, tmp_path, model=full / "model")
    assert process.returncode == 1, process.stderr[-2000:]
    assert last_stderr_line(process).startswith(f"error: {NO_SPACE} writing {full}/model")
    assert "Traceback" not in process.stderr
    assert list(full.iterdir()) == []


def test_run_or_exit_reports_an_untranslated_fault_in_one_line(tmpfs):
    # The last resort for a write outside our helpers: one line, the file the system named.
    read_only = tmpfs(MB, read_only=True)
    code = (
        "from pathlib import Path; from kfp_lightning.components.common.errors import "
        f"run_or_exit; run_or_exit(Path({str(read_only / 'x.log')!r}).open, 'ab')"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert process.returncode == 1
    assert process.stderr == f"error: {READ_ONLY}: {read_only}/x.log\n"


def test_an_object_store_that_refuses_is_one_line(tmp_path, monkeypatch):
    # S3 has no disk to fill: a missing bucket or a denied write stands for its faults.
    from moto.server import ThreadedMotoServer

    from kfp_lightning.components.common.errors import RunError
    from kfp_lightning.components.common.storage import S3Storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "faults")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "faults-secret")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        storage = S3Storage("no-such-bucket", "run-1", f"http://{host}:{port}")
        source = tmp_path / "step=1.ckpt"
        source.write_bytes(b"checkpoint")
        with pytest.raises(RunError) as err:
            storage.upload(source, "checkpoints/step=1.ckpt")
        message = str(err.value)
        assert message.startswith(
            "could not upload to s3://no-such-bucket/run-1/checkpoints/step=1.ckpt: "
        )
        assert "NoSuchBucket" in message
        assert "\n" not in message
        with pytest.raises(RunError, match=r"^could not list s3://no-such-bucket/run-1/: "):
            storage.list_files()
    finally:
        server.stop()
