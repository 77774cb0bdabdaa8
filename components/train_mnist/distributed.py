"""The training entry point: one process of a training, however it was launched.

    torchrun --module kfp_lightning.components.train_mnist.distributed \\
        --location URI --nodes N --config JSON [--dataset DIR] [--s3-endpoint URL] ...

It is launched three ways, and publishes its outputs one way. `train.py` calls `train_and_publish`
in its own process for one device, and runs `torchrun --standalone` in the training pod for
several GPUs; the nodes step runs it as the nodes of a Kubeflow Trainer `TrainJob`, whose torch
plugin sets the `PET_*` variables torchrun reads (kubeflow/trainer v2.1.0,
pkg/runtime/framework/plugins/torch/torch.go, `EnforceMLPolicy`), or as local torchrun
processes (`components/common/torchrun.py`). torchrun starts this module in every process with
`RANK`, `WORLD_SIZE` and the rest, from which Lightning detects its `TorchElasticEnvironment`.
Every process reads the Dataset from `--dataset`, or downloads it from `<location>/dataset/`
(see `components/common/run_layout.py`), and calls `run_training(..., num_nodes=N)`; global
rank 0, the only process that gets a result, uploads the model, evaluation and result to
`<location>/outputs/` (or, launched in the training pod, to the `--publish` folder beside its
launcher), and the marker last, which also lists the live TensorBoard logs rank 0 kept current,
and the launcher collects them from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from kfp_lightning.components.common import run_layout
from kfp_lightning.components.common.errors import RunError, invalid, run_or_exit
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.run_layout import DATASET, OUTPUTS, TrainResult
from kfp_lightning.components.common.storage import open_storage
from kfp_lightning.components.common.training import TrainConfig

MODULE = "kfp_lightning.components.train_mnist.distributed"


def build_parser() -> argparse.ArgumentParser:
    """The entry point's options (`run_layout.entry_arguments` writes them)."""
    parser = argparse.ArgumentParser(prog=f"torchrun --module {MODULE}", description=__doc__)
    parser.add_argument("--location", required=True, help="the task's location (URI)")
    parser.add_argument("--nodes", required=True, type=int, help="nodes in the world")
    parser.add_argument("--config", required=True, help="TrainConfig's fields as a JSON object")
    parser.add_argument("--dataset", help="the Dataset's directory on this machine")
    parser.add_argument("--s3-endpoint", help="S3 API of an s3:// location")
    parser.add_argument("--publish", help="a folder here for the outputs (default: the location)")
    parser.add_argument("--run-name", default="", help="the pipeline run's display name")
    parser.add_argument(
        "--live-update-seconds", type=float, default=10.0, help="live logs' longest delay"
    )
    return parser


def train_and_publish(args: argparse.Namespace) -> TrainResult | None:
    """Trains as one process of the world; rank 0 publishes the outputs to the location.

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
    if args.nodes > 1 and "WORLD_SIZE" not in os.environ:
        raise RunError(f"--nodes {args.nodes} runs under torchrun (torchrun --module {MODULE})")
    location = parse_logs_root(args.location, parameter="location")
    storage = open_storage(location, args.s3_endpoint)
    with tempfile.TemporaryDirectory(prefix="train-") as work:
        work_dir = Path(work)
        dataset_dir = Path(args.dataset) if args.dataset else work_dir / DATASET
        if not args.dataset:
            if not (dataset_files := run_layout.files_under(storage, DATASET)):
                raise RunError(f"no dataset in {location.uri}/{DATASET}: the step uploads it first")
            run_layout.download_tree(storage, dataset_files, DATASET, dataset_dir)
        output_dirs = {name: work_dir / name for name in run_layout.OUTPUT_DIRS}
        result = run_training(
            dataset_dir,
            TrainingOutputs(**output_dirs),
            TrainConfig(**json.loads(args.config)),
            location,
            args.s3_endpoint,
            args.live_update_seconds,
            args.run_name,
            num_nodes=args.nodes,
        )
        if result is None:  # not global rank 0: it has written nothing
            return None
        # In the training pod the launcher shares this file system: no round trip through an
        # object store for outputs that stay on this machine.
        target = storage
        if args.publish:
            target = open_storage(parse_logs_root(args.publish, parameter="publish"), None)
        files = run_layout.publish_outputs(target, output_dirs, dataclasses.asdict(result))
    if result.metrics["processes"] > 1:
        print(
            f"rank 0 of {result.metrics['processes']:g} processes on {args.nodes} node(s): "
            f"published {len(files)} files to {args.publish or location.uri + '/' + OUTPUTS}",
            flush=True,
        )
    return result


if __name__ == "__main__":
    # Exit status 0, 1 (failed) or 2 (bad option).
    run_or_exit(train_and_publish, build_parser().parse_args())
