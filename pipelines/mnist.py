"""The MNIST pipeline: download -> train with Lightning -> report, with live TensorBoard.

    python pipelines/mnist.py --compile [--output mnist_pipeline.yaml] [--preset fast]
    python pipelines/mnist.py --local [--output-dir runs/local] [--epochs 1 --mirror URL ...]

`--compile` writes the KFP v2 YAML to upload in the Kubeflow UI; `--local` runs the same
pipeline on this machine with `kfp.local` (see `cli.py`). This module only defines the DAG:
which component runs where, on what resources, with which Kubernetes settings.
"""

import sys

if __name__ == "__main__":  # before any image is named: the CLI reports a bad registry in one line
    from kfp_lightning.pipelines.cli import main

    sys.exit(main())

from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.base_component import BaseComponent

from kfp_lightning.components.common import images
from kfp_lightning.components.common import training_pod as pod
from kfp_lightning.components.common.logs_location import LiveLogsConfig
from kfp_lightning.components.common.run_form import PIPELINE, parameters_of
from kfp_lightning.components.common.training import TrainConfig

# Re-exported: a pipeline of one's own passes it to `use_secret_as_env` (README, examples/).
from kfp_lightning.components.common.training_pod import (
    GPU_RESOURCE,
    S3_SECRET_KEYS,
    SchedulingConfig,
)
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.download_mnist.download import DownloadConfig
from kfp_lightning.components.launch_tensorboard.component import launch_tensorboard
from kfp_lightning.components.launch_tensorboard.launcher import LauncherConfig
from kfp_lightning.components.report_training.component import report_training
from kfp_lightning.components.train_mnist.component import train_mnist
from kfp_lightning.components.train_on_nodes.component import train_on_nodes
from kfp_lightning.components.train_on_nodes.nodes import TRAINJOB

# Every run parameter, in the run form's order: the dataclasses that declare them.
RUN_PARAMETERS = (DownloadConfig, TrainConfig, LiveLogsConfig, LauncherConfig, SchedulingConfig)
DEFAULT_TRAINING_TIMEOUT_SECONDS = 6 * 3600
DOWNLOAD_TIMEOUT_SECONDS = 30 * 60
# With several nodes the step enforces the training timeout itself (deleting the TrainJob when
# it passes); its pod's deadline comes this much later, for collecting the outputs.
NODES_STEP_MARGIN_SECONDS = 15 * 60
RETRY_BACKOFF_FACTOR = 2


def set_retries(
    task: PipelineTask, retries: int, backoff_seconds: int, attempt_deadline_seconds: int
) -> None:
    """Makes KFP retry `task`, within a window Argo allows for all of its attempts.

    Argo counts `backoff.maxDuration` from the start of the *first* attempt and also makes it
    the deadline of every later one (argoproj/argo-workflows workflow/controller/operator.go,
    `processNodeRetries`: `firstChildNode.StartedAt.Add(maxDuration)`), so KFP's default of
    3600 s means an attempt that fails after an hour is never retried (kubeflow/pipelines
    #14245). The window therefore covers every attempt running to its deadline, the pauses
    between them, and time to be scheduled (a GPU node scaling up) before each deadline starts.

    Args:
        task: The task.
        retries: Attempts after the first.
        backoff_seconds: Pause before the first retry; each further pause is twice the one
            before. Whole factors only: backend 2.5.0 truncates the factor to an int32
            (backend/src/v2/compiler/argocompiler/container.go, `getTaskRetryStrategy`).
        attempt_deadline_seconds: `activeDeadlineSeconds` of one attempt's pod.
    """
    pauses = sum(backoff_seconds * RETRY_BACKOFF_FACTOR**i for i in range(retries))
    # An attempt may wait this long to be scheduled: Kubernetes starts the pod deadline only
    # once a node has accepted the pod.
    attempt = attempt_deadline_seconds + 30 * 60
    task.set_retry(
        retries,
        backoff_duration=f"{backoff_seconds}s",
        backoff_factor=float(RETRY_BACKOFF_FACTOR),
        backoff_max_duration=f"{(retries + 1) * attempt + pauses}s",
    )


def use_secret_as_env(task: PipelineTask, secret_name: Any, keys: dict[str, str]) -> PipelineTask:
    """`kfp.kubernetes.use_secret_as_env`, in a form every supported backend accepts.

    kfp-kubernetes 2.15+ always writes `optional` (a proto3 `optional bool`, so even `false` is
    emitted; kfp/kubernetes/secret.py). Backends before 2.15 do not know the field, and 2.14's
    API server parses the Kubernetes config strictly and refuses the run over it
    (backend/src/v2/compiler/argocompiler/container.go, protojson.Unmarshal). Leaving it out
    (None: the field unset) means "required" on every backend, which is what we want.
    """
    return kubernetes.use_secret_as_env(task, secret_name, keys, optional=None)


