"""What a correct MNIST download is, and the downloader: mirrors, checksums, one array file.

The four standard `*-ubyte.gz` files are fetched with a per-request timeout, retried across every
mirror with exponential backoff, decompressed, and checked against the MD5 of the *uncompressed*
files (a mirror may recompress, so the .gz bytes are not comparable). Their IDX content becomes
uint8 arrays, saved with their metadata into a directory that only appears once it is complete.
The download parameters (`DownloadConfig`) are free of torch, so the pipeline CLI checks them
before anything starts. torchvision is not used: its `download_url` has no timeout (one stalled
mirror would hang the pod until the task's deadline), and importing torch and torchvision for
its IDX readers took this task about 6 of its 8 seconds on two cores, seconds every run waits
before its first curve; the IDX format is a big-endian header and raw bytes, which numpy reads
directly.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import numpy as np
import pydantic

from kfp_lightning.components.common.dataset import DATA_FILE, FORMAT, METADATA_FILE
from kfp_lightning.components.common.errors import DownloadError, invalid
from kfp_lightning.components.common.files import (
    atomic_directory,
    reported_write_faults,
    write_json,
)
from kfp_lightning.components.common.run_form import from_run_form, run_config, run_parameter

# MD5 of the official, uncompressed IDX files, as published with the data set.
MNIST_MD5: Mapping[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Images in the official training files: what a run with the published checksums trains on.
MNIST_TRAIN_SAMPLES = 60_000

# torchvision's MNIST mirrors (torchvision.datasets.MNIST.mirrors), written out so the CLI and
# the compiler need not import torchvision; a test holds the two equal.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRROR_SCHEMES = ("http", "https", "file")
MIRRORS_ACCEPTED = "comma-separated base URLs of the form http(s)://host/path/ or file:///path/"


CHECKSUMS_ACCEPTED = "a 32-hex-digit MD5 for each of " + ", ".join(MNIST_MD5)


def _standard_files(table: dict[str, str]) -> dict[str, str]:
    """The table in the files' order; a name missing or unknown is named in the message."""
    missing = [f"missing {name}" for name in MNIST_MD5 if name not in table]
    if wrong := missing + [f"unknown {name}" for name in table if name not in MNIST_MD5]:
        raise invalid("expected_md5", table, f"{CHECKSUMS_ACCEPTED} ({'; '.join(wrong)})")
    return {name: table[name].lower() for name in MNIST_MD5}


# File name -> MD5 of its uncompressed content; None or empty: the published ones.
Checksums = Annotated[
    dict[str, Annotated[str, pydantic.Field(pattern=r"^[0-9a-fA-F]{32}$")]],
    pydantic.Field(description=CHECKSUMS_ACCEPTED),
    pydantic.BeforeValidator(lambda table: table or dict(MNIST_MD5)),
    pydantic.AfterValidator(_standard_files),
]


@run_config
class DownloadConfig:
    """Where MNIST comes from and what it must be; validated on construction."""

    mirror: str = run_parameter(",".join(DEFAULT_MIRRORS))
    """Base URLs holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
    t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, comma-separated, tried in order
    (http://, https:// or file:///path/). Default: torchvision's public mirrors; point it at
    an internal mirror on air-gapped clusters."""
    expected_md5: Checksums = run_parameter(default_factory=lambda: dict(MNIST_MD5))
    """MD5 of each uncompressed file, by file name. Default (and for `{}`): the published MNIST
    checksums; change it only to train on another MNIST-format data set."""

    @pydantic.field_validator("mirror")
    @classmethod
    def _mirrors(cls, mirror: str) -> str:
        """Splits a comma- or space-separated list of mirror base URLs and checks each one.

        Returns:
            The base URLs (`DEFAULT_MIRRORS` for an empty value), each ending with "/",
            comma-separated.

        Raises:
            UserInputError: When a URL has another scheme, no host (http/https), or a host or
                no absolute path (file).
        """
        urls = []
        for url in mirror.replace(",", " ").split() or DEFAULT_MIRRORS:
            parts = urlparse(url)
            if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
                # file://tmp/data/ names the host "tmp" (RFC 8089), not the directory /tmp/data/.
                expected = f"file:///{parts.netloc}{parts.path} (three slashes for a path)"
                raise invalid("mirror", url, expected)
            where = parts.path.startswith("/") if parts.scheme == "file" else parts.netloc
            if parts.scheme not in MIRROR_SCHEMES or not where or parts.query or parts.fragment:
                raise invalid("mirror", url, MIRRORS_ACCEPTED)
            urls.append(url if url.endswith("/") else url + "/")
        return ",".join(urls)

    @property
    def mirrors(self) -> tuple[str, ...]:
        """The base URLs, each ending with "/", in the order they are tried."""
        return tuple(self.mirror.split(","))

    @property
    def published_checksums(self) -> bool:
        """Whether the files must be the official MNIST (so its sizes are known in advance)."""
        return self.expected_md5 == dict(MNIST_MD5)


