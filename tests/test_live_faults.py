"""The live location's faults, met through S3: a store that refuses for a while, or for good.

A local S3 server (moto) stands behind a proxy on 127.0.0.1 that answers chosen requests with
503, as a restarting object store does, after botocore's own retries. What is asserted is what
a user sees: a checkpoint that cannot be fetched is kept and the attempt fails (its retry
resumes from it); a blip at the first point only delays the curves; a last copy that fails is
retried, then reported, and training still succeeds with every point in its artifact.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import boto3
import pytest
import torch
from moto.server import ThreadedMotoServer

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.storage import S3Storage
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist import live
from kfp_lightning.components.train_mnist.live import (
    CHECKPOINT_DIR,
    checkpoint_name,
    find_resumable_checkpoint,
)
from kfp_lightning.components.train_mnist.train import TrainingOutputs, run_training
from tests.helpers import scalars

BUCKET, PREFIX = "mlpipeline", "live/run-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "faults", "AWS_SECRET_ACCESS_KEY": "faults-secret"}
# Requests of one upload the store refuses for good: S3Storage's `max_attempts` of 4 counts the
# retries after the first (botocore's `total_max_attempts` is one more).
ATTEMPTS = 5
# Hop-by-hop headers, and those the proxy sets itself.
NOT_RELAYED = {"connection", "transfer-encoding", "content-length", "expect", "keep-alive"}


class FaultyStore(http.server.ThreadingHTTPServer):
    """A proxy to the S3 server that answers 503 to each request `refuse(method, key)` picks.

    Attributes:
        refuse: Decides each request by its method and object key ("" for the bucket).
        before: Called with each request's method and key before it is relayed.
    """

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream = urlparse(upstream)
        self.refuse: Callable[[str, str], bool] = lambda method, key: False
        self.before: Callable[[str, str], None] = lambda method, key: None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # answers boto's Expect: 100-continue before the body
    server: FaultyStore

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = unquote(urlparse(self.path).path).removeprefix(f"/{BUCKET}").lstrip("/")
        if self.server.refuse(self.command, key):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.before(self.command, key)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in NOT_RELAYED}
        upstream = http.client.HTTPConnection(self.server.upstream.netloc, timeout=30)
        upstream.request(self.command, self.path, body, headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in NOT_RELAYED:
                self.send_header(name, value)
        # A HEAD's length is the object's, which the client reads before a ranged download.
        length = answer.getheader("Content-Length") if self.command == "HEAD" else len(data)
        self.send_header("Content-Length", str(length or 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay  # noqa: N815 (the handler API)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def store(monkeypatch) -> Iterator[FaultyStore]:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    upstream = f"http://{host}:{port}"
    # moto keeps its buckets in the process, across servers: each test starts from none.
    urllib.request.urlopen(urllib.request.Request(f"{upstream}/moto-api/reset", method="POST"))
    boto3.client("s3", endpoint_url=upstream, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    proxy = FaultyStore(upstream)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield proxy
    proxy.shutdown()
    server.stop()


def save_checkpoint(storage: S3Storage, step: int, tmp_path: Path) -> None:
    """A sound checkpoint of `TrainConfig()`'s run at `step`, in the store."""
    checkpoint = {"state_dict": {"w": torch.ones(2)}, "loops": {}, "global_step": step}
    checkpoint["hyper_parameters"] = TrainConfig().as_dict()
    local = tmp_path / f"{step}.ckpt"
    torch.save(checkpoint, local)
    storage.upload(local, f"{CHECKPOINT_DIR}/{checkpoint_name(step, 0)}")


def test_a_checkpoint_the_store_cannot_serve_fails_the_attempt_and_is_kept(store, tmp_path):
    storage = S3Storage(BUCKET, PREFIX, store.endpoint)
    save_checkpoint(storage, 10, tmp_path)
    name = f"{CHECKPOINT_DIR}/{checkpoint_name(10, 0)}"
    store.refuse = lambda method, key: method in ("GET", "HEAD") and key.endswith(".ckpt")
    config = TrainConfig().as_dict()
    with pytest.raises(RunError, match=f"could not download s3://{BUCKET}/{PREFIX}/{name}"):
        find_resumable_checkpoint(storage, config, tmp_path / "attempt-1")
    assert name in storage.list_files()
    # The store is back: the next attempt resumes from it.
    store.refuse = lambda method, key: False
    found = find_resumable_checkpoint(storage, config, tmp_path / "attempt-2")
    assert found is not None
    assert found[1]["global_step"] == 10