def use_image(task: PipelineTask, image: str) -> None:
    """Runs `task` in the project's image `image` (`images.TRAINER` or `images.TOOLS`), named
    in the registry compiled for and pulled anew where its tag may be pushed again
    (`images.pull_policy`)."""
    ref = images.image_ref(image)
    task.set_container_image(ref)
    if policy := images.pull_policy(ref):
        # The KFP driver sets it on the task's container (backend/src/v2/driver/driver.go,
        # `GetImagePullPolicy`; in the platform proto since backend 2.5.0).
        kubernetes.set_image_pull_policy(task, policy)


def set_training_pod(
    task: PipelineTask, gpus: Any, node_selector: Any = None, tolerations: Any = None
) -> None:
    """Gives a `train_mnist` task the training pod's settings (components/common/
    training_pod.py): the trainer image, its GPUs, CPU and memory, where it may run, and a
    /dev/shm NCCL can use with several GPUs.

    Args:
        task: The task.
        gpus: Its GPU count, as a string or a string parameter: the driver reads the limit with
            GetStringValue() (backend/src/v2/driver/resolve.go,
            resolvePodSpecInputRuntimeParameter).
        node_selector: Labels its node must carry (a dict, or a parameter of one); none if None.
        tolerations: Taints it tolerates (a list, or a parameter of one); None: the taint GPU
            node pools commonly carry (`GPU_TOLERATION`).
    """
    use_image(task, images.TRAINER)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request(pod.CPU_REQUEST).set_memory_request(pod.MEMORY_REQUEST)
    task.set_memory_limit(pod.MEMORY_LIMIT)
    if node_selector is not None:
        kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(
        task, [pod.GPU_TOLERATION] if tolerations is None else tolerations
    )
    kubernetes.empty_dir_mount(
        task, pod.SHM_VOLUME, pod.SHM_PATH, medium=pod.SHM_MEDIUM, size_limit=pod.SHM_SIZE
    )


def arguments_for(component: BaseComponent, available: dict[str, Any]) -> dict[str, Any]:
    """The arguments among `available` that `component` takes: its signature decides."""
    return {k: v for k, v in available.items() if k in component.component_spec.inputs}


class Outputs(NamedTuple):
    model: dsl.Model
    metrics: dsl.Metrics
    classification_metrics: dsl.ClassificationMetrics
    tensorboard_logs: dsl.Artifact
    report: dsl.HTML


