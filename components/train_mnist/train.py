"""Train the MNIST network with Lightning and write the Model, metrics and TensorBoard logs.

`train_mnist` is the one function the KFP component calls. It validates everything before it
creates an output, trains on the GPU when one is visible (CPU otherwise), logs scalars to
TensorBoard as it goes, copies the event files to the run's live location every few seconds
(where the TensorBoard server reads them), runs the test pass at the end, and writes each
output directory atomically, so a failed run leaves no partial artifact behind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.files import atomic_directory
from kfp_lightning.components.common.logs_location import LogsLocation, run_logs_location
from kfp_lightning.components.common.storage import Storage, open_storage
from kfp_lightning.components.common.urls import parse_http_endpoint
from kfp_lightning.components.download_mnist.download import METADATA_FILE as DATASET_METADATA
from kfp_lightning.components.train_mnist.checkpoints import (
    CHECKPOINT_DIR,
    DurableCheckpoints,
    find_resumable_checkpoint,
)
from kfp_lightning.components.train_mnist.config import TEST_SET, TrainConfig
from kfp_lightning.components.train_mnist.data import MNISTDataModule
from kfp_lightning.components.train_mnist.export import export_model
from kfp_lightning.components.train_mnist.live_sync import LiveSync
from kfp_lightning.components.train_mnist.model import MNISTClassifier
from kfp_lightning.components.train_mnist.progress import ThroughputMeter, make_progress_bar


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        metrics: Final scalar metrics (test accuracy and loss, last validation values, epochs,
            optimiser steps, training samples per second, training seconds).
        model_metadata: The metadata written beside the model.
    """

    metrics: dict[str, float]
    model_metadata: dict[str, Any]


def select_device(gpus: int, precision: str) -> tuple[str, int]:
    """Chooses Lightning's accelerator and device count for `gpus` on this machine.

    Args:
        gpus: GPUs requested (0 = CPU).
        precision: Requested precision; "16-mixed" needs a GPU.

    Returns:
        (accelerator, devices) for `lightning.Trainer`.
    """
    if gpus > 1:
        raise invalid("gpus", gpus, "0 or 1 (training on several GPUs is not supported yet)")
    if gpus == 1 and torch.cuda.is_available():
        return "gpu", 1
    if gpus == 1:
        print("gpus=1 but no GPU is visible to this process: training on the CPU", flush=True)
    if precision == "16-mixed":
        raise invalid(
            "precision", precision, "32-true or bf16-mixed on a CPU (16-mixed needs a GPU)"
        )
    return "cpu", 1


def check_compiler(torch_compile: bool, accelerator: str) -> None:
    """Fails early when `torch.compile` cannot work: it generates and builds native code.

    On the CPU, Inductor needs a C++ compiler ($CXX, else g++); on a GPU, Triton needs a C
    compiler ($CC, else cc or gcc). The training image ships neither, to stay small and lean.
    """
    if not torch_compile:
        return
    if accelerator == "cpu":
        found = shutil.which(os.environ.get("CXX", "g++"))
    else:
        found = next(filter(None, map(shutil.which, (os.environ.get("CC", ""), "cc", "gcc"))), None)
    if not found:
        raise invalid(
            "torch_compile",
            "on",
            "off here: torch.compile needs a C/C++ compiler, and none is installed",
        )


def _read_dataset_metadata(dataset_dir: Path) -> dict[str, Any]:
    path = dataset_dir / DATASET_METADATA
    if not path.is_file():
        raise invalid("dataset", str(dataset_dir), "a Dataset artifact written by download_mnist")
    return json.loads(path.read_text())


def restore_logs(storage: Storage, logs_dir: Path) -> list[str]:
    """Copies a previous attempt's event files from the live location into `logs_dir`.

    So that a resumed run's final artifact holds its whole history, not just the last attempt.

    Returns:
        The relative paths restored.
    """
    restored = []
    for relative in storage.list_files():
        if not relative.startswith(f"{CHECKPOINT_DIR}/"):
            storage.download(relative, logs_dir / relative)
            restored.append(relative)
    return restored


