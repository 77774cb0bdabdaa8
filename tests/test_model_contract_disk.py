"""A full disk during the export ends in one line naming the file, and leaves no model behind.

Each of the three files of the Model artifact is made to meet a full disk in turn, on a real
tmpfs sized so that the files before it fit and it does not. The export runs in its own
process, through the components' entry point (`run_or_exit`), as in a pod: what the user sees
is its exit status and its stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PAGE = 4096

# Exports an untrained network (seeded: the same file sizes every time) to sys.argv[1].
_EXPORT = """
import sys, torch
from kfp_lightning.components.common.errors import run_or_exit
from kfp_lightning.components.train_mnist.export import export_model
from kfp_lightning.components.train_mnist.model import Net
torch.manual_seed(0)
run_or_exit(export_model, Net(), sys.argv[1], {"test_accuracy": 0.5})
"""


def _export(model_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _EXPORT, str(model_dir)], capture_output=True, text=True
    )


def _pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


@pytest.fixture(scope="module")
def sizes(tmp_path_factory) -> dict[str, int]:
    """Bytes of each file of the artifact, exported where space is plenty."""
    model_dir = tmp_path_factory.mktemp("plenty") / "model"
    process = _export(model_dir)
    assert process.returncode == 0, process.stderr
    return {p.name: p.stat().st_size for p in model_dir.iterdir()}


def _mount_tmpfs(directory: Path, size: int) -> None:
    directory.mkdir()
    process = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if process.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {process.stderr.strip()}")


@pytest.mark.parametrize("full_at", ["model.pt2", "weights.pt", "metadata.json"])
def test_full_disk_ends_in_one_line_and_leaves_no_model(tmp_path, sizes, full_at):
    # Written in this order: room for the files before `full_at`, and less than it needs.
    order = ["model.pt2", "weights.pt", "metadata.json"]
    before = sum(_pages(sizes[name]) for name in order[: order.index(full_at)])
    room = before + min(sizes[full_at] // 2, 1 << 20)
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, _pages(room) if full_at != "metadata.json" else before)
    try:
        process = _export(disk / "model")
        leftovers = sorted(p.name for p in disk.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
    assert process.returncode == 1, process.stderr
    # One line, naming the file by its final name (not the staging copy's) and the cause.
    expected = f"error: no space left on device writing {disk / 'model' / full_at}"
    (line,) = process.stderr.splitlines()
    assert line == expected or line.startswith(f"{expected}: "), line
    # No model directory, complete-looking or not, and no staging copy.
    assert leftovers == []
