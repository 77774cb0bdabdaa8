"""The MNIST pipeline: download -> train with Lightning -> report, with live TensorBoard.

    python pipelines/mnist.py --compile [--output mnist_pipeline.yaml] [--preset fast]
    python pipelines/mnist.py --local [--output-dir runs/local] [--epochs 1 --mirror URL ...]

`--compile` writes the KFP v2 YAML to upload in the Kubeflow UI; `--local` runs the same
pipeline on this machine with `kfp.local` (see `cli.py`). This module only defines the DAG:
which component runs where, on what resources, with which Kubernetes settings.
"""

import sys
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Metrics, Model, base_component

from kfp_lightning.components import images
from kfp_lightning.components.common.logs_location import PVC_MOUNT_ROOT
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.launch_tensorboard.component import launch_tensorboard
from kfp_lightning.components.launch_tensorboard.objects import ACCESS_KEY_KEY, SECRET_KEY_KEY
from kfp_lightning.components.report_training.component import report_training
from kfp_lightning.components.train_mnist.component import train_mnist

PIPELINE_NAME = "mnist-lightning"
GPU_RESOURCE = "nvidia.com/gpu"
# The taint GPU node pools commonly carry (GKE, EKS, the NVIDIA GPU operator's examples).
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
# Keys of KFP's object-store secret (`mlpipeline-minio-artifact`) -> the AWS SDK's variables.
S3_SECRET_KEYS = {ACCESS_KEY_KEY: "AWS_ACCESS_KEY_ID", SECRET_KEY_KEY: "AWS_SECRET_ACCESS_KEY"}
DEFAULT_TRAINING_TIMEOUT_SECONDS = 6 * 3600

_download = download_mnist.component_spec.inputs
_train = train_mnist.component_spec.inputs
_launch = launch_tensorboard.component_spec.inputs


class Outputs(NamedTuple):
    model: Model
    metrics: Metrics
    tensorboard_logs: Artifact
    report: HTML


