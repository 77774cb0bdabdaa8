"""Atomic file and directory writes, so a crash or a rejected input never leaves half an artifact.

Everything is first written beside its destination (same filesystem, so the final rename is
atomic) and only renamed into place once complete; on any error the temporary copy is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    # Read it rather than set-and-restore: os.umask is process-wide, and threads write files too.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


@contextlib.contextmanager
def atomic_directory(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields an empty staging directory that replaces `destination` when the block succeeds.

    Args:
        destination: The directory to create. An existing empty directory (KFP sometimes
            creates the artifact path) is replaced; a non-empty one is an error.

    Yields:
        The staging directory to fill.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    # mkdtemp makes it private (0700); artifacts are read by other users and tools.
    staging.chmod(0o777 & ~_umask())
    try:
        yield staging
        if destination.is_dir() and not any(destination.iterdir()):
            destination.rmdir()
        elif destination.is_file() and destination.stat().st_size == 0:
            destination.unlink()
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside `destination` that replaces it when the block succeeds.

    The temporary file keeps `destination`'s suffix (some writers insist on one) and is
    removed if the block fails, so `destination` is either untouched or complete.

    Args:
        destination: The file to create or replace.

    Yields:
        The path to write.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{destination.stem}.", suffix=destination.suffix, dir=destination.parent
    )
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, destination)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(destination: str | os.PathLike[str], data: bytes) -> None:
    """Writes `data` to `destination` through a temporary file and an atomic rename.

    Args:
        destination: File to write.
        data: Full content.
    """
    with atomic_file(destination) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(destination: str | os.PathLike[str], text: str) -> None:
    """Writes UTF-8 `text` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(destination, text.encode("utf-8"))


def write_json(destination: str | os.PathLike[str], value: object) -> None:
    """Writes `value` as indented, key-sorted JSON, atomically.

    Raises:
        ValueError: `value` holds a NaN or an infinity, which JSON cannot represent (Python
            would write the non-standard `NaN`, which KFP and most readers reject).
    """
    text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(destination, text + "\n")