def test_a_checkpoint_removed_since_the_listing_is_skipped(store, tmp_path):
    # What another process of the run sees while global rank 0 removes an unusable checkpoint.
    storage = S3Storage(BUCKET, PREFIX, store.endpoint)
    for step in (10, 20):
        save_checkpoint(storage, step, tmp_path)
    newest = f"{CHECKPOINT_DIR}/{checkpoint_name(20, 0)}"
    direct = S3Storage(BUCKET, PREFIX, f"http://{store.upstream.netloc}")

    def remove_it_first(method: str, key: str) -> None:
        if key.endswith(newest) and newest in direct.list_files():
            direct.delete(newest)

    store.before = remove_it_first
    found = find_resumable_checkpoint(storage, TrainConfig().as_dict(), tmp_path / "w", False)
    assert found is not None
    assert found[1]["global_step"] == 10


def refuse_counted(count: int, after: Callable[[], bool] = lambda: True):
    """Refuses the next `count` requests that upload event files, once `after()` holds."""
    refused = []

    def refuse(method: str, key: str) -> bool:
        if method == "PUT" and "tfevents" in key and after() and len(refused) < count:
            refused.append(key)
            return True
        return False

    return refuse, refused


def is_checkpoint_upload(method: str, key: str) -> bool:
    return method in ("PUT", "POST") and f"{CHECKPOINT_DIR}/" in key


def train_one_epoch(dataset: Path, root: Path, endpoint: str):
    """Trains one epoch on the synthetic set with live logs in the store."""
    config = TrainConfig(epochs=1, validation="200", gpus="0", log_every_n_steps=5)
    location = parse_logs_root(f"s3://{BUCKET}/live").child("run-1")
    outputs = TrainingOutputs(root / "model", root / "logs")
    # No periodic copy in so short a run: each copy is one the test means.
    return run_training(dataset, outputs, config, location, endpoint, live_update_seconds=300)


def live_scalars(store: FaultyStore, root: Path) -> dict[str, list[tuple[int, float]]]:
    direct = S3Storage(BUCKET, PREFIX, f"http://{store.upstream.netloc}")
    for relative in direct.list_files():
        if "tfevents" in relative:
            direct.download(relative, root / "live" / relative)
    return scalars(root / "live")


def test_a_store_blip_at_the_first_point_only_delays_the_curves(store, dataset, tmp_path, capfd):
    # The first copy (at the first step) meets the store restarting: one upload refused.
    store.refuse, refused = refuse_counted(ATTEMPTS)
    result = train_one_epoch(dataset, tmp_path, store.endpoint)
    assert result is not None
    assert len(refused) == ATTEMPTS
    assert f"warning: copying TensorBoard logs to s3://{BUCKET}/{PREFIX} failed" in (
        capfd.readouterr().err
    )
    # The next copy (before the epoch's checkpoint) and the last one sent everything.
    assert live_scalars(store, tmp_path) == scalars(tmp_path / "logs")


def test_a_last_copy_that_keeps_failing_is_a_warning(store, dataset, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(live, "FINAL_COPY_PAUSES", (0.1, 0.1))
    saved = []
    store.before = lambda method, key: (
        saved.append(key) if is_checkpoint_upload(method, key) else None
    )
    # After the epoch's checkpoint, the store refuses the event files for good.
    store.refuse, refused = refuse_counted(10**6, after=lambda: bool(saved))
    result = train_one_epoch(dataset, tmp_path, store.endpoint)
    assert result is not None
    assert len(refused) >= 3 * ATTEMPTS  # the last copy, and its two retries
    err = capfd.readouterr().err
    assert f"warning: the last TensorBoard points did not reach s3://{BUCKET}/{PREFIX}" in err
    # The artifact has the test pass; the live location stops at the checkpoint.
    assert "loss/test" in scalars(tmp_path / "logs")
    assert "loss/test" not in live_scalars(store, tmp_path)


def test_a_last_copy_is_retried(store, dataset, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(live, "FINAL_COPY_PAUSES", (0.1, 0.1))
    saved = []
    store.before = lambda method, key: (
        saved.append(key) if is_checkpoint_upload(method, key) else None
    )
    # After the epoch's checkpoint, the last copy's first try is refused.
    store.refuse, refused = refuse_counted(ATTEMPTS, after=lambda: bool(saved))
    train_one_epoch(dataset, tmp_path, store.endpoint)
    assert len(refused) == ATTEMPTS
    assert "did not reach" not in capfd.readouterr().err
    assert live_scalars(store, tmp_path) == scalars(tmp_path / "logs")
