"""KFP component: a live Kubeflow TensorBoard beside training (logic in `launcher.py`)."""

from kfp import dsl
from kfp.dsl import Artifact, Markdown, Output

from kfp_lightning.components import images


@dsl.component(base_image=images.image_ref(images.TOOLS), install_kfp_package=False)
def launch_tensorboard(
    tensorboard: Output[Markdown],
    mlpipeline_ui_metadata: Output[Artifact],
    run_id: str,
    tensorboard_logs_root: str = "s3://mlpipeline/private/{namespace}/tensorboard",
    s3_endpoint: str = "http://minio-service.kubeflow:9000",
    s3_credentials_secret: str = "mlpipeline-minio-artifact",
    kubeflow_base_url: str = "/",
    wait_ready_seconds: int = 60,
):
    """Starts a Kubeflow TensorBoard over the run's live logs and links it from the run page.

    Creates (or updates, on retry) a Kubeflow Tensorboard in the run's namespace, plus, for
    s3:// logs, a PodDefault giving its pod the object store's endpoint and credentials. Where
    the cluster cannot host one (no Tensorboard CRD, RBAC, no API), the task still succeeds and
    its note gives the kubectl commands for a port-forwarded TensorBoard instead.

    Args:
        run_id: The pipeline run's id; names the Tensorboard and the run's logs folder.
        tensorboard_logs_root: Where training streams TensorBoard logs, one folder per run:
            s3://bucket/prefix (default: KFP's object store), pvc://claim/path (ReadWriteMany,
            or TensorBoard on the training node), or a local path. {namespace} becomes the
            run's namespace.
        s3_endpoint: The object store's S3 API, http(s)://host[:port] (MinIO or SeaweedFS in
            Kubeflow: http://minio-service.kubeflow:9000). Used for s3:// roots.
        s3_credentials_secret: Secret in the run's namespace with the keys accesskey and
            secretkey (Kubeflow creates mlpipeline-minio-artifact in every profile).
        kubeflow_base_url: "/" for a link relative to the Kubeflow UI, or the Kubeflow URL,
            e.g. https://kubeflow.example.com, for an absolute one.
        wait_ready_seconds: How long to wait for TensorBoard to be ready before finishing
            (0 to 3600); the note says whether it was.
        tensorboard: Output. Link to the live TensorBoard and how long until it is ready, or
            the kubectl commands to view the logs where none could be started.
        mlpipeline_ui_metadata: Output. Legacy TensorBoard viewer metadata ("Start Tensorboard"
            in older KFP UIs).
    """
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.launch_tensorboard.launcher import (
        launch_tensorboard as launch,
    )

    run_or_exit(
        launch,
        tensorboard.path,
        mlpipeline_ui_metadata.path,
        run_id,
        tensorboard_logs_root,
        s3_endpoint,
        s3_credentials_secret,
        kubeflow_base_url,
        wait_ready_seconds,
    )
