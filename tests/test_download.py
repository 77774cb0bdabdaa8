"""download_dataset: real downloads from a local mirror (file:// and HTTP on 127.0.0.1)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import MNIST
from torchvision.datasets.mnist import read_image_file

from kfp_lightning.components.common.dataset import DATA_FILE, METADATA_FILE, load_dataset
from kfp_lightning.components.common.errors import DownloadError, UserInputError
from kfp_lightning.components.download_mnist.component import download_mnist as component
from kfp_lightning.components.download_mnist.download import (
    DEFAULT_MIRRORS,
    MNIST_MD5,
    DownloadConfig,
    DownloadOptions,
    download_dataset,
    read_idx,
)
from tests.component_runner import run_component
from tests.synthetic_mnist import copy_mirror

FAST = DownloadOptions(timeout_seconds=5, retries=0, backoff_seconds=0)


def test_downloads_verifies_and_stores_arrays(mnist_mirror, http_mirror, tmp_path):
    directory, md5 = mnist_mirror
    metadata = download_dataset(tmp_path / "dataset", DownloadConfig(http_mirror, md5), FAST)

    arrays = load_dataset(tmp_path / "dataset")
    assert arrays["train_images"].dtype == np.uint8
    assert arrays["train_images"].shape == (1200, 28, 28)
    assert arrays["test_labels"].shape == (300,)
    # The stored arrays are the served bytes: compare with the raw IDX payload.
    raw = gzip.decompress((directory / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert arrays["test_images"].tobytes() == raw[16:]
    labels = gzip.decompress((directory / "train-labels-idx1-ubyte.gz").read_bytes())
    assert arrays["train_labels"].tobytes() == labels[8:]
    # And the same arrays torchvision's reader makes of those files.
    raw_file = tmp_path / "t10k-images-idx3-ubyte"
    raw_file.write_bytes(raw)
    assert np.array_equal(read_image_file(str(raw_file)).numpy(), arrays["test_images"])

    written = json.loads((tmp_path / "dataset" / METADATA_FILE).read_text())
    assert written == metadata
    assert (metadata["train_samples"], metadata["test_samples"]) == (1200, 300)
    assert metadata["md5"] == md5
    assert (
        metadata["sources"]["t10k-images-idx3-ubyte"] == f"{http_mirror}t10k-images-idx3-ubyte.gz"
    )
    assert metadata["sha256"]["t10k-images-idx3-ubyte"] == hashlib.sha256(raw).hexdigest()
    assert sorted(p.name for p in (tmp_path / "dataset").iterdir()) == sorted(
        [DATA_FILE, METADATA_FILE]
    )


def test_file_mirror_and_fallback_to_the_next_mirror(mnist_mirror, tmp_path):
    directory, md5 = mnist_mirror
    missing = (tmp_path / "empty").as_uri()
    mirrors = f"{missing},{directory.as_uri()}"
    metadata = download_dataset(tmp_path / "dataset", DownloadConfig(mirrors, md5), FAST)
    assert all(url.startswith(directory.as_uri()) for url in metadata["sources"].values())


def test_recompressed_mirror_is_accepted(mnist_mirror, tmp_path):
    # Same content, different gzip bytes: verification is on the uncompressed files.
    directory, md5 = mnist_mirror
    recompressed = copy_mirror(directory, tmp_path / "recompressed", compresslevel=1)
    assert (recompressed / "t10k-images-idx3-ubyte.gz").read_bytes() != (
        directory / "t10k-images-idx3-ubyte.gz"
    ).read_bytes()
    download_dataset(tmp_path / "dataset", DownloadConfig(recompressed.as_uri(), md5), FAST)


def test_corrupt_file_fails_and_leaves_no_output(mnist_mirror, tmp_path):
    directory, md5 = mnist_mirror

    def flip_a_pixel(name: str, data: bytes) -> bytes:
        return (
            data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
            if "train-images" in name
            else data
        )

    corrupt = copy_mirror(directory, tmp_path / "corrupt", flip_a_pixel)
    with pytest.raises(DownloadError, match=r"train-images-idx3-ubyte.*checksum mismatch"):
        download_dataset(tmp_path / "dataset", DownloadConfig(corrupt.as_uri(), md5), FAST)
    assert list(tmp_path.iterdir()) == [corrupt]


def test_unreachable_mirror_names_each_failure(tmp_path):
    with pytest.raises(DownloadError) as err:
        download_dataset(
            tmp_path / "dataset", DownloadConfig("http://127.0.0.1:9/mnist/", None), FAST
        )
    assert "http://127.0.0.1:9/mnist/train-images-idx3-ubyte.gz: unreachable" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "dataset").exists()


@pytest.mark.parametrize(
    ("mirror", "md5", "parameter"),
    [
        ("ftp://example.com/mnist/", None, "mirror"),
        ("https:///no-host/", None, "mirror"),
        ("file:///tmp/x", {"train-images-idx3-ubyte": "0" * 32}, "expected_md5"),
        ("file:///tmp/x", {**MNIST_MD5, "train-images-idx3-ubyte": "xyz"}, "expected_md5"),
    ],
)
def test_bad_parameters_are_rejected_before_any_download(mirror, md5, parameter, tmp_path):
    with pytest.raises(UserInputError, match=rf"^invalid {parameter}="):
        download_dataset(tmp_path / "dataset", DownloadConfig(mirror, md5), FAST)
    assert not (tmp_path / "dataset").exists()


def test_checksums_in_capitals_are_the_same_checksums():
    config = DownloadConfig(expected_md5={name: md5.upper() for name, md5 in MNIST_MD5.items()})
    assert config.expected_md5 == MNIST_MD5
    assert config.published_checksums


def test_default_mirrors_are_torchvisions():
    # Written out so the CLI need not import torchvision: the library is the source of truth.
    assert tuple(MNIST.mirrors) == DEFAULT_MIRRORS


def test_component_entry_point_writes_the_dataset(http_mirror, mnist_mirror, tmp_path):
    _, md5 = mnist_mirror
    process, outputs = run_component(
        component, tmp_path, {"mirror": http_mirror, "expected_md5": md5}
    )
    assert process.returncode == 0, process.stderr
    assert load_dataset(outputs["dataset"])["train_images"].shape[0] == 1200
    executor_output = json.loads((tmp_path / "executor_output.json").read_text())
    metadata = executor_output["artifacts"]["dataset"]["artifacts"][0]["metadata"]
    assert metadata["train_samples"] == 1200


def test_component_entry_point_fails_in_one_line(tmp_path: Path):
    process, outputs = run_component(component, tmp_path, {"mirror": "gopher://x/"})
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        "error: invalid mirror='gopher://x/': expected comma-separated base URLs of the form "
        "http(s)://host/path/ or file:///path/"
    ]
    assert not outputs["dataset"].exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"\x01", "holds 1 bytes, not (2,)"),
        (b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x01", "not an IDX file"),
        (b"\x00\x00", "not an IDX file"),
    ],
)
def test_a_malformed_idx_file_is_refused(data, message):
    # What a custom expected_md5 could let through: checksums prove identity, not format.
    with pytest.raises(DownloadError, match=re.escape(message)):
        read_idx(data, 1, "labels")
