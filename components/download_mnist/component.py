"""KFP component: download and verify MNIST into a Dataset artifact (logic in `download.py`)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from kfp_lightning.components import images


@dsl.component(base_image=images.image_ref(images.TRAINER), install_kfp_package=False)
def download_mnist(
    dataset: Output[Dataset],
    mirror: str = "https://ossci-datasets.s3.amazonaws.com/mnist/,http://yann.lecun.com/exdb/mnist/",
    expected_md5: dict = {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
):
    """Downloads MNIST, verifies every file and stores it as uint8 tensors with metadata.

    Args:
        mirror: Base URLs holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
            t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, comma-separated, tried in
            order (http://, https:// or file://). The default is torchvision's public mirrors;
            point it at an internal mirror on air-gapped clusters.
        expected_md5: MD5 of each uncompressed file, by file name. The default is the published
            MNIST checksums; change it only to train on another MNIST-format data set.
        dataset: Output. mnist.pt (train/test images as uint8 N x 28 x 28, labels as uint8)
            and metadata.json (counts, checksums, source URLs).
    """
    from kfp_lightning.components.common.errors import run_or_exit
    from kfp_lightning.components.download_mnist.download import download_mnist as download

    dataset.metadata.update(run_or_exit(download, dataset.path, mirror, expected_md5))
