"""KFP component: train on several nodes, as a Kubeflow Trainer TrainJob (logic in `nodes.py`)."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from kfp_lightning.components import images
from kfp_lightning.components.common.logs_location import LiveLogsConfig
from kfp_lightning.components.common.run_form import with_run_parameters
from kfp_lightning.components.train_mnist.config import TrainConfig
from kfp_lightning.pipelines.scheduling import SchedulingConfig


@dsl.component(base_image=images.image_ref(images.TRAINER), install_kfp_package=False)
@with_run_parameters(TrainConfig, LiveLogsConfig, SchedulingConfig)
def train_on_nodes(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    tensorboard_logs: Output[Artifact],
    evaluation: Output[Artifact],
    run_id: str,
    run_name: str = "",
    nodes: int = 2,
    node_launcher: str = "trainjob",
    trainer_image: str = "",
    logs_pvc: str = "",
    timeout_seconds: int = 21600,
    task_name: str = "",
    **parameters,
):
    """Trains the MNIST CNN on several nodes with Lightning DDP and gathers what rank 0 wrote.

    On a cluster the nodes are a Kubeflow Trainer TrainJob on the torch-distributed runtime,
    which this step creates, follows (its progress in this log) and deletes if the run is
    cancelled or the training timeout passes. Every node downloads the dataset from the run's
    location, and global rank 0 writes the model, metrics and logs there, which become this
    step's outputs: the same as single-node training's.

    Args:
        dataset: The Dataset written by download_mnist.
        run_id: The pipeline run's id; names the TrainJob, and the live logs go to
            <tensorboard_logs_root>/<run_id>.
        run_name: The pipeline run's display name; TensorBoard names the run after it.
        nodes: Nodes to train on (set when the pipeline is compiled, --nodes).
        node_launcher: trainjob (a Kubeflow Trainer TrainJob) or local (torchrun processes on
            this machine, for --local runs).
        trainer_image: The image every node runs (the trainer image the pipeline names).
        logs_pvc: The claim mounted for pvc:// logs roots (--logs-pvc), "" for none.
        timeout_seconds: Deadline of the training, in seconds from this step's start; the
            TrainJob is deleted when it passes.
        task_name: The task's name in the pipeline (pass dsl.PIPELINE_TASK_NAME_PLACEHOLDER),
            so that two training tasks of one run keep their state and TrainJobs apart.
        model: Output. model.pt2 (torch.export program taking N x 1 x 28 x 28 images, uint8
            pixels in [0, 255] or floats in [0, 1], normalising them itself), weights.pt
            (state_dict) and metadata.json (the input contract).
        metrics: Output. Test accuracy and loss, last validation values, epochs, steps,
            training samples seen and per second, training time, nodes and processes.
        classification_metrics: Output. The test set's confusion matrix, which Kubeflow shows
            natively.
        tensorboard_logs: Output. The run's TensorBoard event files, in a folder named after
            the run.
        evaluation: Output. evaluation.json: the test set's confusion matrix, the most
            confidently misclassified images, correct examples, and the run's headline facts.
    """
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.train_on_nodes.nodes import train_from_run_form

    result = run_or_exit(
        train_from_run_form,
        dataset.path,
        {
            "model": model.path,
            "tensorboard_logs": tensorboard_logs.path,
            "evaluation": evaluation.path,
        },
        run_id,
        run_name,
        {
            "nodes": nodes,
            "launcher": node_launcher,
            "trainer_image": trainer_image,
            "logs_pvc": logs_pvc,
            "timeout_seconds": timeout_seconds,
        },
        parameters,
        task_name,
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    model.metadata.update(result.model_metadata)
    classification_metrics.log_confusion_matrix(result.labels, result.confusion_matrix)
