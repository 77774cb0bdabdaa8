"""What a correct MNIST download is: where from, file names, published checksums, validation.

Kept apart from the downloader (and free of torch) so the pipeline CLI can check a run's
download parameters before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated
from urllib.parse import urlparse

import pydantic
from pydantic import Field

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.run_form import run_config, run_parameter

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


def _standard_files(table: dict[str, str]) -> dict[str, str]:
    if set(table) != set(MNIST_MD5):
        raise ValueError(sorted(table))
    return {name: table[name] for name in MNIST_MD5}


# File name -> MD5 of its uncompressed content; None or empty: the published ones.
Checksums = Annotated[
    dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]],
    Field(description="a 32-hex-digit MD5 for each of " + ", ".join(MNIST_MD5)),
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
    """MD5 of each uncompressed file, by file name. Default: the published MNIST checksums;
    change it only to train on another MNIST-format data set."""

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
