"""Train the MNIST network with Lightning and write the Model, metrics, logs and evaluation.

`train_from_run_form` is the one function the KFP component calls: it validates the run-form
values into typed configurations and launches the training entry point (`distributed.py`) on
this pod's devices: in this very process for one device, or as torchrun's processes, one per
GPU, for several; then it collects what global rank 0 published to the task's live location.
In each process `run_training` trains on the GPU when one is visible (CPU otherwise), logs
scalars to TensorBoard as it goes, copies the event files to the live location every few
seconds (where the TensorBoard server reads them), stops at the first non-finite loss,
evaluates on the test set at the end, and writes each output directory atomically, so a failed
run leaves no partial artifact behind. A retried task (same run id) resumes from the newest
good checkpoint in the live location.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.rank_zero import LightningDeprecationWarning

from kfp_lightning.components.common import logs_location, run_layout, training
from kfp_lightning.components.common.dataset import read_dataset_metadata
from kfp_lightning.components.common.errors import exit_without_teardown, invalid
from kfp_lightning.components.common.evaluation import FILE_NAME as EVALUATION_FILE
from kfp_lightning.components.common.files import atomic_directory, write_json
from kfp_lightning.components.common.run_form import from_run_form
from kfp_lightning.components.common.storage import open_storage
from kfp_lightning.components.common.torchrun import run_torchrun
from kfp_lightning.components.common.training import TEST_SET, TrainConfig, plan_devices
from kfp_lightning.components.train_mnist import distributed, evaluation, model, progress
from kfp_lightning.components.train_mnist.data import MNISTDataModule
from kfp_lightning.components.train_mnist.export import export_model
from kfp_lightning.components.train_mnist.live import live_logging

# The "lightning" logger prints its records through a handler of its own and also hands them
# to the root logger, which KFP's executor configures (kfp/dsl/executor_main.py): every line
# would appear twice in a pod's log. One is enough.
logging.getLogger("lightning").propagate = False
# Lightning 2.6 builds torch's `LeafSpec`, which torch 2.14 deprecates (lightning/pytorch/
# utilities/_pytree.py): a warning about the library pair, nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
if os.environ.get(training.CONSOLE_ENV) == "quiet":
    # Device, tips and the model summary stay out of the terminal; --verbose shows them. The
    # levels are set where Lightning sets them, on its two packages' loggers.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=LightningDeprecationWarning)


class TrainingOutputs(NamedTuple):
    """The directories a training run creates (each atomically, or not at all).

    The fields are named as `run_layout.OUTPUT_DIRS` names the outputs.

    Attributes:
        model: The Model artifact: exported program, weights, metadata.
        tensorboard_logs: The run's TensorBoard event files, in a folder named after it.
        evaluation: `evaluation.json`, the report's input; None writes none.
    """

    model: str | Path
    tensorboard_logs: str | Path
    evaluation: str | Path | None = None


def select_device(gpus: int, precision: str) -> tuple[str, int]:
    """`plan_devices` for the GPUs this process sees, saying when it falls back to the CPU."""
    accelerator, devices = plan_devices(gpus, precision, training.visible_gpus())
    if gpus >= 1 and accelerator == "cpu" and rank_zero_only.rank == 0:
        print(f"gpus={gpus} but no GPU is visible to this process: training on the CPU", flush=True)
    return accelerator, devices


def check_run(
    config: TrainConfig, dataset_metadata: Mapping[str, Any], accelerator: str, processes: int
) -> int:
    """Fails at once, and in one line, on parameters that cannot train on this data and device.

    Args:
        config: The training parameters.
        dataset_metadata: The Dataset's metadata.
        accelerator: "gpu" or "cpu", as `plan_devices` chose.
        processes: Processes in the world, each taking `config.batch_size` images per step.

    Returns:
        The training images (those the validation split leaves).

    Raises:
        UserInputError: A parameter that cannot work here.
    """
    training.check_compiler(config.torch_compile, accelerator)
    train_samples = int(dataset_metadata["train_samples"]) - config.validation_size
    if train_samples < 1:
        accepted = (
            f"{TEST_SET} or fewer than the {dataset_metadata['train_samples']} training images"
        )
        raise invalid("validation", config.validation, accepted)
    training.check_batch_size(config.batch_size, train_samples, processes, config.validation_size)
    return train_samples


def run_training(
    dataset_dir: str | Path,
    outputs: TrainingOutputs,
    config: TrainConfig | None = None,
    live_logs: logs_location.LogsLocation | None = None,
    s3_endpoint: str | None = None,
    live_update_seconds: float = 10.0,
    run_name: str = "",
    num_nodes: int = 1,
) -> run_layout.TrainResult | None:
    """Trains, evaluates and exports the MNIST network, as one process or one of several.

    Started by torchrun (several GPUs, `config.gpus`, or `num_nodes` nodes), every process runs
    this function and Lightning's DDP joins them: each trains on its share of every epoch,
    with `config.batch_size` images per step (a global batch of batch_size x processes), and
    global rank 0 alone writes the logs, checkpoints and outputs; the others return None.

    Args:
        dataset_dir: Dataset artifact directory written by `download_mnist`.
        outputs: The directories to create.
        config: Training parameters; the classic recipe when None.
        live_logs: Where TensorBoard reads this run's logs while it trains, and where
            checkpoints go (every epoch, and every `config.checkpoint_interval_minutes`);
            None keeps the logs local until the end. When it holds a checkpoint of an
            earlier attempt of the same run with the same configuration, training resumes
            from it.
        s3_endpoint: http(s)://host[:port] of the S3 API, for an s3:// `live_logs`.
        live_update_seconds: Longest delay before a logged point is readable in `live_logs`.
        run_name: The pipeline run's display name, which names the run in TensorBoard.
        num_nodes: Nodes of a torchrun launch (Lightning reads the rest of the layout from
            torchrun's environment); 1 inside one pod.

    Returns:
        The metrics, the model metadata and the confusion matrix on global rank 0; None on
        every other process, which writes no output.

    Raises:
        UserInputError: A parameter cannot work with this data or on this machine (nothing
            is written then).
        TrainingDivergedError: A loss or metric became NaN or infinite.
    """
    marks = {"start": progress.process_start()}
    config = config or TrainConfig()
    dataset_metadata = read_dataset_metadata(dataset_dir)
    accelerator, devices = select_device(config.gpus, config.precision)
    processes = devices * num_nodes
    train_samples = check_run(config, dataset_metadata, accelerator, processes)
    storage = open_storage(live_logs, s3_endpoint) if live_logs else None
    # At least one training-loss point per epoch, however small each process's share of the
    # data (`DeviceBatches`: an equal share of whole images, in batches, the last one short).
    steps_per_epoch = math.ceil((train_samples // processes) / config.batch_size)
    log_every_n_steps = min(config.log_every_n_steps, steps_per_epoch)

    L.seed_everything(config.seed, workers=True, verbose=False)
    if accelerator == "gpu":
        # TF32 matmuls and cuDNN autotuning: same accuracy for this network, much faster.
        torch.set_float32_matmul_precision("high")
    datamodule = MNISTDataModule(
        dataset_dir,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        validation_size=config.validation_size,
        seed=config.seed,
        max_shift=config.max_shift,
    )
    module = model.MNISTClassifier(config)
    throughput = progress.ThroughputMeter()
    collector = evaluation.CollectEvaluation(on_test_set_validation=config.validation_size == 0)
    run_label = evaluation.run_folder_name(run_name)
    writer = rank_zero_only.rank == 0

    with (
        # Every process has its own (only the entry point starts several, each in a scratch
        # directory); only rank 0's logger writes to it.
        atomic_directory(outputs.tensorboard_logs) as logs_dir,
        live_logging(
            logs_dir, run_label, config, log_every_n_steps, live_logs, storage, live_update_seconds
        ) as (logger, live_callbacks, resume_path),
        warnings.catch_warnings(),
    ):
        # Batches are already on the device; Lightning's DataLoader advice does not apply.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer = L.Trainer(
            max_epochs=config.epochs,
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy="ddp" if processes > 1 else "auto",
            precision=config.precision,
            gradient_clip_val=config.gradient_clip_norm,
            logger=logger,
            callbacks=[
                LearningRateMonitor(),
                throughput,
                progress.make_progress_bar(config.progress_interval_seconds),
                # Before the checkpoints: a diverged state is never saved.
                progress.DivergenceGuard(
                    progress.divergence_hint(config), check_every_n_steps=log_every_n_steps
                ),
                collector,
                *live_callbacks,
            ],
            log_every_n_steps=log_every_n_steps,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            benchmark=accelerator == "gpu",
        )
        fit_module = torch.compile(module) if config.torch_compile else module
        marks["fit_start"] = time.monotonic()
        trainer.fit(fit_module, datamodule=datamodule, ckpt_path=resume_path)
        marks["fit_end"] = time.monotonic()
        # After a resume past the last epoch nothing was fitted: the checkpoint's record.
        validation = collector.validation
        if config.validation_size == 0 and collector.evaluation is not None:
            # The last validation pass ran on the test set: it is the test pass.
            test = dict(validation)
            tagged = {model.tag(k, model.TEST): v for k, v in test.items()}
            logger.log_metrics(tagged, trainer.global_step)
        else:
            trainer.test(fit_module, datamodule=datamodule, verbose=False)
            test = model.split_metrics(trainer.callback_metrics, model.TEST)
        if writer:
            evaluation.log_results(trainer, collector, datamodule.test_images, config, test)
        marks["evaluated"] = time.monotonic()
        logger.finalize("success")
    if not writer:
        return None

    metrics = {
        "test_accuracy": test[model.ACCURACY],
        "test_loss": test[model.LOSS],
        "val_accuracy": validation[model.ACCURACY],
        "val_loss": validation[model.LOSS],
        "epochs": float(trainer.current_epoch),
        "steps": float(trainer.global_step),
        "train_samples_seen": float(throughput.samples),
        "nodes": float(num_nodes),
        "processes": float(trainer.world_size),
        "train_samples_per_second": throughput.samples_per_second,
        "train_seconds": throughput.seconds,
        "wall_seconds": throughput.wall_seconds,
    }
    # The guard stops training first: nothing non-finite is ever written.
    if bad := progress.non_finite(metrics):
        raise progress.TrainingDivergedError(f"training ended with non-finite metrics {bad}")
    device = torch.cuda.get_device_name() if accelerator == "gpu" else "cpu"
    if outputs.evaluation is not None:
        headline = ("test_accuracy", "test_loss", "train_seconds", "train_samples_per_second")
        run = {
            "name": run_label,
            "device": device,
            "epochs": int(metrics["epochs"]),
            **{k: metrics[k] for k in headline},
            "parameters": config.as_dict(),
        }
        document = evaluation.evaluation_document(collector.evaluation, datamodule.test_images, run)
        with atomic_directory(outputs.evaluation) as staging:
            write_json(staging / EVALUATION_FILE, document)
    model_metadata = export_model(
        module.net,
        outputs.model,
        {
            "test_accuracy": metrics["test_accuracy"],
            "test_loss": metrics["test_loss"],
            "epochs": trainer.current_epoch,
            "config": config.as_dict(),
            "dataset": {
                "train_samples": train_samples,
                "sha256": dataset_metadata.get("sha256", {}),
            },
            "accelerator": accelerator,
            "device": device,
            "tensorboard_logs": live_logs.uri if live_logs else None,
        },
    )
    marks["exported"] = time.monotonic()
    # This attempt's time only: a resumed run's earlier training happened in another pod.
    print(progress.timing_line(marks, throughput.attempt_seconds), flush=True)
    labels = [str(d) for d in range(evaluation.CLASSES)]
    return run_layout.TrainResult(
        metrics, model_metadata, labels, collector.evaluation.confusion_matrix
    )


def train_from_run_form(
    dataset_dir: str | Path,
    output_dirs: Mapping[str, str | Path],
    run_id: str,
    run_name: str,
    parameters: Mapping[str, Any],
    task_name: str = "",
) -> run_layout.TrainResult:
    """The KFP component's entry: validates the run-form values, then trains on this pod.

    One device: the entry point's `train_and_publish` runs in this process (no launcher, no
    second process: the first curve point comes soonest). Several GPUs: `torchrun --standalone`
    runs the entry point as one process per GPU, as a child of this one, which waits for it and
    stops it on SIGTERM. Either way global rank 0 publishes the outputs to a folder of this pod,
    and this process collects them from there as the nodes step collects them from the location.

    Args:
        dataset_dir: Dataset artifact directory.
        output_dirs: Each name of `run_layout.OUTPUT_DIRS` -> the directory to create.
        run_id: The pipeline run's id; the live logs go to
            `<tensorboard_logs_root>/<run_id>/<task key>` (`config.training_task_key`).
        run_name: The pipeline run's display name (TensorBoard's name for the run).
        parameters: Run-form values of every `TrainConfig` and `LiveLogsConfig` field.
        task_name: The task's name in the pipeline, part of its key.

    Returns:
        What rank 0 published.
    """
    config = from_run_form(TrainConfig, parameters)
    logs = from_run_form(logs_location.LiveLogsConfig, parameters)
    metadata = read_dataset_metadata(Path(dataset_dir))
    key = training.training_task_key(task_name, metadata.get("sha256", {}), config)
    uri = logs.task_location(run_id, key).uri
    accelerator, devices = plan_devices(config.gpus, config.precision, training.visible_gpus())
    # Before any process starts: one line for a value that cannot work, not one per process.
    check_run(config, metadata, accelerator, devices)
    with tempfile.TemporaryDirectory(prefix="handover-") as handover:
        arguments = run_layout.entry_arguments(
            uri, 1, config, logs.endpoint(), run_name, logs.live_update_seconds, dataset_dir
        )
        arguments += ["--publish", handover]
        if devices > 1:
            run_torchrun(1, devices, distributed.MODULE, arguments)
        else:
            distributed.train_and_publish(distributed.build_parser().parse_args(arguments))
        handed_over = open_storage(logs_location.parse_logs_root(handover, parameter="publish"))
        result = run_layout.collect_outputs(handed_over, output_dirs)
    # Its files are written and closed, and no child is left: the next task need not wait for
    # torch's teardown.
    exit_without_teardown()
    return result