def read_idx(data: bytes, dims: int, name: str) -> np.ndarray:
    """The uint8 array of an IDX file (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS").

    Args:
        data: The uncompressed file.
        dims: Its expected number of dimensions (3 for images, 1 for labels).
        name: The file's name, for errors.

    Raises:
        DownloadError: Not an unsigned-byte IDX file of `dims` dimensions, or a wrong length.
    """
    header = 4 + 4 * dims
    # The magic number: two zero bytes, the type (0x08: unsigned byte), the number of dimensions.
    if len(data) < header or int.from_bytes(data[:4], "big") != 0x0800 + dims:
        raise DownloadError(f"{name} is not an IDX file of {dims}-dimensional unsigned bytes")
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">u4", count=dims, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise DownloadError(f"{name} holds {len(data) - header} bytes, not {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@run_config
class DownloadOptions:
    """How hard to try before giving up on the mirrors; validated on construction.

    Attributes:
        timeout_seconds: Socket timeout of each request; a stalled transfer fails after this.
        retries: Extra rounds over all mirrors after the first one fails for a file.
        backoff_seconds: Pause before the second round; doubles each round, capped at 60 s.
    """

    timeout_seconds: Annotated[float, pydantic.Field(gt=0, description="a number > 0")] = 60.0
    retries: Annotated[int, pydantic.Field(strict=True, ge=0, description="an integer >= 0")] = 3
    backoff_seconds: Annotated[float, pydantic.Field(ge=0, description="a number >= 0")] = 2.0


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, urllib.error.URLError):
        if isinstance(err.reason, TimeoutError):
            return "timed out"
        if isinstance(err.reason, OSError) and err.reason.filename:  # a file:// mirror's file
            return str(err.reason.strerror).lower()
        return f"unreachable ({err.reason})"
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, http.client.IncompleteRead):
        return f"truncated: got {len(err.partial)} bytes, {err.expected} more expected"
    if isinstance(err, (EOFError, gzip.BadGzipFile, zlib.error)):
        return f"not a complete gzip file ({err})"
    return " ".join(f"{type(err).__name__}: {err}".split())


def _is_permanent(err: BaseException) -> bool:
    """Whether asking the same HTTP mirror again cannot help: an answer about the request itself.

    That is a 4xx status, but 408 Request Timeout and 429 Too Many Requests, which RFC 9110 and
    RFC 6585 mean to be retried.
    """
    return isinstance(err, urllib.error.HTTPError) and (
        400 <= err.code < 500 and err.code not in (408, 429)
    )


