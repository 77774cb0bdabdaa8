"""Live logs through S3: the training component streams to a local S3 server (moto) on
127.0.0.1 while a real TensorBoard process reads them with the pod's S3 environment."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from kfp_lightning.components.train_mnist.component import train_mnist
from tests.component_runner import component_command
from tests.helpers import FOUR_SCALARS

pytestmark = pytest.mark.live

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "live-test", "AWS_SECRET_ACCESS_KEY": "live-test-secret"}
EPOCHS = 10
ROOT = "s3://mlpipeline/private/{namespace}/tensorboard"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        **{
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        },
    )
    client.create_bucket(Bucket="mlpipeline")
    yield endpoint
    server.stop()


def tensorboard_pod_environment(endpoint: str) -> dict[str, str]:
    """What the TensorBoard pod's PodDefault gives it: credentials and the S3 endpoint."""
    return {
        **CREDENTIALS,
        "S3_ENDPOINT": endpoint,
        "S3_USE_HTTPS": "0",
        "S3_VERIFY_SSL": "0",
        "AWS_REGION": "us-east-1",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _points(url: str, tag: str) -> int:
    with urllib.request.urlopen(f"{url}data/runs", timeout=5) as r:
        runs = json.loads(r.read())
    if not runs:
        return 0
    # The run is named after the pipeline run, never "." (its events are in their own folder).
    (run,) = runs
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    with urllib.request.urlopen(f"{url}data/plugin/scalars/scalars?{query}", timeout=5) as r:
        return len(json.loads(r.read()))


def test_tensorboard_reads_growing_logs_from_s3(s3_endpoint, dataset, tmp_path):
    argv, env, outputs = component_command(
        train_mnist,
        tmp_path / "train",
        {
            "run_id": "run-s3",
            "tensorboard_logs_root": ROOT,
            "s3_endpoint": s3_endpoint,
            "live_update_seconds": 2,
            "epochs": EPOCHS,
            "batch_size": 16,  # epochs long enough to see the curves grow on a fast machine
            "gpus": "0",
            "validation": "200",
        },
        {"dataset": dataset},
        # What the pipeline sets on the training pod: the namespace and the secret's keys.
        env={**CREDENTIALS, "POD_NAMESPACE": "team-a"},
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    logdir = "s3://mlpipeline/private/team-a/tensorboard/run-s3"
    board_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))
    } | tensorboard_pod_environment(s3_endpoint)
    board = subprocess.Popen(
        [
            *(sys.executable, "-m", "tensorboard.main", "--logdir", logdir),
            *("--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"),
        ],
        env=board_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    training = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    observed = []
    try:
        deadline = time.monotonic() + 600
        while training.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            # Until TensorBoard has started and found the run, there is nothing to count.
            with contextlib.suppress(OSError):
                observed.append(_points(url, "loss/val"))
        output = training.communicate(timeout=60)[0]
        assert training.returncode == 0, output[-3000:]
        # TensorBoard saw the run grow epoch by epoch while it was training ...
        assert len({n for n in observed if 0 < n < EPOCHS}) >= 2, observed
        assert observed == sorted(observed)
        # ... and everything once it ended (the last copy happens before the task exits).
        time.sleep(3)
        assert _points(url, "loss/val") == EPOCHS
        assert all(_points(url, tag) > 0 for tag in FOUR_SCALARS)
    finally:
        board.terminate()
        board.wait(timeout=30)
        if training.poll() is None:
            training.kill()
    assert "TensorBoard logs: " + logdir in output
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in output
    # The artifact still holds the logs too.
    assert any("tfevents" in p.name for p in outputs["tensorboard_logs"].rglob("*"))