def build_pipeline(
    logs_pvc: str | None = None,
    retries: bool = True,
    training_timeout_seconds: int = DEFAULT_TRAINING_TIMEOUT_SECONDS,
    nodes: int = 1,
    node_launcher: str = TRAINJOB,
) -> BaseComponent:
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
    run_form = {p.name for p in parameters_of(RUN_PARAMETERS, [PIPELINE])}

    @dsl.pipeline(
        name="mnist-lightning",
        description="Download MNIST, train the PyTorch example CNN with Lightning on a GPU "
        "node, watch it live in TensorBoard, and chart every scalar when it ends.",
    )
    def mnist_pipeline(
        # run parameters: generated by python scripts/generate.py, do not edit
        mirror: str = "https://ossci-datasets.s3.amazonaws.com/mnist/,http://yann.lecun.com/exdb/mnist/",
        expected_md5: dict = {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        epochs: int = 14,
        batch_size: int = 64,
        learning_rate: float = 1.0,
        gamma: float = 0.7,
        optimizer: str = "adadelta",
        lr_schedule: str = "step",
        seed: int = 1,
        validation: str = "test-set",
        augmentation: str = "none",
        gpus: str = "1",
        precision: str = "32-true",
        torch_compile: str = "off",
        channels_last: str = "off",
        gradient_clip_val: str = "off",
        checkpoint_interval_minutes: float = 10.0,
        tensorboard_logs_root: str = "s3://mlpipeline/private/{namespace}/tensorboard",
        s3_endpoint: str = "auto",
        s3_credentials_secret: str = "mlpipeline-minio-artifact",
        live_update_seconds: int = 10,
        kubeflow_base_url: str = "/",
        node_selector: dict = {},
        tolerations: list = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ],
        # end of run parameters
    ) -> Outputs:
        """Downloads MNIST, trains the CNN with Lightning and reports its TensorBoard scalars.

        Args:
            mirror: Base URLs holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
                t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, comma-separated, tried in
                order (http://, https:// or file:///path/). Default: torchvision's public mirrors;
                point it at an internal mirror on air-gapped clusters.
            expected_md5: MD5 of each uncompressed file, by file name. Default (and for `{}`): the
                published MNIST checksums; change it only to train on another MNIST-format data set.
            epochs: Passes over the training set (classic recipe: 14).
            batch_size: Training batch size of each process, i.e. per GPU (classic: 64); with
                several GPUs or nodes, each step trains on batch_size x processes images. The
                learning rate is used as given: scale it with the global batch if the recipe needs
                it.
            learning_rate: Adadelta's learning rate (classic: 1.0), or the peak of the one-cycle
                schedule.
            gamma: StepLR's learning-rate decay per epoch, in (0, 1] (classic: 0.7); unused by
                one-cycle.
            optimizer: adadelta (classic), sgd (Nesterov momentum 0.9, weight decay 5e-4) or adamw
                (weight decay 1e-4, the fast preset's).
            lr_schedule: step (StepLR each epoch, classic) or onecycle (OneCycleLR each step).
            seed: Seed of the initial weights, the validation split, dropout and shuffling.
            validation: What the validation pass after every epoch runs on: test-set (as the
                upstream example; training uses every training image, and the last validation pass
                is the test pass) or a number of training images to hold out instead, e.g. 5000.
            augmentation: none (classic) or shift:N, each training image moved by a random offset of
                up to N pixels (1 to 4) in each direction, drawn on the device.
            gpus: GPUs requested for training (the nvidia.com/gpu limit), a whole number from 0 (CPU
                nodes) to 16; several train with Lightning's DDP, one process per GPU. Without a
                visible GPU, training uses the CPU.
            precision: 32-true, bf16-mixed or 16-mixed (16-mixed needs a GPU).
            torch_compile: on or off: compile the network with torch.compile. It needs a C compiler,
                which the project's images leave out, so only --local runs take on.
            channels_last: on or off: keep convolutions in the NHWC memory layout.
            gradient_clip_val: off (classic) or the largest global L2 norm of each step's gradients,
                e.g. 1.0, to which Lightning's Trainer clips them (its gradient_clip_val).
            checkpoint_interval_minutes: Longest training time, in minutes, between checkpoints
                within an epoch (one is also written at every epoch end), kept beside the live logs;
                a retried or preempted training task resumes from the newest.
            tensorboard_logs_root: Where training streams TensorBoard logs and checkpoints, one
                folder per run: s3://bucket/prefix (default: KFP's object store), pvc://claim/path
                (compile with --logs-pvc; ReadWriteMany, or TensorBoard on the training node) or a
                directory. {namespace} becomes the run's namespace.
            s3_endpoint: S3 API of an s3:// root: auto (default: the object store KFP itself uses on
                the run's cluster, seaweedfs.kubeflow or, before KFP 2.15, minio-service.kubeflow)
                or http(s)://host[:port].
            s3_credentials_secret: Secret in the run's namespace with keys accesskey and secretkey
                for the S3 API (KFP's own, which Kubeflow creates in every profile namespace, by
                default).
            live_update_seconds: Longest delay, in seconds, before a logged point is readable where
                TensorBoard reads the logs (1 to 300): the event files are flushed and copied there
                twice as often.
            kubeflow_base_url: "/" for a TensorBoard link relative to the Kubeflow UI, or the
                Kubeflow URL (e.g. https://kubeflow.example.com) for an absolute one.
            node_selector: Node labels the training pod must match, as a JSON object, e.g.
                {"cloud.google.com/gke-accelerator": "nvidia-l4"}. Empty: any GPU node.
            tolerations: Tolerations of the training pod, as a JSON list of Kubernetes Toleration
                objects. Default: tolerate the nvidia.com/gpu NoSchedule taint.
        """
        # Its arguments alone: locals() also holds the compile options that the body reads.
        parameters = {name: value for name, value in locals().items() if name in run_form}

        download = download_mnist(**arguments_for(download_mnist, parameters))
        kubernetes.set_timeout(download, DOWNLOAD_TIMEOUT_SECONDS)

        # The tasks' arguments besides the run parameters; each takes those it names.
        available = {
            **parameters,
            "dataset": download.outputs["dataset"],
            "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            "run_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            # With the data and the parameters, it keys the training task's state within the run.
            "task_name": dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
        }
        pod_fields = dict(pod.NAMESPACE_ENV)
        if nodes > 1:
            train = train_on_nodes(
                nodes=nodes,
                node_launcher=node_launcher,
                trainer_image=images.image_ref(images.TRAINER),
                logs_pvc=logs_pvc or "",
                timeout_seconds=training_timeout_seconds,
                **arguments_for(train_on_nodes, available),
            )
            # Never from the cache, as single-node training. The step only creates and follows
            # the TrainJob: no GPU, node selector or tolerations of its own (the TrainJob's
            # nodes get them), but the same access to the run's location as training.
            train_name, train_resources = f"Train on {nodes} nodes", ("500m", "1Gi", "4Gi")
            use_image(train, images.TRAINER)
            train_deadline = training_timeout_seconds + NODES_STEP_MARGIN_SECONDS
            # The nodes run as this step's account with its pull secrets, which the step reads
            # from its own pod (components/train_on_nodes/trainjob.py).
            pod_fields.update(
                POD_NAME="metadata.name", POD_SERVICE_ACCOUNT="spec.serviceAccountName"
            )
        else:
            train = train_mnist(**arguments_for(train_mnist, available))
            train_name, train_resources = "Train with Lightning", None
            set_training_pod(train, gpus, node_selector, tolerations)
            train_deadline = training_timeout_seconds
        kubernetes.set_timeout(train, train_deadline)
        # The run's location: the pod's namespace (and more, see above) as variables, and the
        # claim of a pvc:// logs root or the object store's keys.
        for name, path in pod_fields.items():
            kubernetes.use_field_path_as_env(train, name, path)
        if logs_pvc:
            kubernetes.mount_pvc(train, logs_pvc, pod.logs_mount_path(logs_pvc))
        else:
            # The secret exists in every Kubeflow profile namespace and in standalone KFP's.
            use_secret_as_env(train, s3_credentials_secret, S3_SECRET_KEYS)

        # Beside training, not after it: TensorBoard is up while the first epochs run.
        launcher = launch_tensorboard(**arguments_for(launch_tensorboard, available))
        kubernetes.use_field_path_as_env(launcher, "POD_NAMESPACE", "metadata.namespace")
        # The note's fallback manifest names the tools image, in the registry compiled for.
        launcher.set_env_variable(images.REGISTRY_ENV, images.registry())

        logs, evaluation = train.outputs["tensorboard_logs"], train.outputs["evaluation"]
        report = report_training(tensorboard_logs=logs, evaluation=evaluation)

        # Each task's name in the UI, whether a run may reuse its cached outputs, its CPU and
        # memory requests and memory limit (the training pod has its own), and its image,
        # resolved now, at compile time, so --image-registry retargets every task.
        for task, image, name, cached, resources in (
            (download, images.TRAINER, "Download MNIST", True, ("500m", "1Gi", "2Gi")),
            # A run is started in order to train (and to watch it): never answer from the cache.
            (train, None, train_name, False, train_resources),
            # A new run needs its own TensorBoard: never answer from the cache.
            (launcher, images.TOOLS, "Live TensorBoard", False, ("100m", "256Mi", "512Mi")),
            (report, images.TOOLS, "Report", True, ("250m", "512Mi", "1Gi")),
        ):
            task.set_display_name(name).set_caching_options(cached)
            if resources:
                cpu, memory, memory_limit = resources
                task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory_limit)
            if image:
                use_image(task, image)

        if retries:
            # Mirrors time out and GPU nodes get preempted; deterministic failures (bad input,
            # exit status 2) fail the same way again, quickly.
            # A flaky mirror recovers within minutes.
            set_retries(download, 3, 30, DOWNLOAD_TIMEOUT_SECONDS)
            # A lost or preempted GPU node; each attempt resumes a checkpoint.
            set_retries(train, 2, 60, train_deadline)

        # The report's page, and the rest from training under the same names.
        trained = {name: train.outputs[name] for name in Outputs._fields if name != "report"}
        return Outputs(report=report.outputs["report"], **trained)

    return mnist_pipeline


def __getattr__(name: str) -> Any:
    # `mnist_pipeline` is built when first used, not on import: the CLI derives its options
    # from the declarations, and `--local` or `--compile` build the pipeline they need. Built
    # once (KFP takes most of a second): later lookups find it among the module's globals.
    if name != "mnist_pipeline":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = build_pipeline()
    return globals()[name]