def fetch_verified(
    name: str, mirrors: tuple[str, ...], md5: str, options: DownloadOptions
) -> tuple[bytes, str]:
    """Fetches `<mirror><name>.gz` from the first mirror that serves the expected content.

    Args:
        name: Uncompressed file name, e.g. "train-images-idx3-ubyte".
        mirrors: Base URLs, each ending with "/".
        md5: Expected MD5 of the uncompressed content.
        options: Timeouts and retry policy.

    Returns:
        The uncompressed bytes and the URL they came from.

    Raises:
        DownloadError: After every round over every mirror failed; lists each mirror's last error.
            A mirror that cannot succeed later (a `file://` one, or `_is_permanent`) is not
            asked again, and the download fails at once when every mirror is such a one.
    """
    failures: dict[str, str] = {}
    gone: set[str] = set()  # mirrors that failed in a way no later round can change
    rounds = 0
    while rounds <= options.retries and (left := [m for m in mirrors if m not in gone]):
        if rounds:
            time.sleep(min(options.backoff_seconds * 2 ** (rounds - 1), 60.0))
        rounds += 1
        for mirror in left:
            url = f"{mirror}{name}.gz"
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "kfp-lightning"})
                # A body shorter than its Content-Length raises `http.client.IncompleteRead`
                # (`HTTPResponse.read` checks it), never a truncated body.
                with urllib.request.urlopen(request, timeout=options.timeout_seconds) as response:
                    data = gzip.decompress(response.read())
            except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as err:
                failures[url] = _describe(err)
                permanent = _is_permanent(err)
            else:
                digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
                if digest == md5:
                    return data, url
                failures[url] = f"checksum mismatch (md5 {digest}, expected {md5})"
                permanent = False
            # A local file reads the same in every round: whatever is wrong with it stays so.
            if permanent or urlparse(mirror).scheme == "file":
                gone.add(mirror)
    detail = "; ".join(f"{url}: {why}" for url, why in failures.items())
    raise DownloadError(f"could not download {name}.gz after {rounds} round(s): {detail}")


def download_dataset(
    output_dir: str | Path,
    config: DownloadConfig = DownloadConfig(),
    options: DownloadOptions = DownloadOptions(),
) -> dict[str, object]:
    """Downloads, verifies and stores MNIST (or any MNIST-format set) as a Dataset directory.

    Args:
        output_dir: Directory to create; it appears only once everything is verified.
        config: The mirrors and the expected checksums; by default, the public MNIST.
        options: Timeouts and retries; the defaults suit public mirrors.

    Returns:
        The dataset metadata that was written to `metadata.json`.

    Raises:
        DownloadError: When a file cannot be obtained with the expected content.
        WriteError: When `output_dir` cannot be written (a full disk, a read-only folder);
            nothing is left behind.
    """
    with atomic_directory(output_dir) as staging:
        arrays: dict[str, np.ndarray] = {}
        sources, sha256 = {}, {}
        for name, md5 in config.expected_md5.items():
            data, url = fetch_verified(name, config.mirrors, md5, options)
            sources[name], sha256[name] = url, hashlib.sha256(data).hexdigest()
            split = "train" if name.startswith("train") else "test"
            kind, dims = ("images", 3) if "images" in name else ("labels", 1)
            arrays[f"{split}_{kind}"] = read_idx(data, dims, name)
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if images.ndim != 3 or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
                shapes = f"{tuple(images.shape)} images, {tuple(labels.shape)} labels"
                raise DownloadError(f"{split} files disagree: {shapes}")
            if int(labels.max()) > 9:
                raise DownloadError(f"{split} labels outside 0..9 (max {int(labels.max())})")

        metadata: dict[str, object] = {
            "format": FORMAT,
            "train_samples": int(arrays["train_images"].shape[0]),
            "test_samples": int(arrays["test_images"].shape[0]),
            "image_shape": list(arrays["train_images"].shape[1:]),
            "num_classes": 10,
            "md5": config.expected_md5,
            "sha256": sha256,
            "sources": sources,
        }
        # Uncompressed: the bytes are already verified, and loading needs no inflating.
        # (numpy's zip writer names no file when the disk fills up: this names it.)
        with reported_write_faults(staging / DATA_FILE):
            np.savez(staging / DATA_FILE, **arrays)
        write_json(staging / METADATA_FILE, metadata)
    return metadata


def download_from_run_form(output_dir: str | Path, parameters: Mapping[str, Any]) -> dict:
    """The KFP component's entry: validates the run-form values, then downloads.

    Raises:
        UserInputError: For a malformed mirror or checksum table (nothing is written).
    """
    metadata = download_dataset(output_dir, from_run_form(DownloadConfig, parameters))
    # The task's line in its log (and in `--local`'s terminal): what it got, and from where.
    mirrors = sorted({url.rsplit("/", 1)[0] + "/" for url in metadata["sources"].values()})
    print(
        f"dataset: {metadata['train_samples']} training and {metadata['test_samples']} test "
        f"images from {', '.join(mirrors)}, checksums verified"
    )
    return metadata
