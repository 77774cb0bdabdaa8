"""KFP component: chart every TensorBoard scalar of a run (logic in `report.py`)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Output

from kfp_lightning.components import images


@dsl.component(base_image=images.image_ref(images.TOOLS), install_kfp_package=False)
def report_training(
    tensorboard_logs: Input[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    title: str = "MNIST training",
):
    """Charts every scalar in the run's TensorBoard event files, for viewing in the run page.

    Args:
        tensorboard_logs: TensorBoard event files of a run.
        title: Heading of the report.
        report: Output. Self-contained HTML page, a chart per scalar (shown inline by Kubeflow).
        summary: Output. Markdown table of each scalar's last, minimum and maximum value.
        metrics: Output. The last value of every scalar.
    """
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.report_training.report import report_training as write_report

    last_values = run_or_exit(write_report, tensorboard_logs.path, report.path, summary.path, title)
    for name, value in last_values.items():
        metrics.log_metric(name, value)
