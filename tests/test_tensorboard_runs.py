"""A real TensorBoard over two runs' logs: named runs, grouped tags, images, HParams.

What a user comparing runs sees, read through TensorBoard's own HTTP API: both runs listed
under their names (never "."), the loss of training and validation under one `loss/` group and
overlaid by the Custom Scalars layout, the mistakes as an image summary, and the parameters and
final metrics of each run in the HParams dashboard.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.train import TrainingOutputs, run_training

pytestmark = pytest.mark.live

RUNS = {"run-a": ("Run of mnist (a1)", 1.0), "run-b": ("Run of mnist (b2)", 0.5)}


@pytest.fixture(scope="module")
def logs_root(dataset, tmp_path_factory) -> Path:
    """Two runs under one root, as a cluster's runs are: <root>/<run id>/<run name>/."""
    root = tmp_path_factory.mktemp("root")
    for run_id, (name, learning_rate) in RUNS.items():
        config = TrainConfig(
            epochs=2, validation="200", gpus="0", log_every_n_steps=5, learning_rate=learning_rate
        )
        live = parse_logs_root(str(root)).child(run_id)
        outputs = TrainingOutputs(tmp_path_factory.mktemp("model"), tmp_path_factory.mktemp("l"))
        run_training(dataset, outputs, config, live, run_name=name)
    return root


@pytest.fixture(scope="module")
def board(logs_root: Path, tmp_path_factory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("tb") / "tensorboard.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tensorboard.main", "--logdir", str(logs_root)),
                *("--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while len(get(url, "data/runs", default=[])) < len(RUNS):
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"runs never listed: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def get(url: str, path: str, default: object = None, **query: str) -> object:
    address = f"{url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            return json.loads(response.read())
    except OSError:
        if default is not None:
            return default
        raise


def test_both_runs_are_listed_under_their_names(board):
    runs = get(board, "data/runs")
    assert sorted(runs) == ["run-a/Run-of-mnist-a1", "run-b/Run-of-mnist-b2"]
    assert "." not in runs


def test_losses_are_grouped_and_overlaid(board):
    tags = get(board, "data/plugin/scalars/tags")
    for run in get(board, "data/runs"):
        assert {"loss/train", "loss/val", "accuracy/val", "learning_rate"} <= set(tags[run])
        points = get(board, "data/plugin/scalars/scalars", run=run, tag="loss/val")
        assert len(points) == 2  # one per epoch
    # The Custom Scalars layout draws training, validation and test loss on one chart.
    layout = get(board, "data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for c in layout["category"][0]["chart"]}
    assert charts["loss"] == ["loss/train", "loss/val", "loss/test"]


def test_mistakes_and_confusion_matrix_are_shown(board):
    images = get(board, "data/plugin/images/tags")
    texts = get(board, "data/plugin/text/tags")
    for run in get(board, "data/runs"):
        assert {"evaluation/mistakes", "evaluation/correct_examples"} <= set(images[run])
        # torch's SummaryWriter.add_text files text under <tag>/text_summary.
        assert "evaluation/confusion_matrix/text_summary" in texts[run]


def test_hparams_compare_the_runs(board):
    request = urllib.request.Request(
        f"{board}data/plugin/hparams/session_groups",
        data=json.dumps(
            {
                "experimentName": "",
                "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE"],
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 10,
            }
        ).encode(),
        headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        groups = json.loads(response.read())["sessionGroups"]
    learning_rates = sorted(g["hparams"]["learning_rate"] for g in groups)
    assert learning_rates == [0.5, 1.0]
    for group in groups:
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert 0 < metrics["accuracy/test"] <= 1
        assert metrics["loss/val"] >= 0
