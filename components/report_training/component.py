"""KFP component: the run's report, summary and metrics (logic in `report.py`)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Output

from kfp_lightning.components.common import images


@dsl.component(base_image=images.image_ref(images.TOOLS), install_kfp_package=False)
def report_training(
    tensorboard_logs: Input[Artifact],
    evaluation: Input[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    title: str = "MNIST training",
):
    """Writes the run's report for the run page: curves, headline numbers, mistakes.

    Args:
        tensorboard_logs: TensorBoard event files of a run.
        evaluation: The training step's evaluation (evaluation.json: confusion matrix, most
            confident mistakes, examples, headline numbers and parameters).
        title: Heading of the report.
        report: Output. Self-contained HTML page, shown inline by Kubeflow: headline numbers,
            parameters, interactive loss, accuracy and learning-rate charts, confusion matrix
            and the most confidently misclassified test images.
        summary: Output. Markdown: headline numbers, and each scalar's last, minimum and
            maximum value.
        metrics: Output. The last value of every scalar.
    """
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.report_training.report import write_training_report

    paths = (tensorboard_logs.path, evaluation.path, report.path, summary.path)
    for name, value in run_or_exit(write_training_report, *paths, title).items():
        metrics.log_metric(name, value)