def train_mnist(
    dataset_dir: str | Path,
    model_dir: str | Path,
    tensorboard_logs_dir: str | Path,
    config: TrainConfig | None = None,
    live_logs: LogsLocation | None = None,
    s3_endpoint: str | None = None,
) -> TrainResult:
    """Trains, tests and exports the MNIST network.

    Args:
        dataset_dir: Dataset artifact directory written by `download_mnist`.
        model_dir: Model artifact directory to create (exported program, weights, metadata).
        tensorboard_logs_dir: Directory to create holding the run's TensorBoard event files.
        config: Training parameters; the classic recipe when None.
        live_logs: Where TensorBoard reads this run's logs while it trains; None keeps them
            local until the end.
        s3_endpoint: http(s)://host[:port] of the S3 API, for an s3:// `live_logs`.

    Returns:
        The metrics and the model metadata.

    A `live_logs` location also holds checkpoints (every epoch, and every
    `config.checkpoint_interval_minutes`); when it already has one from an earlier attempt of
    the same run with the same configuration, training resumes from it.
    """
    config = config or TrainConfig()
    dataset_dir = Path(dataset_dir)
    dataset_metadata = _read_dataset_metadata(dataset_dir)
    accelerator, devices = select_device(config.gpus, config.precision)
    check_compiler(config.torch_compile, accelerator)
    live_storage = open_storage(live_logs, s3_endpoint) if live_logs else None

    train_samples = int(dataset_metadata["train_samples"]) - config.validation_size
    if train_samples < 1:
        raise invalid(
            "validation",
            config.validation,
            f"{TEST_SET} or fewer than the {dataset_metadata['train_samples']} training images",
        )
    # At least one training-loss point per epoch, however small the data set.
    log_every_n_steps = min(config.log_every_n_steps, math.ceil(train_samples / config.batch_size))

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
    module = MNISTClassifier(config)
    throughput = ThroughputMeter()
    # Writer flushes and copies each happen every half period: a point is readable within one.
    half_period = max(1.0, config.flush_secs / 2)

    with (
        atomic_directory(tensorboard_logs_dir) as logs_dir,
        tempfile.TemporaryDirectory(prefix="resume-") as resume_dir,
        warnings.catch_warnings(),
    ):
        # Batches are already on the device; Lightning's DataLoader advice does not apply.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        resume, restored, sync = None, [], None
        if live_storage is not None:
            restored = restore_logs(live_storage, logs_dir)
            resume = find_resumable_checkpoint(live_storage, dict(module.hparams), Path(resume_dir))
        logger = TensorBoardLogger(
            save_dir=str(logs_dir),
            name="",
            version="",
            default_hp_metric=False,
            flush_secs=half_period,
            # After a restart, hide points past the checkpoint that the lost attempt logged.
            purge_step=resume[1]["global_step"] if resume else None,
        )
        callbacks: list[L.Callback] = [
            LearningRateMonitor(),
            throughput,
            make_progress_bar(config.progress_interval_seconds),
        ]
        if live_storage is not None:
            sync = LiveSync(logs_dir, live_storage, half_period, live_logs.uri, restored)

            def make_logs_durable() -> None:
                logger.experiment.flush()
                sync.sync_once()

            callbacks.append(
                DurableCheckpoints(
                    live_storage,
                    config.checkpoint_interval_minutes * 60,
                    before_upload=make_logs_durable,
                )
            )
            print(
                f"TensorBoard logs: {live_logs.uri} (updated every {half_period:g} s)", flush=True
            )
            sync.start()
        if resume:
            checkpoint = resume[1]
            print(
                f"resuming from {CHECKPOINT_DIR}/{resume[0].name} "
                f"(epoch {checkpoint['epoch'] + 1}, step {checkpoint['global_step']})",
                flush=True,
            )
        trainer = L.Trainer(
            max_epochs=config.epochs,
            accelerator=accelerator,
            devices=devices,
            precision=config.precision,
            logger=logger,
            callbacks=callbacks,
            log_every_n_steps=log_every_n_steps,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            benchmark=accelerator == "gpu",
        )
        try:
            fit_module = torch.compile(module) if config.torch_compile else module
            started = time.perf_counter()
            trainer.fit(fit_module, datamodule=datamodule, ckpt_path=resume[0] if resume else None)
            validation = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")
            }
            if not validation:  # resumed after the last epoch: nothing was left to fit
                (validation,) = trainer.validate(fit_module, datamodule=datamodule, verbose=False)
            (test_metrics,) = trainer.test(fit_module, datamodule=datamodule, verbose=False)
            wall_seconds = time.perf_counter() - started
            logger.finalize("success")
        finally:
            if sync is not None:
                sync.stop()

        metrics = {
            "test_accuracy": float(test_metrics["test_accuracy"]),
            "test_loss": float(test_metrics["test_loss"]),
            "val_accuracy": validation["val_accuracy"],
            "val_loss": validation["val_loss"],
            "epochs": float(trainer.current_epoch),
            "steps": float(trainer.global_step),
            "train_samples_per_second": throughput.samples_per_second,
            "train_seconds": throughput.seconds,
            "wall_seconds": wall_seconds,
        }
        model_metadata = export_model(
            module.net,
            model_dir,
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
                "tensorboard_logs": live_logs.uri if live_logs else None,
            },
        )
    return TrainResult(metrics=metrics, model_metadata=model_metadata)


def train_from_parameters(
    dataset_dir: str | Path,
    model_dir: str | Path,
    tensorboard_logs_dir: str | Path,
    run_id: str,
    tensorboard_logs_root: str,
    s3_endpoint: str,
    **config: Any,
) -> TrainResult:
    """The KFP component's entry: validates the run-form values, then calls `train_mnist`.

    Args:
        dataset_dir: Dataset artifact directory.
        model_dir: Model artifact directory to create.
        tensorboard_logs_dir: TensorBoard logs artifact directory to create.
        run_id: The pipeline run's id; the live logs go to `<tensorboard_logs_root>/<run_id>`.
        tensorboard_logs_root: Root of the live logs (s3://, pvc://, file:// or a path).
        s3_endpoint: S3 API endpoint, used when the root is s3://.
        **config: `TrainConfig` fields.

    Returns:
        What `train_mnist` returns.
    """
    train_config = TrainConfig(**config)
    live_logs = run_logs_location(tensorboard_logs_root, run_id)
    endpoint = parse_http_endpoint(s3_endpoint, "s3_endpoint") if live_logs.scheme == "s3" else None
    return train_mnist(
        dataset_dir, model_dir, tensorboard_logs_dir, train_config, live_logs, endpoint
    )
