"""The Dataset artifact's on-disk format: what download_mnist writes and training reads.

One uncompressed `mnist.npz` (uint8 arrays `train_images`, `test_images` of N x 28 x 28 and
`train_labels`, `test_labels` of N) beside `metadata.json` (counts, checksums, sources), in a
directory that appears only once both are complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kfp_lightning.components.common.errors import invalid

DATA_FILE = "mnist.npz"
METADATA_FILE = "metadata.json"
FORMAT = "kfp-lightning/mnist-arrays-v2"


def load_dataset(dataset_dir: str | Path) -> dict[str, np.ndarray]:
    """Loads the arrays of a Dataset written by download_mnist.

    Args:
        dataset_dir: The Dataset artifact directory.

    Returns:
        `train_images`, `test_images` (uint8, N x 28 x 28) and `train_labels`, `test_labels`
        (uint8, N).
    """
    with np.load(_dataset_file(dataset_dir, DATA_FILE)) as arrays:
        return {name: arrays[name] for name in arrays.files}


def read_dataset_metadata(dataset_dir: str | Path) -> dict[str, Any]:
    """The metadata of a Dataset written by download_mnist: counts, checksums, sources.

    Raises:
        UserInputError: `dataset_dir` is not a Dataset written by download_mnist.
    """
    return json.loads(_dataset_file(dataset_dir, METADATA_FILE).read_text())


def _dataset_file(dataset_dir: str | Path, name: str) -> Path:
    """The file `name` of a Dataset directory; raises `UserInputError` when it is not there."""
    path = Path(dataset_dir) / name
    if not path.is_file():
        accepted = f"a directory written by download_mnist (no {name})"
        raise invalid("dataset", str(dataset_dir), accepted)
    return path
