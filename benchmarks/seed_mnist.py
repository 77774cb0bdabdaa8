"""The baseline: PyTorch's MNIST example ported to Lightning the usual way, in one script.

    python benchmarks/seed_mnist.py --mirror file:///path/to/mirror/ --root DIR [--epochs 1]

torchvision's `MNIST` (downloaded into DIR/data from `--mirror`, as torchvision downloads it),
per-sample `ToTensor` + `Normalize`, default `DataLoader`s, the example's network, Adadelta and
StepLR, a validation pass on the test set after every epoch as the example does, and
`Trainer(max_epochs=...)` with its defaults: a progress bar, a checkpoint per epoch and a
`TensorBoardLogger` writing DIR/lightning_logs (which flushes its events every 120 s, or after
10 of them). It is what `benchmarks/whole_run.py` measures this project against.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from kfp_lightning.components.train_mnist.model import Net


class SeedModule(L.LightningModule):
    """The example's training and test steps, logged the way the Lightning docs show."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = F.nll_loss(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        out = self.net(x)
        self.log("val_loss", F.nll_loss(out, y), prog_bar=True)
        self.log("val_acc", (out.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adadelta(self.parameters(), lr=1.0)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.7)]


class TrainingClock(L.Callback):
    """Measures the training loop as the pipeline's `ThroughputMeter` does, for the benchmark.

    From each epoch's first training batch to its validation; printed at the end, so the
    benchmark can tell the seed's time outside the loop as it tells ours. It only reads a clock.
    """

    def __init__(self) -> None:
        self.seconds, self._start = 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._start is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.seconds += time.perf_counter() - self._start
            self._start = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", required=True, help="base URL of the *-ubyte.gz files")
    parser.add_argument("--root", required=True, type=Path, help="data and lightning_logs here")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    # torchvision downloads from its list of mirrors; point it at the one given. It checks
    # the MD5 of the .gz bytes, which a mirror that recompressed the files (as the offline one
    # does: identical content, other bytes) fails: check nothing instead.
    datasets.MNIST.mirrors = [args.mirror.rstrip("/") + "/"]
    datasets.MNIST.resources = [(name, None) for name, _ in datasets.MNIST.resources]
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )
    train = datasets.MNIST(args.root / "data", train=True, download=True, transform=transform)
    test = datasets.MNIST(args.root / "data", train=False, download=True, transform=transform)
    L.seed_everything(1, verbose=False)
    clock = TrainingClock()
    trainer = L.Trainer(max_epochs=args.epochs, default_root_dir=str(args.root), callbacks=[clock])
    trainer.fit(
        SeedModule(),
        DataLoader(train, batch_size=64, shuffle=True),
        DataLoader(test, batch_size=1000),
    )
    print(f"seed training seconds: {clock.seconds:.2f}", flush=True)


if __name__ == "__main__":
    main()
