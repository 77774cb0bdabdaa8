"""The download against a mirror that fails in scripted ways: timeouts, 500s, truncated bodies,
wrong bytes. It recovers when any attempt succeeds, and otherwise fails with one error naming
each mirror's failure, leaving nothing behind."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfp_lightning.components.common.dataset import load_dataset
from kfp_lightning.components.common.errors import DownloadError
from kfp_lightning.components.download_mnist.download import (
    DownloadConfig,
    DownloadOptions,
    download_dataset,
)

TIMEOUT = 0.5


class ScriptedMirror:
    """An HTTP mirror on 127.0.0.1 whose answers follow a script, per attempt.

    `script` is a list of behaviours, one per request (the last one repeats): "ok", "404", "500",
    "timeout" (answers after the client gave up), "truncated" (a Content-Length it does not
    honour), "cut" (half a gzip stream, no length) or "wrong" (valid gzip, other content).
    """

    def __init__(self, directory: Path, script: list[str]) -> None:
        self.directory, self.script = directory, script
        self.requests: dict[str, int] = defaultdict(int)
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                attempt = mirror.requests[name]
                mirror.requests[name] += 1
                behaviour = mirror.script[min(attempt, len(mirror.script) - 1)]
                body = (mirror.directory / name).read_bytes()
                if behaviour in ("404", "500"):
                    self.send_error(int(behaviour))
                    return
                if behaviour == "timeout":
                    time.sleep(TIMEOUT * 3)
                if behaviour == "wrong":
                    body = gzip.compress(gzip.decompress(body)[:-1] + b"\x00")
                self.send_response(200)
                if behaviour != "cut":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if behaviour in ("truncated", "cut"):
                    body = body[: len(body) // 2]
                # The client may have timed out first, as scripted.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mnist/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(mnist_mirror) -> Iterator:
    directory, _ = mnist_mirror
    started = []

    def start(*script: str) -> ScriptedMirror:
        started.append(ScriptedMirror(directory, list(script)))
        return started[-1]

    yield start
    for server in started:
        server.close()


def options(retries: int) -> DownloadOptions:
    return DownloadOptions(timeout_seconds=TIMEOUT, retries=retries, backoff_seconds=0.05)


@pytest.mark.parametrize("failure", ["500", "timeout", "truncated", "cut", "wrong"])
def test_recovers_when_a_later_attempt_succeeds(mirror, mnist_mirror, tmp_path, failure):
    _, md5 = mnist_mirror
    flaky = mirror(failure, failure, "ok")
    download_dataset(tmp_path / "dataset", DownloadConfig(flaky.url, md5), options(retries=2))
    assert load_dataset(tmp_path / "dataset")["train_images"].shape[0] == 1200
    # Every file took exactly three attempts: two failures, then the good copy.
    assert set(flaky.requests.values()) == {3}


def test_moves_on_to_the_next_mirror(mirror, mnist_mirror, tmp_path):
    _, md5 = mnist_mirror
    dead, good = mirror("timeout"), mirror("ok")
    started = time.monotonic()
    mirrors = DownloadConfig(f"{dead.url},{good.url}", md5)
    metadata = download_dataset(tmp_path / "dataset", mirrors, options(0))
    assert all(url.startswith(good.url) for url in metadata["sources"].values())
    # Four files, one timeout each on the dead mirror: bounded by the per-request timeout.
    assert time.monotonic() - started < 4 * TIMEOUT * 3 + 5


def test_fails_with_every_mirrors_reason_and_writes_nothing(mirror, mnist_mirror, tmp_path):
    _, md5 = mnist_mirror
    slow, corrupt, broken = mirror("timeout"), mirror("wrong"), mirror("500")
    mirrors = ",".join(m.url for m in (slow, corrupt, broken))
    with pytest.raises(DownloadError) as err:
        download_dataset(tmp_path / "dataset", DownloadConfig(mirrors, md5), options(retries=1))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("could not download train-images-idx3-ubyte.gz after 2 round(s): ")
    assert f"{slow.url}train-images-idx3-ubyte.gz: timed out" in message
    assert f"{corrupt.url}train-images-idx3-ubyte.gz: checksum mismatch" in message
    assert f"{broken.url}train-images-idx3-ubyte.gz: HTTP 500" in message
    assert list(tmp_path.iterdir()) == []
    # Two rounds over three mirrors for the first file, then it gave up.
    assert broken.requests["train-images-idx3-ubyte.gz"] == 2


def failure_after_one_round(mirrors: DownloadConfig, tmp_path: Path) -> str:
    """The download's error, which must come after one round, before any back-off."""
    started = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download_dataset(tmp_path / "dataset", mirrors, DownloadOptions(retries=3))
    assert time.monotonic() - started < 5  # the default back-off alone would take 14 s
    message = str(err.value)
    assert message.startswith("could not download train-images-idx3-ubyte.gz after 1 round(s): ")
    return message


def test_a_mirror_that_cannot_succeed_later_is_asked_once(mirror, mnist_mirror, tmp_path):
    # A missing local file and an HTTP 404 stay so: no later round is spent on them.
    _, md5 = mnist_mirror
    missing, not_found = (tmp_path / "nowhere").as_uri() + "/", mirror("404")
    message = failure_after_one_round(DownloadConfig(f"{missing},{not_found.url}", md5), tmp_path)
    assert f"{missing}train-images-idx3-ubyte.gz: no such file or directory; " in message
    assert f"{not_found.url}train-images-idx3-ubyte.gz: HTTP 404" in message
    assert not_found.requests["train-images-idx3-ubyte.gz"] == 1
    assert not (tmp_path / "dataset").exists()


def test_a_local_file_that_is_wrong_is_read_once(mnist_mirror, tmp_path):
    # A local file reads the same in every round: truncated or other content stays so.
    source, md5 = mnist_mirror
    truncated, other = tmp_path / "truncated", tmp_path / "other"
    for folder in (truncated, other):
        shutil.copytree(source, folder)
    name = "train-images-idx3-ubyte.gz"
    data = (source / name).read_bytes()
    (truncated / name).write_bytes(data[: len(data) // 2])
    (other / name).write_bytes((source / "t10k-images-idx3-ubyte.gz").read_bytes())
    mirrors = DownloadConfig(f"{truncated.as_uri()}/,{other.as_uri()}/", md5)
    message = failure_after_one_round(mirrors, tmp_path)
    assert f"{truncated.as_uri()}/{name}: not a complete gzip file" in message
    assert f"{other.as_uri()}/{name}: checksum mismatch" in message


def test_later_rounds_ask_only_the_mirrors_that_may_recover(mirror, mnist_mirror, tmp_path):
    _, md5 = mnist_mirror
    not_found, flaky = mirror("404"), mirror("500", "500", "ok")
    mirrors = DownloadConfig(f"{not_found.url},{flaky.url}", md5)
    metadata = download_dataset(tmp_path / "dataset", mirrors, options(retries=2))
    assert all(url.startswith(flaky.url) for url in metadata["sources"].values())
    assert set(not_found.requests.values()) == {1}
    assert set(flaky.requests.values()) == {3}
