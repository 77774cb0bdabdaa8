"""Writes that never leave half a file: atomic local writes, and copies to and from a location.

Everything is first written beside its destination (same filesystem, so the final rename is
atomic) and only renamed into place once complete; on any error the temporary copy is removed.
A logs location (a directory, local or a mounted claim, or an S3 prefix) is reached through a
`Storage`: list the files below it with their sizes, upload one file, download one, delete one.
TensorBoard event files only ever grow, so on a filesystem an upload appends the new tail
instead of rewriting the file (a reader holding the file open keeps reading it), and an append
that fails is cut back to where it started, so the file stays a valid prefix; object stores
cannot append, so there the whole (small) file is uploaded again.

A fault of the machine met while writing (a full disk, a read-only mount, a quota, an I/O
error) becomes a `WriteError`: one line naming the path as the user knows it (never the
temporary name) and the cause, which `run_or_exit` prints before exiting non-zero; an object
store that refuses or cannot be reached becomes a `RunError`, one line too. PyTorch's zip writer
reports a full disk as a bare `RuntimeError` ("unexpected pos 576 vs 534"); such an error is
recognised by the free space left on the filesystem it was writing to.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from kfp_lightning.components.common.errors import WRITE_FAULT_CAUSES, RunError, WriteError, invalid
from kfp_lightning.components.common.logs_location import PVC_MOUNT_ROOT, LogsLocation

NO_SPACE = WRITE_FAULT_CAUSES[28]
DEFAULT_REGION = "us-east-1"  # of an S3 store, unless $AWS_REGION names another
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
            detail = f"[Errno {cause.errno}] {cause.strerror}"
            return WriteError(shown, WRITE_FAULT_CAUSES[cause.errno], detail)
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
    destination = Path(destination)
    with reported_write_faults(destination):
        destination.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
        else:
            # The temporary file keeps `destination`'s suffix (some writers insist on one).
            fd, name = tempfile.mkstemp(
                prefix=f".{destination.stem}.", suffix=destination.suffix, dir=destination.parent
            )
            os.close(fd)
            staging = Path(name)
    try:
        # Faults are judged in here, before the temporary is removed: its size is what filled
        # the disk.
        with reported_write_faults(destination, staging):
            # mkdtemp and mkstemp make it private (0700, 0600); artifacts are read by other
            # users and tools.
            staging.chmod((0o777 if folder else 0o666) & ~_umask())
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


class DirectoryStorage:
    """A location that is a directory of this machine (local, or a mounted volume).

    Args:
        root: The directory; created on first upload.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def list_files(self) -> dict[str, int]:
        # Nothing for a root not created yet (rglob finds nothing below a missing folder).
        return {
            p.relative_to(self.root).as_posix(): p.stat().st_size
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }

    def upload(self, source: Path, relative: str, append_from: int | None = None) -> None:
        """Copies `source` to `relative`, or appends its bytes from `append_from` on.

        Raises:
            WriteError: The location is full, read-only... (see `write_fault`).
        """
        target = self.root / relative
        if append_from is not None and target.is_file() and target.stat().st_size == append_from:
            with reported_write_faults(target):
                try:
                    with source.open("rb") as src, target.open("ab") as dst:
                        src.seek(append_from)
                        shutil.copyfileobj(src, dst)
                except BaseException:
                    # A torn record at the end would be read as the file's last event.
                    with contextlib.suppress(OSError):
                        os.truncate(target, append_from)
                    raise
            return
        with atomic_file(target) as tmp:
            shutil.copyfile(source, tmp)

    def download(self, relative: str, destination: Path) -> None:
        """Copies `relative` to `destination` atomically.

        Raises:
            WriteError: `destination`'s disk is full, read-only...
        """
        with atomic_file(destination) as tmp:
            shutil.copyfile(self.root / relative, tmp)

    def delete(self, relative: str) -> None:
        """Removes `relative`, if it is there.

        Raises:
            WriteError: The location is read-only...
        """
        target = self.root / relative
        with reported_write_faults(target):
            target.unlink(missing_ok=True)


class S3Storage:
    """A location in an S3-compatible bucket (path-style addressing, as MinIO and SeaweedFS need).

    Credentials come from the standard AWS environment (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, which the pipeline fills from the namespace's secret).

    Args:
        bucket: Bucket name.
        prefix: Key prefix without leading or trailing "/".
        endpoint: http(s)://host[:port] of the S3 API.
    """

    def __init__(self, bucket: str, prefix: str, endpoint: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=os.environ.get("AWS_REGION") or DEFAULT_REGION,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=10,
                read_timeout=60,
                retries={"max_attempts": 4, "mode": "standard"},
            ),
        )

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def list_files(self) -> dict[str, int]:
        start = self._key("")
        paginator = self.client.get_paginator("list_objects_v2")
        with self._refusals("list", ""):
            # Every page's objects; a page without any (no "Contents") yields None.
            items = paginator.paginate(Bucket=self.bucket, Prefix=start).search("Contents[]")
            return {item["Key"][len(start) :]: int(item["Size"]) for item in items if item}

    @contextlib.contextmanager
    def _refusals(self, action: str, relative: str) -> Iterator[None]:
        """Turns the store's refusal (no bucket, no permission, unreachable) into one line."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (Boto3Error, BotoCoreError, ClientError) as err:
            detail = " ".join(str(err).split())
            uri = f"s3://{self.bucket}/{self._key(relative)}"
            raise RunError(f"could not {action} {uri}: {detail}") from err

    def upload(self, source: Path, relative: str, append_from: int | None = None) -> None:
        """Uploads all of `source` (objects cannot be appended to).

        Raises:
            RunError: The store refused or could not be reached.
        """
        with self._refusals("upload to", relative):
            self.client.upload_file(str(source), self.bucket, self._key(relative))

    def download(self, relative: str, destination: Path) -> None:
        """Downloads `relative` to `destination` atomically.

        Raises:
            RunError: The store refused or could not be reached.
            WriteError: `destination`'s disk is full, read-only...
        """
        with atomic_file(destination) as tmp, self._refusals("download", relative):
            self.client.download_file(self.bucket, self._key(relative), str(tmp))

    def delete(self, relative: str) -> None:
        """Removes `relative` (no error if it is already gone).

        Raises:
            RunError: The store refused or could not be reached.
        """
        with self._refusals("delete", relative):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(relative))


# Files below one location, addressed by relative POSIX paths: `list_files` (relative path ->
# size), `upload` (with `append_from`, only the bytes from that offset on), `download`
# (atomically) and `delete` (no error when already gone).
Storage = DirectoryStorage | S3Storage


def open_storage(location: LogsLocation, s3_endpoint: str | None = None) -> Storage:
    """The storage behind a location.

    Args:
        location: Where the files live.
        s3_endpoint: Required for s3:// locations.

    Returns:
        A `Storage` for it.

    Raises:
        UserInputError: For an s3:// location without endpoint, or a pvc:// claim that is not
            mounted in this pod.
    """
    if location.scheme == "file":
        return DirectoryStorage(Path(location.path))
    if location.scheme == "pvc":
        mount = PVC_MOUNT_ROOT / location.claim
        if not mount.is_dir():
            raise invalid(
                "tensorboard_logs_root",
                location.uri,
                f"a pvc:// claim mounted in the training pod at {mount} "
                "(compile the pipeline with --logs-pvc CLAIM)",
            )
        return DirectoryStorage(mount / location.path)
    if not s3_endpoint:
        raise invalid("s3_endpoint", s3_endpoint, "an http(s)://host[:port] endpoint for s3://")
    return S3Storage(location.bucket, location.path, s3_endpoint)
