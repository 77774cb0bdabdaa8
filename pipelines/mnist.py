"""The MNIST pipeline: download -> train with Lightning -> report, with live TensorBoard.

    python pipelines/mnist.py --compile [--output mnist_pipeline.yaml] [--preset fast]
    python pipelines/mnist.py --local [--output-dir runs/local] [--epochs 1 --mirror URL ...]

`--compile` writes the KFP v2 YAML to upload in the Kubeflow UI; `--local` runs the same
pipeline on this machine with `kfp.local` (see `cli.py`). This module only defines the DAG:
which component runs where, on what resources, with which Kubernetes settings.
"""

import dataclasses
import functools
import sys
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Metrics,
    Model,
    PipelineTask,
    base_component,
)

from kfp_lightning.components import images
from kfp_lightning.components.common.logs_location import PVC_MOUNT_ROOT, LiveLogsConfig
from kfp_lightning.components.common.run_form import PIPELINE, with_run_parameters
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.download_mnist.sources import DownloadConfig
from kfp_lightning.components.launch_tensorboard.component import launch_tensorboard
from kfp_lightning.components.launch_tensorboard.launcher import LauncherConfig
from kfp_lightning.components.launch_tensorboard.objects import ACCESS_KEY_KEY, SECRET_KEY_KEY
from kfp_lightning.components.report_training.component import report_training
from kfp_lightning.components.train_mnist.component import train_mnist
from kfp_lightning.components.train_mnist.config import TrainConfig
from kfp_lightning.components.train_on_nodes.component import train_on_nodes
from kfp_lightning.components.train_on_nodes.nodes import TRAINJOB
from kfp_lightning.pipelines.scheduling import GPU_RESOURCE, SchedulingConfig

