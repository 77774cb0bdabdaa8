"""Writes that never leave half a file, and the one-line message for a write that fails.

Everything is first written beside its destination (same filesystem, so the final rename is
atomic) and only renamed into place once complete; on any error the temporary copy is removed.
A fault of the machine met while writing (a full disk, a read-only mount, a quota, an I/O
error) becomes a `WriteError`: one line naming the path as the user knows it (never the
temporary name) and the cause, which `run_or_exit` prints before exiting non-zero. PyTorch's
zip writer reports a full disk as a bare `RuntimeError` ("unexpected pos 576 vs 534"); such an
error is recognised by the free space left on the filesystem it was writing to.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from kfp_lightning.components.common.errors import WRITE_FAULT_CAUSES, RunError, WriteError

NO_SPACE = WRITE_FAULT_CAUSES[28]
# A write that fails for lack of space first fills the filesystem up to its last blocks; with
# less than this left, a writer's failure is taken to be that.
FULL_BELOW_BYTES = 1 << 20
# What PyTorch's C++ zip writer (torch.save, torch.export.save) says when a write fails.
_TORCH_WRITER_MARKS = ("PytorchStreamWriter", "inline_container", "file write failed")


def _umask() -> int:
    # Read it rather than set-and-restore: os.umask is process-wide, and threads write files too.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _shown_path(filename: object, destination: Path, staging: Path | None) -> Path | None:
    """What the user should read for `filename`: its final name, not a temporary one.

    Returns None for a file that is neither the destination, its temporary copy, nor a folder
    above it: a fault there was not met writing it (an input that could not be read).
    """
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return destination
    path = Path(os.fsdecode(filename))
    if staging is not None and path.is_relative_to(staging):
        return destination / path.relative_to(staging)
    if path.is_relative_to(destination) or path in destination.parents:
        return path
    # The temporary beside the destination (mkstemp/mkdtemp named it ".<name>.<random>").
    if path.parent == destination.parent and path.name.startswith(f".{destination.stem}."):
        return destination
    return None


def write_fault(
    err: BaseException, destination: str | os.PathLike[str], staging: Path | None = None
) -> WriteError | None:
    """The one-line error for a fault of the machine met while writing `destination`.

    Args:
        err: What the writing code raised.
        destination: What was being written, as the user knows it.
        staging: The temporary file or folder actually written, when there is one; paths in
            it are shown as the matching paths of `destination`.

    Returns:
        The `WriteError` to raise instead, or None when `err` is no such fault (a bug, a bad
        input, an interrupt): those are raised as they are.
    """
    destination = Path(destination)
    if isinstance(err, WriteError):
        shown = _shown_path(err.path, destination, staging)
        if staging is None or shown is None or shown == Path(err.path):
            return None
        return WriteError(shown, err.cause, err.detail)
    if isinstance(err, RunError) or not isinstance(err, Exception):
        return None
    # The chain of causes and contexts, each once (a chain may loop).
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in WRITE_FAULT_CAUSES:
            # A copy or rename names its source first and what it wrote second.
            written = cause.filename if cause.filename2 is None else cause.filename2
            shown = _shown_path(written, destination, staging)
            if shown is None:
                return None
            # The cause is the errno in words: the system's own text would say it twice.
            return WriteError(shown, WRITE_FAULT_CAUSES[cause.errno])
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, RuntimeError) and any(mark in str(err) for mark in _TORCH_WRITER_MARKS):
        # The free bytes of an unprivileged writer (statvfs's f_bavail * f_frsize) on the
        # filesystem written, found from the nearest folder that exists.
        written = Path(staging or destination)
        full = False
        for candidate in (written, *written.parents):
            with contextlib.suppress(OSError):
                full = shutil.disk_usage(candidate).free < FULL_BELOW_BYTES
                break
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        return WriteError(destination, NO_SPACE if full else "could not write", detail)
    return None


@contextlib.contextmanager
def reported_write_faults(
    destination: str | os.PathLike[str], staging: Path | None = None
) -> Iterator[None]:
    """Turns a fault of the machine met in the block into a one-line `WriteError`.

    For writers that do not go through `atomic_file` or `atomic_directory` (a framework's
    own save, an appended log). What the block leaves behind is the caller's to remove.

    Args:
        destination: What the block writes, as the user knows it.
        staging: The temporary the block really writes, if any (see `write_fault`).

    Raises:
        WriteError: For a full disk, a read-only or missing mount, a quota, an I/O error...
    """
    try:
        yield
    except Exception as err:
        fault = write_fault(err, destination, staging)
        if fault is None:
            raise
        raise fault from err


@contextlib.contextmanager
def atomic_file(destination: str | os.PathLike[str], folder: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `destination` that replaces it when the block succeeds.

    The temporary file keeps `destination`'s suffix (some writers insist on one) and is
    removed if the block fails, so `destination` is either untouched or complete.

    Args:
        destination: The file to create or replace.
        folder: Yield an empty staging directory instead, to fill (`atomic_directory`). An
            existing empty directory at `destination` (KFP sometimes creates the artifact
            path) is replaced; a non-empty one is an error.

    Yields:
        The temporary path to write (a file, or with `folder` a directory).

    Raises:
        WriteError: The disk is full, the folder read-only... (see `write_fault`), whether
            met here or by the block's writes into the temporary; the temporary is removed
            and `destination` is left as it was.
    """
    # A symbolic link is written through, as open() does, not replaced by a file.
    suffix, destination = Path(destination).suffix, Path(os.path.realpath(destination))
    with reported_write_faults(destination):
        if destination.is_symlink():  # where realpath stopped: the links loop
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(destination))
        # As open() would, a file is replaced only where this user may write it.
        if not folder and destination.is_file() and not os.access(destination, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(destination))
        destination.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
        else:
            # The temporary file keeps the suffix asked for (some writers insist on one).
            fd, name = tempfile.mkstemp(
                prefix=f".{destination.stem}.", suffix=suffix, dir=destination.parent
            )
            os.close(fd)
            staging = Path(name)
    try:
        # Faults are judged in here, before the temporary is removed: its size is what filled
        # the disk.
        with reported_write_faults(destination, staging):
            # mkdtemp and mkstemp make it private (0700, 0600); artifacts are read by other
            # users and tools. A file replaced keeps its mode, as one written in place would.
            replaced = not folder and destination.is_file()
            mode = destination.stat().st_mode & 0o777 if replaced else 0o666 & ~_umask()
            staging.chmod(0o777 & ~_umask() if folder else mode)
            yield staging
            # An existing empty directory (KFP sometimes creates the artifact path) is replaced;
            # a non-empty one is an error.
            if folder and destination.is_dir() and not any(destination.iterdir()):
                destination.rmdir()
            elif folder and destination.is_file() and destination.stat().st_size == 0:
                destination.unlink()
            os.replace(staging, destination)
    except BaseException:
        if folder:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
        raise


