"""KFP component: a live Kubeflow TensorBoard beside training (logic in `launcher.py`)."""

from kfp import dsl
from kfp.dsl import Artifact, Markdown, Output

from kfp_lightning.components import images
from kfp_lightning.components.common.logs_location import LiveLogsConfig
from kfp_lightning.components.common.run_form import with_run_parameters
from kfp_lightning.components.launch_tensorboard.launcher import LauncherConfig


@dsl.component(base_image=images.image_ref(images.TOOLS), install_kfp_package=False)
@with_run_parameters(LiveLogsConfig, LauncherConfig, exclude=["live_update_seconds"])
def launch_tensorboard(
    tensorboard: Output[Markdown],
    mlpipeline_ui_metadata: Output[Artifact],
    run_id: str,
    **parameters,
):
    """Starts a Kubeflow TensorBoard over the run's live logs and links it from the run page.

    Creates a Kubeflow Tensorboard in the run's namespace (a retry keeps it, or replaces one
    that differs), plus, for s3:// logs, a PodDefault giving its pod the object store's
    endpoint and credentials. Where the cluster cannot host one (no Tensorboard CRD, RBAC, no
    API), the task still succeeds and its note gives the kubectl commands for a port-forwarded
    TensorBoard instead. A pvc:// claim that only one node can mount at a time
    (ReadWriteOnce) gets no TensorBoard during training, which it could block; the note says
    what to do.

    Args:
        run_id: The pipeline run's id; names the Tensorboard and the run's logs folder.
        tensorboard: Output. Link to the live TensorBoard and how long until it is ready, or
            the kubectl commands to view the logs where none could be started.
        mlpipeline_ui_metadata: Output. "Start Tensorboard" on the run's page: a viewer over
            the run's logs in the project's tools image, given the object store's credentials
            or the claim mounted read-only.
    """
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.launch_tensorboard.launcher import launch_from_run_form

    run_or_exit(
        launch_from_run_form,
        tensorboard.path,
        mlpipeline_ui_metadata.path,
        run_id,
        parameters,
    )