def build_pipeline(
    logs_pvc: str | None = None,
    retries: bool = True,
    training_timeout_seconds: int = DEFAULT_TRAINING_TIMEOUT_SECONDS,
) -> base_component.BaseComponent:
    """Defines the pipeline.

    Args:
        logs_pvc: A PersistentVolumeClaim to mount in the training pod, for pvc:// logs roots
            (mounting is decided at compile time; the claim must exist when the run starts).
        retries: Retry download and training on failure (cluster runs); local runs skip it,
            since a failure there is not a lost node.
        training_timeout_seconds: Deadline of the training pod (activeDeadlineSeconds).

    Returns:
        The pipeline, ready to compile or run.
    """

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Download MNIST, train the PyTorch example CNN with Lightning on a GPU "
        "node, watch it live in TensorBoard, and chart every scalar when it ends.",
    )
    def mnist_pipeline(
        mirror: str = _download["mirror"].default,
        expected_md5: dict = _download["expected_md5"].default,
        epochs: int = _train["epochs"].default,
        batch_size: int = _train["batch_size"].default,
        learning_rate: float = _train["learning_rate"].default,
        gamma: float = _train["gamma"].default,
        optimizer: str = _train["optimizer"].default,
        lr_schedule: str = _train["lr_schedule"].default,
        seed: int = _train["seed"].default,
        validation: str = _train["validation"].default,
        augmentation: str = _train["augmentation"].default,
        gpus: int = _train["gpus"].default,
        precision: str = _train["precision"].default,
        torch_compile: str = _train["torch_compile"].default,
        channels_last: str = _train["channels_last"].default,
        tensorboard_logs_root: str = _train["tensorboard_logs_root"].default,
        s3_endpoint: str = _train["s3_endpoint"].default,
        s3_credentials_secret: str = _launch["s3_credentials_secret"].default,
        kubeflow_base_url: str = _launch["kubeflow_base_url"].default,
        flush_secs: int = _train["flush_secs"].default,
        checkpoint_interval_minutes: float = _train["checkpoint_interval_minutes"].default,
        node_selector: dict = {},
        tolerations: list = [GPU_TOLERATION],
    ) -> Outputs:
        """Downloads MNIST, trains the CNN with Lightning and reports its TensorBoard scalars.

        Args:
            mirror: Base URLs holding the four MNIST *-ubyte.gz files, comma-separated,
                tried in order (http://, https:// or file://). Default: torchvision's mirrors.
            expected_md5: MD5 of each uncompressed MNIST file, by file name. Default: the
                published checksums; change only to train on another MNIST-format data set.
            epochs: Passes over the training set (classic recipe: 14).
            batch_size: Training batch size (classic: 64).
            learning_rate: Adadelta's learning rate (classic: 1.0), or the one-cycle peak.
            gamma: StepLR's learning-rate decay per epoch, in (0, 1] (classic: 0.7).
            optimizer: adadelta (classic), sgd (Nesterov momentum 0.9, weight decay 5e-4) or
                adamw (weight decay 1e-4, the fast preset's).
            lr_schedule: step (StepLR each epoch, classic) or onecycle (OneCycleLR each step).
            seed: Seed of the initial weights, the validation split, dropout and shuffling.
            validation: What the validation pass after every epoch runs on: test-set (as the
                upstream example) or a number of training images to hold out, e.g. 5000.
            augmentation: none (classic) or shift:N, each training image moved by a random
                offset of up to N pixels (1 to 4), drawn on the device.
            gpus: GPUs requested for training (nvidia.com/gpu): 1, or 0 to train on CPU nodes.
            precision: 32-true, bf16-mixed or 16-mixed (16-mixed needs a GPU).
            torch_compile: on or off: compile the network with torch.compile.
            channels_last: on or off: keep convolutions in the NHWC memory layout.
            tensorboard_logs_root: Where training streams TensorBoard logs, one folder per
                run: s3://bucket/prefix (default: KFP's object store) or pvc://claim/path
                (compile with --logs-pvc). {namespace} becomes the run's namespace.
            s3_endpoint: S3 API of an s3:// root, http(s)://host[:port]. Default: KFP's store
                (MinIO, or SeaweedFS behind the same service in newer Kubeflow releases).
            s3_credentials_secret: Secret in the run's namespace with keys accesskey and
                secretkey for the S3 API (KFP's own, mlpipeline-minio-artifact, by default).
            kubeflow_base_url: "/" for a TensorBoard link relative to the Kubeflow UI, or the
                Kubeflow URL (e.g. https://kubeflow.example.com) for an absolute one.
            flush_secs: Longest delay, in seconds, before a logged point reaches TensorBoard.
            checkpoint_interval_minutes: Longest training time between checkpoints within an
                epoch (one is also written at every epoch end), stored beside the live logs;
                a retried or preempted training task resumes from the newest.
            node_selector: Node labels the training pod must match, as a JSON object, e.g.
                {"cloud.google.com/gke-accelerator": "nvidia-l4"}. Empty: any GPU node.
            tolerations: Tolerations of the training pod, as a JSON list of Kubernetes
                Toleration objects. Default: tolerate the nvidia.com/gpu NoSchedule taint.
        """
        download = download_mnist(mirror=mirror, expected_md5=expected_md5)
        download.set_display_name("Download MNIST").set_caching_options(True)
        download.set_cpu_request("500m").set_memory_request("1Gi").set_memory_limit("2Gi")

        train = train_mnist(
            dataset=download.outputs["dataset"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
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
            gpus=gpus,
            precision=precision,
            torch_compile=torch_compile,
            channels_last=channels_last,
        )
        # A run is started in order to train (and to watch it): never answer from the cache.
        train.set_display_name("Train with Lightning").set_caching_options(False)
        train.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
        train.set_cpu_request("2").set_memory_request("4Gi").set_memory_limit("16Gi")
        kubernetes.add_node_selector_json(train, node_selector)
        kubernetes.add_toleration_json(train, tolerations)
        kubernetes.set_timeout(train, training_timeout_seconds)
        kubernetes.use_field_path_as_env(train, "POD_NAMESPACE", "metadata.namespace")
        # Optional: a pvc:// or local root needs no credentials, and the secret may be absent.
        kubernetes.use_secret_as_env(train, s3_credentials_secret, S3_SECRET_KEYS, optional=True)
        if logs_pvc:
            kubernetes.mount_pvc(train, logs_pvc, str(PVC_MOUNT_ROOT / logs_pvc))

        # Beside training, not after it: TensorBoard is up while the first epochs run.
        launcher = launch_tensorboard(
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            tensorboard_logs_root=tensorboard_logs_root,
            s3_endpoint=s3_endpoint,
            s3_credentials_secret=s3_credentials_secret,
            kubeflow_base_url=kubeflow_base_url,
        )
        # A new run needs its own TensorBoard: never answer from the cache.
        launcher.set_display_name("Live TensorBoard").set_caching_options(False)
        launcher.set_cpu_request("100m").set_memory_request("256Mi").set_memory_limit("512Mi")
        kubernetes.use_field_path_as_env(launcher, "POD_NAMESPACE", "metadata.namespace")
        # The note's fallback manifest names the tools image, in the registry compiled for.
        launcher.set_env_variable(images.REGISTRY_ENV, images.registry())

        report = report_training(tensorboard_logs=train.outputs["tensorboard_logs"])
        report.set_display_name("Report").set_caching_options(True)
        report.set_cpu_request("250m").set_memory_request("512Mi").set_memory_limit("1Gi")

        # Resolved now, at compile time, so --image-registry retargets every task.
        for task, image in (
            (download, images.TRAINER),
            (train, images.TRAINER),
            (launcher, images.TOOLS),
            (report, images.TOOLS),
        ):
            task.set_container_image(images.image_ref(image))

        if retries:
            # Mirrors time out and GPU nodes get preempted; deterministic failures (bad input,
            # exit status 2) fail the same way again, quickly.
            download.set_retry(3, backoff_duration="30s", backoff_factor=2.0)
            train.set_retry(2, backoff_duration="60s", backoff_factor=2.0)

        return Outputs(
            model=train.outputs["model"],
            metrics=train.outputs["metrics"],
            tensorboard_logs=train.outputs["tensorboard_logs"],
            report=report.outputs["report"],
        )

    return mnist_pipeline


mnist_pipeline = build_pipeline()


if __name__ == "__main__":
    from kfp_lightning.pipelines.cli import main

    sys.exit(main())
