"""A small, learnable MNIST-format data set for tests, written as a mirror of `*-ubyte.gz` files.

Each class is a bright 6x6 block at its own place on a 3x4 grid, jittered by up to two pixels and
drawn over noise, so the real network learns it within one short epoch while a bug that scrambles
images against labels leaves accuracy at chance (0.1).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def make_split(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        y = 2 + row * 8 + int(rng.integers(-2, 3))
        x = 2 + col * 6 + int(rng.integers(-1, 2))
        y, x = min(max(y, 0), 22), min(max(x, 0), 22)
        images[i, y : y + 6, x : x + 6] = 255
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    if array.ndim == 3:
        header = struct.pack(">IIII", 2051, *array.shape)
    else:
        header = struct.pack(">II", 2049, array.shape[0])
    return header + array.astype(np.uint8).tobytes()


def write_mirror(
    directory: Path, train: int = 1200, test: int = 300, seed: int = 0
) -> dict[str, str]:
    """Writes the four gzipped IDX files into `directory`.

    Returns:
        The MD5 of each uncompressed file, by name (the `expected_md5` to download them with).
    """
    rng = np.random.default_rng(seed)
    train_images, train_labels = make_split(train, rng)
    test_images, test_labels = make_split(test, rng)
    arrays = (train_images, train_labels, test_images, test_labels)
    contents = {name: idx_bytes(array) for name, array in zip(NAMES, arrays, strict=True)}
    directory.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for name, data in contents.items():
        (directory / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        md5[name] = hashlib.md5(data).hexdigest()
    return md5


def copy_mirror(
    source: Path,
    destination: Path,
    change: Callable[[str, bytes], bytes] = lambda name, data: data,
    compresslevel: int = 9,
) -> Path:
    """Writes a copy of the mirror at `source`, each uncompressed file passed through `change`.

    Returns:
        `destination`.
    """
    destination.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        data = change(name, gzip.decompress((source / f"{name}.gz").read_bytes()))
        (destination / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel, mtime=1))
    return destination
