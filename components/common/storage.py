"""A logs location's files: in a directory (local, or a mounted claim) or below an S3 prefix.

A location is reached through a `Storage`: list the files below it with their sizes, upload one
file, download one, delete one. TensorBoard event files only ever grow, so on a filesystem an
upload appends the new tail instead of rewriting the file (a reader holding the file open keeps
reading it), and an append that fails is cut back to where it started, so the file stays a
valid prefix; object stores cannot append, so there the whole (small) file is uploaded again. A
write fault of the machine becomes a `WriteError`, and an object store that refuses or cannot
be reached a `RunError`, each one line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from kfp_lightning.components.common.errors import RunError, invalid
from kfp_lightning.components.common.files import atomic_file, reported_write_faults
from kfp_lightning.components.common.logs_location import PVC_MOUNT_ROOT, LogsLocation

DEFAULT_REGION = "us-east-1"  # of an S3 store, unless $AWS_REGION names another


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
