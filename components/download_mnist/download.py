"""Download MNIST from one or more mirrors, verify it, and store it as one compact tensor file.

The four standard `*-ubyte.gz` files are fetched with a per-request timeout, retried across every
mirror with exponential backoff, decompressed, and checked against the MD5 of the *uncompressed*
files (a mirror may recompress, so the .gz bytes are not comparable). torchvision's IDX readers
then turn them into uint8 tensors, saved with their metadata into a directory that only appears
once it is complete. torchvision's own `download_url` is not used for the transfer: it has no
timeout, so one stalled mirror would hang the pod until the task's deadline.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from kfp_lightning.components.common.errors import DownloadError, invalid
from kfp_lightning.components.common.files import atomic_directory, write_json
from kfp_lightning.components.common.run_form import from_run_form
from kfp_lightning.components.download_mnist.sources import DownloadConfig

DATA_FILE = "mnist.pt"
METADATA_FILE = "metadata.json"
FORMAT = "kfp-lightning/mnist-tensors-v1"

USER_AGENT = "kfp-lightning"


@dataclasses.dataclass(frozen=True)
class DownloadOptions:
    """How hard to try before giving up on the mirrors.

    Attributes:
        timeout_seconds: Socket timeout of each request; a stalled transfer fails after this.
        retries: Extra rounds over all mirrors after the first one fails for a file.
        backoff_seconds: Pause before the second round; doubles each round, capped at 60 s.
    """

    timeout_seconds: float = 60.0
    retries: int = 3
    backoff_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not self.timeout_seconds > 0:
            raise invalid("timeout_seconds", self.timeout_seconds, "a number > 0")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise invalid("retries", self.retries, "an integer >= 0")
        if not self.backoff_seconds >= 0:
            raise invalid("backoff_seconds", self.backoff_seconds, "a number >= 0")


def _fetch(url: str, timeout: float) -> bytes:
    """Returns the body at `url`, failing on a short read rather than returning a truncated body."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
        expected = response.headers.get("Content-Length") if hasattr(response, "headers") else None
    if expected is not None and expected.isdigit() and len(body) != int(expected):
        raise OSError(f"truncated: got {len(body)} of {expected} bytes")
    return body


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, urllib.error.URLError):
        if isinstance(err.reason, TimeoutError):
            return "timed out"
        return f"unreachable ({err.reason})"
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, http.client.IncompleteRead):
        return f"truncated: got {len(err.partial)} bytes, {err.expected} more expected"
    if isinstance(err, (EOFError, gzip.BadGzipFile, zlib.error)):
        return f"not a complete gzip file ({err})"
    return " ".join(f"{type(err).__name__}: {err}".split())


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
    """
    failures: dict[str, str] = {}
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(min(options.backoff_seconds * 2 ** (attempt - 1), 60.0))
        for mirror in mirrors:
            url = f"{mirror}{name}.gz"
            try:
                data = gzip.decompress(_fetch(url, options.timeout_seconds))
            except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as err:
                failures[url] = _describe(err)
                continue
            digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if digest == md5:
                return data, url
            failures[url] = f"checksum mismatch (md5 {digest}, expected {md5})"
    detail = "; ".join(f"{url}: {why}" for url, why in failures.items())
    raise DownloadError(
        f"could not download {name}.gz after {options.retries + 1} round(s): {detail}"
    )


def download_dataset(
    output_dir: str | Path,
    config: DownloadConfig | None = None,
    options: DownloadOptions | None = None,
) -> dict[str, object]:
    """Downloads, verifies and stores MNIST (or any MNIST-format set) as a Dataset directory.

    Args:
        output_dir: Directory to create; it appears only once everything is verified.
        config: The mirrors and the expected checksums; the public MNIST when None.
        options: Timeouts and retries; the defaults suit public mirrors.

    Returns:
        The dataset metadata that was written to `metadata.json`.

    Raises:
        DownloadError: When a file cannot be obtained with the expected content.
    """
    config = config or DownloadConfig()
    mirrors, checksums = config.mirrors, config.expected_md5
    options = options or DownloadOptions()

    with atomic_directory(output_dir) as staging:
        tensors: dict[str, torch.Tensor] = {}
        sources, sha256 = {}, {}
        raw_dir = staging / "raw"
        raw_dir.mkdir()
        for name, md5 in checksums.items():
            data, url = fetch_verified(name, mirrors, md5, options)
            sources[name], sha256[name] = url, hashlib.sha256(data).hexdigest()
            (raw_dir / name).write_bytes(data)
            split = "train" if name.startswith("train") else "test"
            if "images" in name:
                tensors[f"{split}_images"] = read_image_file(str(raw_dir / name))
            else:
                tensors[f"{split}_labels"] = read_label_file(str(raw_dir / name)).to(torch.uint8)
            (raw_dir / name).unlink()
        raw_dir.rmdir()
        _check_consistent(tensors)

        metadata: dict[str, object] = {
            "format": FORMAT,
            "train_samples": int(tensors["train_images"].shape[0]),
            "test_samples": int(tensors["test_images"].shape[0]),
            "image_shape": list(tensors["train_images"].shape[1:]),
            "num_classes": 10,
            "md5": checksums,
            "sha256": sha256,
            "sources": sources,
        }
        torch.save(tensors, staging / DATA_FILE)
        write_json(staging / METADATA_FILE, metadata)
    return metadata


def _check_consistent(tensors: Mapping[str, torch.Tensor]) -> None:
    for split in ("train", "test"):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.ndim != 3 or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
            shapes = f"{tuple(images.shape)} images, {tuple(labels.shape)} labels"
            raise DownloadError(f"{split} files disagree: {shapes}")
        if int(labels.max()) > 9:
            raise DownloadError(f"{split} labels outside 0..9 (max {int(labels.max())})")


def download_from_run_form(output_dir: str | Path, parameters: Mapping[str, Any]) -> dict:
    """The KFP component's entry: validates the run-form values, then downloads.

    Raises:
        UserInputError: For a malformed mirror or checksum table (nothing is written).
    """
    return download_dataset(output_dir, from_run_form(DownloadConfig, parameters))


def load_dataset(dataset_dir: str | Path) -> dict[str, torch.Tensor]:
    """Loads the tensors written by `download_dataset`.

    Args:
        dataset_dir: The Dataset artifact directory.

    Returns:
        `train_images`, `test_images` (uint8, N x 28 x 28) and `train_labels`, `test_labels`
        (uint8, N).
    """
    path = Path(dataset_dir) / DATA_FILE
    if not path.is_file():
        raise invalid(
            "dataset", str(dataset_dir), f"a directory written by download_mnist (no {DATA_FILE})"
        )
    return torch.load(path, weights_only=True)
