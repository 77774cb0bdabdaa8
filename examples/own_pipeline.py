"""A pipeline of your own from this project's components: download MNIST, then train on it.

`python examples/own_pipeline.py` writes `own_pipeline.yaml`, to upload in the Kubeflow UI.
"""

from kfp import compiler, dsl

from kfp_lightning.components.common.images import TRAINER
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.train_mnist.component import train_mnist
from kfp_lightning.pipelines.mnist import (
    S3_SECRET_KEYS,
    set_training_pod,
    use_image,
    use_secret_as_env,
)


@dsl.pipeline(name="my-mnist", description="Download MNIST and train the CNN on it.")
def my_mnist(epochs: int = 2, gpus: str = "1"):
    """Downloads MNIST and trains the CNN on it.

    Args:
        epochs: Passes over the training set.
        gpus: GPUs for training, a whole number as a string ("0": a CPU node).
    """
    download = download_mnist()  # every run parameter at its default
    # The image in the registry compiled for (KFP_LIGHTNING_IMAGE_REGISTRY), pulled anew where
    # its tag may be pushed again.
    use_image(download, TRAINER)
    train = train_mnist(
        dataset=download.outputs["dataset"],
        # The run and the task key the live logs and checkpoints, which a retry resumes.
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
        epochs=epochs,
        gpus=gpus,
    )
    # The project's own training pod: its image, GPUs, CPU and memory, the toleration of the
    # taint GPU node pools commonly carry, and the /dev/shm NCCL needs for several GPUs.
    set_training_pod(train, gpus)
    # The live logs go to KFP's object store (tensorboard_logs_root's default), with the keys
    # of the secret Kubeflow keeps in every profile namespace (as the project's pipeline does:
    # in a form every KFP backend accepts).
    use_secret_as_env(train, "mlpipeline-minio-artifact", S3_SECRET_KEYS)


if __name__ == "__main__":
    compiler.Compiler().compile(my_mnist, "own_pipeline.yaml")
