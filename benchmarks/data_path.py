"""Benchmark: the device-resident data path against the naive per-sample loader, and Lightning
against a plain PyTorch loop, training the same network on the real MNIST.

    python benchmarks/data_path.py --mirror file:///path/to/mirror/ [--epochs 1 --batch-size 64]

Rows, each in a fresh process (so peak memory is its own) with the same epochs, batch size and
seed, run one after another in this invocation so the ratios compare like with like:
  naive   torchvision's MNIST dataset, per-sample ToTensor + Normalize, a default DataLoader,
          a LightningModule logging its loss to the progress bar every step, Lightning's
          default logger, checkpointing and progress bar: how the example is usually ported.
  device  this project's path: uint8 data moved to the device once, normalised there, shuffled
          with a per-epoch permutation on the device, under Lightning (what train_mnist runs).
  plain   the same device tensors and batches in a hand-written PyTorch loop, no Lightning.
Each row reports training samples/s (training batches only, device synchronised at the edges),
wall time per epoch (validation included), peak RSS, peak GPU memory, and test accuracy; then
the ratios device/naive and plain/device. Timings are not asserted anywhere: they are measured.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

ROWS = ("naive", "device", "plain")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peaks(device: Any) -> dict[str, float]:
    import torch

    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": gpu,
    }


def _accelerator(device: str) -> tuple[str, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ("gpu" if device == "cuda" else "cpu"), torch.device(device)


def run_naive(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from kfp_lightning.components.train_mnist.model import Net
    from kfp_lightning.components.train_mnist.progress import ThroughputMeter

    class UpstreamPort(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.nll_loss(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            out = self.net(x)
            self.log("val_loss", F.nll_loss(out, y), prog_bar=True)
            self.log("val_acc", (out.argmax(1) == y).float().mean(), prog_bar=True)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.Adadelta(self.parameters(), lr=args.learning_rate)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.7)]

    accelerator, device = _accelerator(args.device)
    L.seed_everything(args.seed, verbose=False)
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )
    train = datasets.MNIST(work / "torchvision", train=True, transform=transform)
    test = datasets.MNIST(work / "torchvision", train=False, transform=transform)
    meter = ThroughputMeter()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=accelerator,
        devices=1,
        default_root_dir=str(work / "lightning"),
        callbacks=[meter],
        num_sanity_val_steps=0,
    )
    module = UpstreamPort()
    start = time.perf_counter()
    trainer.fit(
        module,
        DataLoader(train, batch_size=args.batch_size, shuffle=True),
        DataLoader(test, batch_size=1000),
    )
    _sync(device)
    wall = time.perf_counter() - start
    accuracy = _accuracy(module.net.to(device), test_tensors(work, device))
    return {
        "samples_per_second": meter.samples_per_second,
        "seconds_per_epoch": wall / args.epochs,
        "test_accuracy": accuracy,
        **_peaks(device),
    }


def test_tensors(work: Path, device: Any) -> tuple[Any, Any]:
    import torch

    from kfp_lightning.components.common.dataset import load_dataset
    from kfp_lightning.components.train_mnist.data import normalise

    arrays = load_dataset(work / "dataset")
    images = torch.from_numpy(arrays["test_images"])
    labels = torch.from_numpy(arrays["test_labels"])
    return normalise(images).to(device), labels.long().to(device)


def _accuracy(net: Any, test: tuple[Any, Any]) -> float:
    import torch

    net.eval()
    with torch.inference_mode():
        correct = sum(
            (net(x).argmax(1) == y).sum().item()
            for x, y in zip(test[0].split(1000), test[1].split(1000), strict=True)
        )
    return correct / len(test[1])


def _config(args: argparse.Namespace) -> Any:
    from kfp_lightning.components.common.training import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        validation="test-set",
        gpus=0 if args.device == "cpu" else 1,
        precision=args.precision,
        torch_compile=args.torch_compile,
        channels_last=args.channels_last,
    )


def run_device(args: argparse.Namespace, work: Path) -> dict[str, Any]:

    from kfp_lightning.components.train_mnist.train import TrainingOutputs, run_training

    _, device = _accelerator(args.device)
    outputs = TrainingOutputs(work / "model", work / "logs")
    result = run_training(work / "dataset", outputs, _config(args))
    metrics = result.metrics
    return {
        "samples_per_second": metrics["train_samples_per_second"],
        "seconds_per_epoch": metrics["wall_seconds"] / args.epochs,
        "test_accuracy": metrics["test_accuracy"],
        **_peaks(device),
    }


def run_plain(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import lightning as L
    import torch
    import torch.nn.functional as F

    from kfp_lightning.components.train_mnist.data import MNISTDataModule
    from kfp_lightning.components.train_mnist.model import MNISTClassifier, build_optimizer

    config = _config(args)
    _, device = _accelerator(args.device)
    L.seed_everything(config.seed, verbose=False)
    data = MNISTDataModule(work / "dataset", config.batch_size, validation_size=0, seed=config.seed)
    data.setup("fit")  # no trainer: loads onto the CPU, then moved below
    data.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in data.splits.items()}
    module = MNISTClassifier(config).to(device)
    net = torch.compile(module) if config.torch_compile else module
    optim = build_optimizer(config, module.net.parameters(), lambda: 0)
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16-mixed"
    )
    epoch = [0]
    batches = data._batches("train", config.batch_size, shuffle=True)
    batches.epoch = lambda: epoch[0]
    samples, seconds = 0, 0.0
    start = time.perf_counter()
    for epoch[0] in range(config.epochs):
        module.train()
        _sync(device)
        t0 = time.perf_counter()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = F.nll_loss(net(x), y)
            loss.backward()
            optimizer.step()
            samples += y.shape[0]
        _sync(device)
        seconds += time.perf_counter() - t0
        scheduler.step()
        _accuracy(module, data.splits["test"])  # the per-epoch validation pass, as the others do
        module.train()
    wall = time.perf_counter() - start
    return {
        "samples_per_second": samples / seconds,
        "seconds_per_epoch": wall / config.epochs,
        "test_accuracy": _accuracy(module, data.splits["test"]),
        **_peaks(device),
    }


def prepare(mirror: str, work: Path, expected_md5: dict[str, str] | None = None) -> None:
    """The Dataset artifact (our path) and torchvision's raw layout (the naive path)."""
    from kfp_lightning.components.download_mnist.download import DownloadConfig, download_dataset

    download_dataset(work / "dataset", DownloadConfig(mirror, expected_md5))
    raw = work / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    base = urllib.parse.urlparse(mirror if mirror.endswith("/") else mirror + "/")
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        if base.scheme != "file":
            raise SystemExit(
                "error: invalid --mirror: expected a file:// mirror for this benchmark"
            )
        with gzip.open(Path(base.path) / f"{name}.gz") as src, (raw / name).open("wb") as dst:
            shutil.copyfileobj(src, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", required=True, help="file:// URL of an MNIST mirror")
    parser.add_argument(
        "--expected-md5",
        type=json.loads,
        default=None,
        help="MD5 of each uncompressed file as JSON (default: the published MNIST's)",
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", default="32-true", help="device and plain rows")
    parser.add_argument("--torch-compile", default="off", help="device and plain rows: on/off")
    parser.add_argument("--channels-last", default="off", help="device and plain rows: on/off")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of rows")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument("--row", choices=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    if args.row:  # child process: one row, JSON on the last line of stdout
        result = {"naive": run_naive, "device": run_device, "plain": run_plain}[args.row](
            args, args.work
        )
        print(json.dumps(result))
        return 0

    rows = [r for r in args.rows.split(",") if r]
    if not rows or set(rows) - set(ROWS):
        raise SystemExit(
            f"error: invalid --rows={args.rows!r}: expected a subset of {', '.join(ROWS)}"
        )
    # Every row gets the same settings.
    forwarded = [
        *("--mirror", args.mirror, "--epochs", str(args.epochs)),
        *("--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate)),
        *("--seed", str(args.seed), "--device", args.device, "--precision", args.precision),
        *("--torch-compile", args.torch_compile, "--channels-last", args.channels_last),
    ]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        prepare(args.mirror, work, args.expected_md5)
        for row in rows:
            process = subprocess.run(
                [sys.executable, __file__, *forwarded, "--row", row, "--work", str(work)],
                capture_output=True,
                text=True,
            )
            if process.returncode:
                sys.stderr.write(process.stderr[-4000:])
                raise SystemExit(f"error: row {row} failed (exit status {process.returncode})")
            results[row] = json.loads(process.stdout.strip().splitlines()[-1])
            shutil.rmtree(work / "logs", ignore_errors=True)
            shutil.rmtree(work / "model", ignore_errors=True)

    header = (
        f"{'row':8} {'samples/s':>10} {'s/epoch':>8} {'RSS MiB':>8} {'GPU MiB':>8} {'test acc':>9}"
    )
    print(
        f"epochs {args.epochs}, batch {args.batch_size}, seed {args.seed}, device {args.device}, "
        f"precision {args.precision}, compile {args.torch_compile}, "
        f"channels_last {args.channels_last}"
    )
    print(header)
    for row, r in results.items():
        print(
            f"{row:8} {r['samples_per_second']:10.0f} {r['seconds_per_epoch']:8.1f} "
            f"{r['peak_rss_mib']:8.0f} {r['peak_gpu_mib']:8.0f} {r['test_accuracy']:9.4f}"
        )
    ratios = {}
    if {"naive", "device"} <= set(results):
        ratios["device/naive throughput"] = (
            results["device"]["samples_per_second"] / results["naive"]["samples_per_second"]
        )
        ratios["device-naive accuracy (points)"] = 100 * (
            results["device"]["test_accuracy"] - results["naive"]["test_accuracy"]
        )
    if {"plain", "device"} <= set(results):
        ratios["device/plain throughput"] = (
            results["device"]["samples_per_second"] / results["plain"]["samples_per_second"]
        )
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    if args.output:
        args.output.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"output": str(args.output), "work": None},
                    "results": results,
                    "ratios": ratios,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
