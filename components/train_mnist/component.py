"""KFP component: train the MNIST CNN with Lightning (logic: `train.py`, settings: `config.py`)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from kfp_lightning.components import images


@dsl.component(base_image=images.image_ref(images.TRAINER), install_kfp_package=False)
def train_mnist(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    tensorboard_logs: Output[Artifact],
    run_id: str,
    tensorboard_logs_root: str = "s3://mlpipeline/private/{namespace}/tensorboard",
    s3_endpoint: str = "http://minio-service.kubeflow:9000",
    flush_secs: int = 10,
    checkpoint_interval_minutes: float = 10.0,
    epochs: int = 14,
    batch_size: int = 64,
    learning_rate: float = 1.0,
    gamma: float = 0.7,
    optimizer: str = "adadelta",
    lr_schedule: str = "step",
    seed: int = 1,
    validation: str = "test-set",
    augmentation: str = "none",
    eval_batch_size: int = 1000,
    gpus: int = 1,
    precision: str = "32-true",
    torch_compile: str = "off",
    channels_last: str = "off",
    log_every_n_steps: int = 50,
):
    """Trains the pytorch/examples MNIST CNN with Lightning, tests it and exports it.

    Args:
        dataset: The Dataset written by download_mnist.
        run_id: The pipeline run's id; live logs go to <tensorboard_logs_root>/<run_id>.
        tensorboard_logs_root: Where TensorBoard reads live logs: s3://bucket/prefix,
            pvc://claim/path or a directory; {namespace} becomes the run's namespace.
        s3_endpoint: S3 API endpoint for an s3:// root, http(s)://host[:port].
        flush_secs: Longest delay, in seconds, before a logged point is readable there.
        checkpoint_interval_minutes: Longest training time between checkpoints within an
            epoch (one is also written at every epoch end), kept beside the live logs; a
            retried task resumes from the newest.
        epochs: Passes over the training set (upstream: 14).
        batch_size: Training batch size (upstream: 64).
        learning_rate: Adadelta's learning rate, or the peak rate of the one-cycle schedule.
        gamma: StepLR's learning-rate decay per epoch, in (0, 1]; ignored by one-cycle.
        optimizer: adadelta (upstream), sgd (Nesterov momentum 0.9, weight decay 5e-4) or
            adamw (weight decay 1e-4).
        lr_schedule: step (StepLR each epoch, upstream) or onecycle (OneCycleLR each step).
        seed: Seed of the initial weights, the validation split, dropout and shuffling.
        validation: What the validation pass after every epoch runs on: test-set (as the
            upstream example; training uses every training image) or a number of training
            images to hold out instead, e.g. 5000.
        augmentation: none (upstream) or shift:N, each training image moved by a random
            offset of up to N pixels (1 to 4).
        eval_batch_size: Batch size of the validation and test passes.
        gpus: GPUs to train on: 0 (CPU) or 1. Without a visible GPU, training uses the CPU.
        precision: 32-true, bf16-mixed or 16-mixed (16-mixed needs a GPU).
        torch_compile: on or off: compile the network with torch.compile.
        channels_last: on or off: keep convolutions in the NHWC memory layout.
        log_every_n_steps: Optimiser steps between logged training-loss points.
        model: Output. model.pt2 (torch.export program taking [0, 1] pixels, normalising
            itself), weights.pt (state_dict) and metadata.json.
        metrics: Output. Test accuracy and loss, last validation values, epochs, steps and
            training samples per second.
        tensorboard_logs: Output. The run's TensorBoard event files.
    """
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.train_mnist.train import train_from_parameters

    result = run_or_exit(
        train_from_parameters,
        dataset.path,
        model.path,
        tensorboard_logs.path,
        run_id=run_id,
        tensorboard_logs_root=tensorboard_logs_root,
        s3_endpoint=s3_endpoint,
        flush_secs=flush_secs,
        checkpoint_interval_minutes=checkpoint_interval_minutes,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        gamma=gamma,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        seed=seed,
        validation=validation,
        augmentation=augmentation,
        eval_batch_size=eval_batch_size,
        gpus=gpus,
        precision=precision,
        torch_compile=torch_compile,
        channels_last=channels_last,
        log_every_n_steps=log_every_n_steps,
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    model.metadata.update(result.model_metadata)
