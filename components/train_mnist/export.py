"""Write the trained network as a Model artifact that loads without this package.

The artifact holds a `torch.export` program (`model.pt2`) that takes raw pixels in [0, 1] and
applies the training normalisation itself, so a consumer cannot forget or repeat it; the plain
`state_dict` of `Net` (`weights.pt`, for fine-tuning, expects normalised input); and
`metadata.json` describing both. TorchScript is not used: it is deprecated in favour of
`torch.export`.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kfp_lightning.components.common.files import atomic_directory, write_json
from kfp_lightning.components.train_mnist.data import MNIST_MEAN, MNIST_STD
from kfp_lightning.components.train_mnist.model import Net

PROGRAM_FILE = "model.pt2"
WEIGHTS_FILE = "weights.pt"
METADATA_FILE = "metadata.json"
FORMAT = "kfp-lightning/mnist-model-v1"


class NormalisingNet(nn.Module):
    """`Net` behind the training normalisation: raw [0, 1] pixels in, log-probabilities out."""

    def __init__(self, net: Net) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps N x 1 x 28 x 28 float pixels in [0, 1] to N x 10 log-probabilities."""
        return self.net((images - MNIST_MEAN) / MNIST_STD)


def export_model(net: Net, model_dir: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Writes the Model artifact directory atomically.

    Args:
        net: The trained network (any device; it is copied to the CPU in eval mode).
        model_dir: Directory to create.
        metadata: Run facts to record (accuracy, configuration, dataset checksums...).

    Returns:
        The full metadata written to `metadata.json`.
    """
    cpu_net = Net()
    cpu_net.load_state_dict({k: v.detach().float().cpu() for k, v in net.state_dict().items()})
    program_module = NormalisingNet(cpu_net).eval()
    example = torch.rand(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(program_module, (example,), dynamic_shapes=({0: batch},))

    full = {
        "format": FORMAT,
        "program": PROGRAM_FILE,
        "weights": WEIGHTS_FILE,
        "load": f"torch.export.load('{PROGRAM_FILE}').module()",
        "input": {"dtype": "float32", "shape": ["batch", 1, 28, 28], "value_range": [0.0, 1.0]},
        "output": {
            "dtype": "float32",
            "shape": ["batch", 10],
            "meaning": "log-probabilities of digits 0-9",
        },
        "normalisation": {
            "mean": MNIST_MEAN,
            "std": MNIST_STD,
            "applied_by_program": True,
            "weights_expect_normalised_input": True,
        },
        "framework": {"torch": torch.__version__, "python": platform.python_version()},
        **metadata,
    }
    with atomic_directory(model_dir) as staging:
        torch.export.save(program, staging / PROGRAM_FILE)
        torch.save(cpu_net.state_dict(), staging / WEIGHTS_FILE)
        write_json(staging / METADATA_FILE, full)
    return full
