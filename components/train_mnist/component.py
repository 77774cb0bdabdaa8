"""KFP component: train the MNIST CNN with Lightning (logic in `train.py`)."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from kfp_lightning.components import images
from kfp_lightning.components.common.logs_location import LiveLogsConfig
from kfp_lightning.components.common.run_form import with_run_parameters
from kfp_lightning.components.train_mnist.config import TrainConfig


@dsl.component(base_image=images.image_ref(images.TRAINER), install_kfp_package=False)
@with_run_parameters(TrainConfig, LiveLogsConfig, exclude=["s3_credentials_secret"])
def train_mnist(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    tensorboard_logs: Output[Artifact],
    evaluation: Output[Artifact],
    run_id: str,
    run_name: str = "",
    task_name: str = "",
    **parameters,
):
    """Trains the pytorch/examples MNIST CNN with Lightning, tests it and exports it.

    Args:
        dataset: The Dataset written by download_mnist.
        run_id: The pipeline run's id; live logs go to <tensorboard_logs_root>/<run_id>/<task
            key>, the key made of task_name, the dataset's checksums and the parameters.
        run_name: The pipeline run's display name; TensorBoard names the run after it.
        task_name: The task's name in the pipeline (pass dsl.PIPELINE_TASK_NAME_PLACEHOLDER),
            so that two training tasks of one run keep their state apart.
        model: Output. model.pt2 (torch.export program taking N x 1 x 28 x 28 images, uint8
            pixels in [0, 255] or floats in [0, 1], normalising them itself), weights.pt
            (state_dict) and metadata.json (the input contract).
        metrics: Output. Test accuracy and loss (when validation is test-set, from the last
            validation pass, which ran on the test set: the same numbers), last validation
            values, epochs, steps, training samples seen and per second, training time.
        classification_metrics: Output. The test set's confusion matrix, which Kubeflow shows
            natively.
        tensorboard_logs: Output. The run's TensorBoard event files, in a folder named after
            the run.
        evaluation: Output. evaluation.json: the test set's confusion matrix, the most
            confidently misclassified images, correct examples, and the run's headline facts.
    """
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.train_mnist.train import TrainingOutputs, train_from_run_form

    outputs = TrainingOutputs(model.path, tensorboard_logs.path, evaluation.path)
    result = run_or_exit(
        train_from_run_form, dataset.path, outputs, run_id, run_name, parameters, task_name
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    model.metadata.update(result.model_metadata)
    classification_metrics.log_confusion_matrix(result.labels, result.confusion_matrix)
