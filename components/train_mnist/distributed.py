"""The multi-node training entry point: one process per device on every node, under torchrun.

    torchrun --module kfp_lightning.components.train_mnist.distributed \\
        --location URI --nodes N --config JSON [--s3-endpoint URL] [--run-name NAME] ...

torchrun takes the world's shape from the `PET_*` variables that Kubeflow Trainer's torch
plugin sets on every node of a `TrainJob` (`PET_NNODES`, `PET_NPROC_PER_NODE`,
`PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`; kubeflow/trainer v2.1.0,
pkg/runtime/framework/plugins/torch/torch.go, `EnforceMLPolicy`), or that a local run sets for
processes on 127.0.0.1, and starts this module in each process with `RANK`, `WORLD_SIZE` and
the rest, from which Lightning detects its `TorchElasticEnvironment`. Every process downloads
the run's dataset from `<location>/dataset/` (see `components/common/run_layout.py`) and
calls `run_training(..., num_nodes=N)`; global rank 0, the only process that gets a result,
uploads the model, evaluation and result to `<location>/outputs/`, and the marker last, which
also lists the live TensorBoard logs rank 0 kept current in the location (they are not copied
to `outputs/`, which lies inside the TensorBoard's logspath: see `run_layout.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kfp_lightning.components.common.errors import RunError, invalid, run_or_exit
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.run_layout import (
    DATASET,
    OUTPUT_DIRS,
    download_tree,
    files_under,
    publish_outputs,
)
from kfp_lightning.components.common.storage import open_storage
from kfp_lightning.components.common.training import TrainConfig

MODULE = "kfp_lightning.components.train_mnist.distributed"


def build_parser() -> argparse.ArgumentParser:
    """The entry point's options (the step that starts the nodes writes them)."""
    parser = argparse.ArgumentParser(prog=f"torchrun --module {MODULE}", description=__doc__)
    parser.add_argument("--location", required=True, help="the run's location (URI)")
    parser.add_argument("--nodes", required=True, type=int, help="nodes in the world")
    parser.add_argument("--config", required=True, help="TrainConfig's fields as a JSON object")
    parser.add_argument("--s3-endpoint", default=None, help="S3 API of an s3:// location")
    parser.add_argument("--run-name", default="", help="the pipeline run's display name")
    parser.add_argument(
        "--live-update-seconds", type=float, default=10.0, help="live logs' longest delay"
    )
    return parser


def world_size() -> int:
    """The processes in the world, as torchrun tells each of them ($WORLD_SIZE)."""
    value = os.environ.get("WORLD_SIZE", "")
    if not value.isdigit():
        raise RunError(
            f"WORLD_SIZE={value!r}: this entry point runs under torchrun, which sets it "
            f"(torchrun --module {MODULE} ...)"
        )
    return int(value)


def train_on_this_node(args: argparse.Namespace) -> dict[str, Any] | None:
    """Trains as one process of the world; rank 0 publishes the outputs.

    Args:
        args: The parsed options.

    Returns:
        On global rank 0, what it published to `outputs/result.json`; None elsewhere.

    Raises:
        UserInputError: An option is invalid.
        RunError: The dataset is missing from the location, or a copy failed.
    """
    from kfp_lightning.components.train_mnist.train import TrainingOutputs, run_training

    if args.nodes < 1:
        raise invalid("nodes", args.nodes, "an integer >= 1")
    config = TrainConfig(**json.loads(args.config))
    location = parse_logs_root(args.location, parameter="location")
    storage = open_storage(location, args.s3_endpoint)
    processes = world_size()
    with tempfile.TemporaryDirectory(prefix="node-") as work:
        work_dir = Path(work)
        dataset_files = files_under(storage, DATASET)
        if not dataset_files:
            raise RunError(f"no dataset in {location.uri}/{DATASET}: the step uploads it first")
        download_tree(storage, dataset_files, DATASET, work_dir / DATASET)
        output_dirs = {name: work_dir / name for name in OUTPUT_DIRS}
        result = run_training(
            work_dir / DATASET,
            TrainingOutputs(
                output_dirs["model"], output_dirs["tensorboard_logs"], output_dirs["evaluation"]
            ),
            config,
            location,
            args.s3_endpoint,
            args.live_update_seconds,
            args.run_name,
            num_nodes=args.nodes,
        )
        if result is None:  # not global rank 0: it has written nothing
            return None
        published = {
            "metrics": result.metrics,
            "model_metadata": result.model_metadata,
            "labels": result.labels,
            "confusion_matrix": result.confusion_matrix,
        }
        files = publish_outputs(storage, output_dirs, published)
        print(
            f"rank 0 of {processes} processes on {args.nodes} nodes: published {len(files)} "
            f"files to {location.uri}/outputs",
            flush=True,
        )
        return published


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one process of the world; exit status 0, 1 (failed) or 2 (bad option)."""
    args = build_parser().parse_args(argv)
    run_or_exit(train_on_this_node, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