def atomic_directory(
    destination: str | os.PathLike[str],
) -> contextlib.AbstractContextManager[Path]:
    """`atomic_file` for a folder: yields an empty staging directory that replaces `destination`.

    Raises:
        WriteError: See `atomic_file`.
    """
    return atomic_file(destination, folder=True)


def atomic_write_bytes(destination: str | os.PathLike[str], data: bytes | str) -> None:
    """Writes `data` (text as UTF-8) to `destination` through a temporary file and an atomic rename.

    Args:
        destination: File to write.
        data: Full content.

    Raises:
        WriteError: See `atomic_file`.
    """
    atomic_write_files({destination: data})


def atomic_write_text(destination: str | os.PathLike[str], text: str) -> None:
    """Writes `text` as UTF-8 to `destination`, atomically (see `atomic_write_bytes`)."""
    atomic_write_files({destination: text})


def atomic_write_files(contents: Mapping[str | os.PathLike[str], bytes | str]) -> None:
    """Writes several files, each atomically, renaming none into place before all are written.

    A set of outputs that belong together (a report and its summary): a fault while writing
    any of them leaves none of them behind.

    Args:
        contents: Destination -> full content (text is written as UTF-8).

    Raises:
        WriteError: See `atomic_file`.
    """
    with contextlib.ExitStack() as stack:
        for destination, content in contents.items():
            tmp = stack.enter_context(atomic_file(destination))
            with tmp.open("wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
                f.flush()
                os.fsync(f.fileno())


def write_json(destination: str | os.PathLike[str], value: object) -> None:
    """Writes `value` as indented, key-sorted JSON, atomically.

    Raises:
        ValueError: `value` holds a NaN or an infinity, which JSON cannot represent (Python
            would write the non-standard `NaN`, which KFP and most readers reject).
        WriteError: See `atomic_file`.
    """
    text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(destination, text + "\n")


def share_like_umask(root: str | os.PathLike[str], umask: int | None = None) -> None:
    """Gives every file and folder below `root` the permissions the umask gives a plain one.

    For what a library wrote private (kfp.local's cache writes 0600 files through
    `tempfile.mkstemp`): afterwards everything below `root` reads as if it had been created
    with `open()` and `mkdir()` under the umask. `root` itself is left alone (it may be the
    user's own folder). Symbolic links are neither followed nor changed; files another user
    owns (which we cannot change) and files removed meanwhile are skipped.

    Args:
        root: The folder whose contents to fix.
        umask: The umask to honour; the process's when None.

    Raises:
        WriteError: A permission cannot be changed for a fault of the machine (a read-only
            file system...).
    """
    umask = _umask() if umask is None else umask

    def unreadable(err: OSError) -> None:
        if not isinstance(err, FileNotFoundError):  # removed meanwhile: nothing to change
            cause = WRITE_FAULT_CAUSES.get(err.errno or 0, "cannot read")
            raise WriteError(Path(err.filename), cause) from err

    # Top-down, without following links: a folder is opened up before it is listed.
    for folder, folders, files in os.walk(root, onerror=unreadable):
        for name in [*folders, *files]:
            path = os.path.join(folder, name)
            # Other faults of the machine (a read-only file system...) become a `WriteError`.
            with reported_write_faults(path):
                try:
                    mode = os.lstat(path).st_mode
                    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                        continue  # links, sockets, pipes
                    # What a plain create gives: folders and executable files start from
                    # 0777, other files from 0666; the set-id and sticky bits are kept.
                    full = 0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666
                    wanted = (stat.S_IMODE(mode) & 0o7000) | (full & ~umask)
                    if stat.S_IMODE(mode) != wanted:
                        # Checked above not to be a link (Linux cannot chmod without following).
                        os.chmod(path, wanted)
                except (FileNotFoundError, PermissionError):
                    # Removed meanwhile, or another user's file: skipped, and not entered.
                    if name in folders:
                        folders.remove(name)
