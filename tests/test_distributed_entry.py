"""The training entry point as two torchrun nodes, on 127.0.0.1 with gloo on the CPU.

Two torchrun processes, one per node, with exactly the environment Kubeflow Trainer's torch
plugin gives each node of a TrainJob (kubeflow/trainer v2.1.0,
pkg/runtime/framework/plugins/torch/torch.go, `EnforceMLPolicy`): `PET_NNODES`,
`PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR` and `PET_MASTER_PORT`, the master being
127.0.0.1 here instead of node 0's hostname. The run's location is a directory, as on a mounted
claim; the dataset is put there as the step puts it, and rank 0 must publish there everything
the step collects. The location is the live TensorBoard's logspath: every event file must be
there once, so one run shows one set of curves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kfp_lightning.components.common import run_layout
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.run_layout import entry_arguments
from kfp_lightning.components.common.storage import open_storage
from kfp_lightning.components.common.torchrun import free_port, node_environment
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.distributed import MODULE
from tests.helpers import assert_only_logs, predict_in_fresh_process, scalars

NODES = 2


def trainer_environment(node_rank: int, port: int) -> dict[str, str]:
    """The variables the Trainer's torch plugin sets on one node (one process per node)."""
    return {
        "PET_NNODES": str(NODES),
        "PET_NPROC_PER_NODE": "1",
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(port),
    }


def test_local_nodes_get_the_trainers_variables() -> None:
    environment = node_environment(NODES, 1, 1, 29500, 3)
    assert {k: v for k, v in environment.items() if k.startswith("PET_")} == trainer_environment(
        1, 29500
    )
    assert environment["OMP_NUM_THREADS"] == "3"


@pytest.fixture(scope="module")
def two_nodes(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Runs the entry point as two torchrun nodes; returns their exits, logs and location."""
    root = tmp_path_factory.mktemp("location")
    location = parse_logs_root(str(root)).child("run-1")
    storage = open_storage(location)
    run_layout.upload_tree(storage, dataset, run_layout.DATASET)
    config = TrainConfig(epochs=2, batch_size=32, gpus=0, validation="200")
    arguments = entry_arguments(location.uri, NODES, config, None, "two nodes", 1)
    port = free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--module", MODULE, *arguments],
            env={**os.environ, **trainer_environment(rank, port), "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(NODES)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    return {
        "codes": [node.returncode for node in nodes],
        "logs": logs,
        "location": Path(location.path),
        "storage": storage,
    }


def test_both_nodes_train_and_only_rank_zero_publishes(two_nodes: dict, dataset: Path) -> None:
    assert two_nodes["codes"] == [0, 0], "\n".join(two_nodes["logs"])[-4000:]
    node0, node1 = two_nodes["logs"]
    assert "rank 0 of 2 processes on 2 node(s): published" in node0
    assert "published" not in node1

    files = run_layout.read_marker(two_nodes["storage"])
    assert files is not None
    for name in ("model/model.pt2", "model/weights.pt", "evaluation/evaluation.json"):
        assert f"{run_layout.OUTPUTS}/{name}" in files
    assert any("tfevents" in path for path in files)
    location = two_nodes["location"]
    # The logs are listed where they live, not copied below outputs/.
    assert any("tfevents" in path for path in run_layout.live_log_files(files))
    assert not any("tfevents" in path for path in files if path.startswith(run_layout.OUTPUTS))
    for path, size in files.items():
        assert (location / path).stat().st_size == size, path
    result = json.loads((location / run_layout.OUTPUTS / run_layout.RESULT).read_text())
    metrics = result["metrics"]
    assert (metrics["nodes"], metrics["processes"]) == (2, 2)
    assert metrics["epochs"] == 2
    assert 0 <= metrics["test_accuracy"] <= 1
    matrix = result["confusion_matrix"]
    assert sum(map(sum, matrix)) == 300  # every test image, counted once (not once per node)
    assert sum(matrix[i][i] for i in range(10)) / 300 == pytest.approx(metrics["test_accuracy"])
    # The published model is the trained one: it scores what the metrics say.
    prediction = predict_in_fresh_process(location / run_layout.OUTPUTS / "model", dataset)
    assert prediction["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_live_logs_have_one_run_written_by_rank_zero(two_nodes: dict) -> None:
    location = two_nodes["location"]
    events = list(location.rglob("*tfevents*"))
    # Once each, in one run folder: nothing below outputs/ (the TensorBoard reading the
    # location, and --compare-runs reading all runs, would show a second set of curves).
    assert len({p.parent for p in events}) == 1, events
    assert {p.relative_to(location).parts[0] for p in events} == {events[0].parent.name}
    assert list((location / "checkpoints").glob("*.ckpt"))


def test_the_step_collects_the_curves_from_the_live_logs(two_nodes: dict, tmp_path) -> None:
    out = tmp_path / "out"

    outputs = {"model": out / "model", "tensorboard_logs": out / "logs", "evaluation": out / "e"}
    result = run_layout.collect_outputs(two_nodes["storage"], outputs)

    assert_only_logs(out / "logs")
    curves = scalars(out / "logs")
    assert len(curves["loss/val"]) == 2
    assert curves == scalars(two_nodes["location"])
    assert (out / "model" / "weights.pt").is_file()
    assert (result.metrics["nodes"], result.metrics["processes"]) == (2, 2)
    assert sum(map(sum, result.confusion_matrix)) == 300