PIPELINE_NAME = "mnist-lightning"
# Every run parameter, in the run form's order: the dataclasses that declare them.
RUN_PARAMETERS = (DownloadConfig, TrainConfig, LiveLogsConfig, LauncherConfig, SchedulingConfig)
# Keys of KFP's object-store secret (`mlpipeline-minio-artifact`) -> the AWS SDK's variables.
S3_SECRET_KEYS = {ACCESS_KEY_KEY: "AWS_ACCESS_KEY_ID", SECRET_KEY_KEY: "AWS_SECRET_ACCESS_KEY"}
DEFAULT_TRAINING_TIMEOUT_SECONDS = 6 * 3600
DOWNLOAD_TIMEOUT_SECONDS = 30 * 60
SHARED_MEMORY_LIMIT = "4Gi"  # /dev/shm of the training pod
# With several nodes the step enforces the training timeout itself (deleting the TrainJob when
# it passes); its pod's deadline comes this much later, for collecting the outputs.
NODES_STEP_MARGIN_SECONDS = 15 * 60


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How KFP retries a task, and the window Argo allows for all of its attempts.

    Argo counts `backoff.maxDuration` from the start of the *first* attempt and also makes it
    the deadline of every later one (argoproj/argo-workflows workflow/controller/operator.go,
    `processNodeRetries`: `firstChildNode.StartedAt.Add(maxDuration)`), so KFP's default of
    3600 s means an attempt that fails after an hour is never retried (kubeflow/pipelines
    #14245). The window therefore covers every attempt running to its deadline, the pauses
    between them, and time to be scheduled (a GPU node scaling up) before each deadline starts.

    Attributes:
        retries: Attempts after the first.
        backoff_seconds: Pause before the first retry.
        backoff_factor: Multiplies the pause before each further retry. Whole numbers only:
            backend 2.5.0 truncates it to an int32 (backend/src/v2/compiler/argocompiler/
            container.go, `getTaskRetryStrategy`).
        attempt_deadline_seconds: `activeDeadlineSeconds` of one attempt's pod.
        scheduling_allowance_seconds: Time an attempt may wait to be scheduled; Kubernetes
            starts the pod deadline only once a node has accepted the pod.
    """

    retries: int
    backoff_seconds: int
    backoff_factor: int
    attempt_deadline_seconds: int
    scheduling_allowance_seconds: int = 30 * 60

    def window_seconds(self) -> int:
        """Seconds from the first attempt's start within which every retry can still run."""
        pauses = sum(self.backoff_seconds * self.backoff_factor**i for i in range(self.retries))
        attempt = self.attempt_deadline_seconds + self.scheduling_allowance_seconds
        return (self.retries + 1) * attempt + pauses

    def apply(self, task: PipelineTask) -> None:
        """Sets this policy on `task`."""
        task.set_retry(
            self.retries,
            backoff_duration=f"{self.backoff_seconds}s",
            backoff_factor=float(self.backoff_factor),
            backoff_max_duration=f"{self.window_seconds()}s",
        )


def use_secret_as_env(task: PipelineTask, secret_name: Any, keys: dict[str, str]) -> None:
    """`kfp.kubernetes.use_secret_as_env`, in a form every supported backend accepts.

    kfp-kubernetes 2.15+ always writes `optional` (a proto3 `optional bool`, so even `false` is
    emitted; kfp/kubernetes/secret.py). Backends before 2.15 do not know the field, and 2.14's
    API server parses the Kubernetes config strictly and refuses the run over it
    (backend/src/v2/compiler/argocompiler/container.go, protojson.Unmarshal). Leaving it out
    means "required" on every backend, which is what we want.
    """
    kubernetes.use_secret_as_env(task, secret_name, keys)
    for entry in task.platform_config["kubernetes"]["secretAsEnv"]:
        if entry.get("optional") is False:
            del entry["optional"]


def download_retries(attempt_deadline_seconds: int) -> RetryPolicy:
    """The download's retries: a flaky mirror recovers within minutes."""
    return RetryPolicy(3, 30, 2, attempt_deadline_seconds)


def training_retries(attempt_deadline_seconds: int) -> RetryPolicy:
    """Training's retries: a lost or preempted GPU node; each attempt resumes a checkpoint."""
    return RetryPolicy(2, 60, 2, attempt_deadline_seconds)


def arguments_for(
    component: base_component.BaseComponent, parameters: dict[str, Any]
) -> dict[str, Any]:
    """The run parameters `component` takes, by name (the others keep its defaults)."""
    return {k: v for k, v in parameters.items() if k in component.component_spec.inputs}


class Outputs(NamedTuple):
    model: Model
    metrics: Metrics
    classification_metrics: ClassificationMetrics
    tensorboard_logs: Artifact
    report: HTML


def build_pipeline(
    logs_pvc: str | None = None,
    retries: bool = True,
    training_timeout_seconds: int = DEFAULT_TRAINING_TIMEOUT_SECONDS,
    nodes: int = 1,
    node_launcher: str = TRAINJOB,
) -> base_component.BaseComponent:
    """Defines the pipeline.

    Args:
        logs_pvc: A PersistentVolumeClaim to mount in the training pod, for pvc:// logs roots
            (mounting is decided at compile time; the claim must exist when the run starts).
        retries: Retry download and training on failure (cluster runs); local runs skip it,
            since a failure there is not a lost node.
        training_timeout_seconds: Deadline of the training pod (activeDeadlineSeconds).
        nodes: Nodes to train on. With more than one, a step runs them as a Kubeflow Trainer
            TrainJob in place of the training task, with the same outputs.
        node_launcher: How that step runs the nodes: "trainjob", or "local" (torchrun
            processes on this machine, for `--local` runs).

    Returns:
        The pipeline, ready to compile or run.
    """

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Download MNIST, train the PyTorch example CNN with Lightning on a GPU "
        "node, watch it live in TensorBoard, and chart every scalar when it ends.",
    )
    @with_run_parameters(
        *RUN_PARAMETERS,
        scopes=[PIPELINE],
        namespace={
            "logs_pvc": logs_pvc,
            "retries": retries,
            "training_timeout_seconds": training_timeout_seconds,
            "nodes": nodes,
            "node_launcher": node_launcher,
        },
    )
    def mnist_pipeline(**parameters) -> Outputs:
        """Downloads MNIST, trains the CNN with Lightning and reports its TensorBoard scalars.

        Args:
        """
        download = download_mnist(**arguments_for(download_mnist, parameters))
        download.set_display_name("Download MNIST").set_caching_options(True)
        download.set_cpu_request("500m").set_memory_request("1Gi").set_memory_limit("2Gi")
        kubernetes.set_timeout(download, DOWNLOAD_TIMEOUT_SECONDS)

        if nodes > 1:
            train = train_on_nodes(
                dataset=download.outputs["dataset"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
                nodes=nodes,
                node_launcher=node_launcher,
                trainer_image=images.image_ref(images.TRAINER),
                logs_pvc=logs_pvc or "",
                timeout_seconds=training_timeout_seconds,
                **arguments_for(train_on_nodes, parameters),
            )
            # Never from the cache, as single-node training. The step only creates and follows
            # the TrainJob: no GPU, node selector or tolerations of its own (the TrainJob's
            # nodes get them), but the same access to the run's location as training.
            train.set_display_name(f"Train on {nodes} nodes").set_caching_options(False)
            train.set_cpu_request("500m").set_memory_request("1Gi").set_memory_limit("4Gi")
            train_deadline = training_timeout_seconds + NODES_STEP_MARGIN_SECONDS
            kubernetes.set_timeout(train, train_deadline)
            kubernetes.use_field_path_as_env(train, "POD_NAMESPACE", "metadata.namespace")
            # The nodes run as this step's account with its pull secrets, which the step reads
            # from its own pod (components/train_on_nodes/trainjob.py).
            kubernetes.use_field_path_as_env(train, "POD_NAME", "metadata.name")
            kubernetes.use_field_path_as_env(
                train, "POD_SERVICE_ACCOUNT", "spec.serviceAccountName"
            )
            if logs_pvc:
                kubernetes.mount_pvc(train, logs_pvc, str(PVC_MOUNT_ROOT / logs_pvc))
            else:
                use_secret_as_env(train, parameters["s3_credentials_secret"], S3_SECRET_KEYS)
        else:
            train_deadline = training_timeout_seconds
            train = train_mnist(
                dataset=download.outputs["dataset"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                # With the data and the parameters, it keys the task's state within the run.
                task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
                **arguments_for(train_mnist, parameters),
            )
            # A run is started in order to train (and to watch it): never answer from the cache.
            train.set_display_name("Train with Lightning").set_caching_options(False)
            # `gpus` is a string parameter: the driver reads the count with GetStringValue()
            # (backend/src/v2/driver/resolve.go, resolvePodSpecInputRuntimeParameter).
            train.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(parameters["gpus"])
            train.set_cpu_request("2").set_memory_request("4Gi").set_memory_limit("16Gi")
            kubernetes.add_node_selector_json(train, parameters["node_selector"])
            kubernetes.add_toleration_json(train, parameters["tolerations"])
            kubernetes.set_timeout(train, training_timeout_seconds)
            # With several GPUs, NCCL passes data between the processes through /dev/shm,
            # which a pod gets at only 64 MiB by default: a memory-backed volume there (it
            # counts against the memory limit only as far as it is used).
            kubernetes.empty_dir_mount(
                train, "dshm", "/dev/shm", medium="Memory", size_limit=SHARED_MEMORY_LIMIT
            )
            kubernetes.use_field_path_as_env(train, "POD_NAMESPACE", "metadata.namespace")
            if logs_pvc:
                kubernetes.mount_pvc(train, logs_pvc, str(PVC_MOUNT_ROOT / logs_pvc))
            else:
                # The secret exists in every Kubeflow profile namespace and in standalone KFP's.
                use_secret_as_env(train, parameters["s3_credentials_secret"], S3_SECRET_KEYS)

        # Beside training, not after it: TensorBoard is up while the first epochs run.
        launcher = launch_tensorboard(
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            **arguments_for(launch_tensorboard, parameters),
        )
        # A new run needs its own TensorBoard: never answer from the cache.
        launcher.set_display_name("Live TensorBoard").set_caching_options(False)
        launcher.set_cpu_request("100m").set_memory_request("256Mi").set_memory_limit("512Mi")
        kubernetes.use_field_path_as_env(launcher, "POD_NAMESPACE", "metadata.namespace")
        # The note's fallback manifest names the tools image, in the registry compiled for.
        launcher.set_env_variable(images.REGISTRY_ENV, images.registry())

        report = report_training(
            tensorboard_logs=train.outputs["tensorboard_logs"],
            evaluation=train.outputs["evaluation"],
        )
        report.set_display_name("Report").set_caching_options(True)
        report.set_cpu_request("250m").set_memory_request("512Mi").set_memory_limit("1Gi")

        # Resolved now, at compile time, so --image-registry retargets every task.
        for task, image in (
            (download, images.TRAINER),
            (train, images.TRAINER),
            (launcher, images.TOOLS),
            (report, images.TOOLS),
        ):
            ref = images.image_ref(image)
            task.set_container_image(ref)
            policy = images.pull_policy(ref)
            if policy:
                # The KFP driver sets it on the task's container (backend/src/v2/driver/
                # driver.go, `GetImagePullPolicy`; in the platform proto since backend 2.5.0).
                kubernetes.set_image_pull_policy(task, policy)

        if retries:
            # Mirrors time out and GPU nodes get preempted; deterministic failures (bad input,
            # exit status 2) fail the same way again, quickly.
            download_retries(DOWNLOAD_TIMEOUT_SECONDS).apply(download)
            training_retries(train_deadline).apply(train)

        return Outputs(
            model=train.outputs["model"],
            metrics=train.outputs["metrics"],
            classification_metrics=train.outputs["classification_metrics"],
            tensorboard_logs=train.outputs["tensorboard_logs"],
            report=report.outputs["report"],
        )

    return mnist_pipeline


@functools.cache
def default_pipeline() -> base_component.BaseComponent:
    """The pipeline with the default compile options, built once (KFP takes most of a second)."""
    return build_pipeline()


def __getattr__(name: str) -> Any:
    # `mnist_pipeline` is built when first used, not on import: the CLI derives its options
    # from the declarations, and `--local` or `--compile` build the pipeline they need.
    if name == "mnist_pipeline":
        return default_pipeline()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from kfp_lightning.pipelines.cli import main

    sys.exit(main())
