"""What a correct MNIST download is: file names, published checksums, and their validation.

Kept apart from the downloader (and free of torch) so the pipeline CLI can check a run's
`expected_md5` before anything starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kfp_lightning.components.common.errors import invalid

# MD5 of the official, uncompressed IDX files, as published with the data set.
MNIST_MD5: Mapping[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_MD5 = re.compile(r"[0-9a-f]{32}")


def checksum_table(expected_md5: Mapping[str, str] | None) -> dict[str, str]:
    """Validates a table of expected MD5s (None or empty: the published ones).

    Args:
        expected_md5: File name -> MD5 of its uncompressed content.

    Returns:
        The table to verify downloads against, in the standard file order.
    """
    table = dict(expected_md5 or MNIST_MD5)
    if set(table) != set(MNIST_MD5) or not all(
        isinstance(v, str) and _MD5.fullmatch(v) for v in table.values()
    ):
        raise invalid(
            "expected_md5",
            table,
            "a 32-hex-digit MD5 for each of " + ", ".join(MNIST_MD5),
        )
    return {name: table[name] for name in MNIST_MD5}
