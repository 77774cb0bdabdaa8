"""KFP component: download and verify MNIST into a Dataset artifact (logic in `download.py`)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from kfp_lightning.components import images
from kfp_lightning.components.common.run_form import with_run_parameters
from kfp_lightning.components.download_mnist.sources import DownloadConfig


@dsl.component(base_image=images.image_ref(images.TRAINER), install_kfp_package=False)
@with_run_parameters(DownloadConfig)
def download_mnist(dataset: Output[Dataset], **parameters):
    """Downloads MNIST, verifies every file and stores it as uint8 tensors with metadata.

    Args:
        dataset: Output. mnist.npz (numpy arrays: train/test images as uint8 N x 28 x 28,
            labels as uint8 N) and metadata.json (counts, checksums, source URLs).
    """
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.download_mnist.download import download_from_run_form

    dataset.metadata.update(run_or_exit(download_from_run_form, dataset.path, parameters))
