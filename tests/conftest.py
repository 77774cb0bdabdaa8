"""Shared fixtures: a small MNIST-format mirror, on disk and served over HTTP on 127.0.0.1; a
real kube-apiserver (tests/apiserver/)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver.server import apiserver_admin, kube_apiserver, kubeflow_crds  # noqa: F401
from tests.synthetic_mnist import write_mirror

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    # Without this, a checkout lacking ../shared/ fails deep inside the first test that reads it.
    missing = [f"{name}/" for name in ("schemas", "platforms") if not (SHARED / name).is_dir()]
    if missing:
        raise pytest.UsageError(
            f"{SHARED} lacks {' and '.join(missing)}: the tests read the Kubeflow and Trainer "
            "CRD schemas and each supported release's manifests from ../shared/ beside the checkout"
        )


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def mnist_mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A directory holding the four `*-ubyte.gz` files, and the MD5 of each uncompressed file."""
    directory = tmp_path_factory.mktemp("mirror")
    return directory, write_mirror(directory)


@pytest.fixture(scope="session")
def http_mirror(mnist_mirror: tuple[Path, dict[str, str]]) -> Iterator[str]:
    """Base URL of an HTTP server on 127.0.0.1 serving `mnist_mirror`."""
    directory, _ = mnist_mirror
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def dataset(mnist_mirror, tmp_path_factory) -> Path:
    """A Dataset artifact directory made by `download_dataset` from `mnist_mirror`."""
    from kfp_lightning.components.download_mnist.download import (
        DownloadConfig,
        DownloadOptions,
        download_dataset,
    )

    directory, md5 = mnist_mirror
    path = tmp_path_factory.mktemp("data") / "dataset"
    download_dataset(path, DownloadConfig(directory.as_uri(), md5), DownloadOptions(retries=0))
    return path
