"""A device-resident MNIST data path: the whole uint8 set moves to the device once.

The per-sample path of the upstream example (PIL image -> ToTensor -> Normalize -> collate, in
Python, one image at a time) costs more than the network itself on a 2-core CPU and starves a
GPU. Here the dataset is normalised once on the training device; each epoch draws one seeded
permutation on the device, and a batch is a single `index_select`. Lightning's `Trainer` still
drives the loop: `DeviceBatches` is a plain iterable with a length, which Lightning accepts in
place of a `DataLoader`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch

from kfp_lightning.components.common.dataset import load_dataset
from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.training import check_batch_size

# Mean and standard deviation of the MNIST training pixels in [0, 1] (pytorch/examples).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28, scaled to [0, 1] then standardised."""
    return ((images.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translates each image by its own (rows, columns) offset, in one gather on the device.

    Pixels leaving one edge come back at the other; MNIST digits sit in the centre 20 x 20 of
    the 28 x 28 frame, so a shift of a few pixels only moves background around.

    Args:
        images: B x 1 x H x W.
        shifts: B x 2 integer offsets (down, right).

    Returns:
        The shifted images, B x 1 x H x W.
    """
    batch, _, height, width = images.shape
    device = images.device
    rows = (torch.arange(height, device=device)[None, :] - shifts[:, :1]) % height
    cols = (torch.arange(width, device=device)[None, :] - shifts[:, 1:]) % width
    index = torch.arange(batch, device=device)[:, None, None]
    return images[index, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


class DeviceBatches:
    """Batches drawn from tensors already on the training device.

    Shuffling uses a permutation seeded by (seed, epoch), so an epoch's order does not depend on
    what ran before it; a resumed run sees exactly the batches it would have seen. It is
    resumable mid-epoch: Lightning stores `state_dict()` in checkpoints and hands it back to
    `load_state_dict()` on restart, and the next iteration skips the batches already trained
    on. With several processes (`world_size` > 1) each rank takes an equal, disjoint share of
    every epoch.

    Args:
        images: Normalised images, N x 1 x 28 x 28, on the device.
        labels: Class indices (int64), N, on the same device.
        batch_size: Images per batch; the last batch may be smaller.
        shuffle: Draw a new order each epoch (training) or keep the stored order.
        seed: Base seed of the per-epoch permutations.
        epoch: Returns the current epoch when iteration starts (Lightning's counter).
        global_step: Returns the optimiser steps taken so far (Lightning's counter): one per
            training batch, so the batches trained in an epoch are counted exactly, whatever
            Lightning has fetched ahead.
        rank: This process's index among `world_size`.
        world_size: Number of processes sharing the data.
        max_shift: Translate each training image by a random offset of up to this many
            pixels in each direction (0: none); drawn per epoch from the same seed, so resumed
            epochs see the same images.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        global_step: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        max_shift: int = 0,
    ) -> None:
        self.images, self.labels, self.max_shift = images, labels, max_shift
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch, self.global_step = epoch, global_step
        self.rank, self.world_size = rank, world_size
        self.samples = images.shape[0] // world_size
        self._iterating_epoch, self._skipped, self._step_at_start = -1, 0, 0
        self._resume: dict[str, int] | None = None

    def __len__(self) -> int:
        return -(-self.samples // self.batch_size)

    def draw(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The indices this rank visits in `epoch` and, with `max_shift`, their offsets.

        Both are drawn on the data's device, so nothing drawn per epoch ever crosses PCIe; the
        offsets (samples x 2) come after the permutation, from the same generator.
        """
        n, device = self.images.shape[0], self.images.device
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            indices = torch.randperm(n, generator=generator, device=device)
        else:
            indices = torch.arange(n, device=device)
        shifts = None
        if self.max_shift:
            shifts = torch.randint(
                -self.max_shift, self.max_shift + 1, (n, 2), generator=generator, device=device
            )[: self.samples]
        return indices[self.rank : self.samples * self.world_size : self.world_size], shifts

    def state_dict(self) -> dict[str, int]:
        """Position in the current epoch: the epoch and the batches trained on so far."""
        trained = self._skipped + self.global_step() - self._step_at_start
        return {"epoch": self._iterating_epoch, "batches": trained}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Makes the next iteration of `state["epoch"]` skip its first `state["batches"]`."""
        self._resume = dict(state)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch()
        skip = self._resume["batches"] if self._resume and self._resume["epoch"] == epoch else 0
        self._resume = None
        self._iterating_epoch, self._skipped, self._step_at_start = epoch, skip, self.global_step()
        indices, shifts = self.draw(epoch)
        for start in range(skip * self.batch_size, self.samples, self.batch_size):
            batch = indices[start : start + self.batch_size]
            images = self.images.index_select(0, batch)
            if shifts is not None:
                images = shift_images(images, shifts[start : start + self.batch_size])
            yield images, self.labels.index_select(0, batch)


class MNISTDataModule(L.LightningDataModule):
    """Loads a Dataset artifact onto the training device and serves `DeviceBatches`.

    Args:
        dataset_dir: Directory written by `download_mnist`.
        batch_size: Training batch size.
        eval_batch_size: Validation and test batch size.
        validation_size: Training images held out for validation (a seeded random subset); 0
            validates on the test set.
        seed: Seed of the split and of the shuffling.
        max_shift: Random shift, in pixels, of training images (0: none).
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        batch_size: int,
        eval_batch_size: int = 128,
        validation_size: int = 0,
        seed: int = 1,
        max_shift: int = 0,
    ) -> None:
        super().__init__()
        self.dataset_dir, self.max_shift = Path(dataset_dir), max_shift
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.validation_size, self.seed = validation_size, seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def setup(self, stage: str) -> None:
        if self.splits:
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        tensors = {k: torch.from_numpy(v) for k, v in load_dataset(self.dataset_dir).items()}
        train_images, train_labels = tensors["train_images"], tensors["train_labels"].long()
        n = train_images.shape[0]
        if self.validation_size >= n:
            raise invalid(
                "validation", self.validation_size, f"an integer in [0, {n - 1}] for this dataset"
            )
        processes = self.trainer.world_size if self.trainer else 1
        check_batch_size(self.batch_size, n - self.validation_size, processes, self.validation_size)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = order[: self.validation_size], order[self.validation_size :]
        test = (tensors["test_images"], tensors["test_labels"].long())
        # As stored, uint8 N x 28 x 28 on the CPU: the pictures of the final evaluation.
        self.test_images = test[0]
        val = (train_images[val_idx], train_labels[val_idx]) if self.validation_size else test
        train = (train_images[train_idx], train_labels[train_idx])
        splits = {"train": train, "val": val, "test": test}
        # Normalise on the device: one transfer of uint8 data, then float work where it is cheap.
        self.splits = {
            name: (normalise(images.to(device)), labels.to(device))
            for name, (images, labels) in splits.items()
        }

    def _batches(self, split: str, batch_size: int, shuffle: bool) -> DeviceBatches:
        trainer = self.trainer
        return DeviceBatches(
            *self.splits[split],
            batch_size,
            shuffle=shuffle,
            seed=self.seed,
            epoch=(lambda: trainer.current_epoch) if trainer else (lambda: 0),
            global_step=(lambda: trainer.global_step) if trainer else (lambda: 0),
            # Training batches are shared out among processes; every process evaluates the
            # whole validation and test split (10k MNIST images take well under a second on a
            # GPU), so the final evaluation's details need no gathering across processes.
            rank=trainer.global_rank if trainer and shuffle else 0,
            world_size=trainer.world_size if trainer and shuffle else 1,
            max_shift=self.max_shift if shuffle else 0,
        )

    def train_dataloader(self) -> DeviceBatches:
        return self._batches("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DeviceBatches:
        return self._batches("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DeviceBatches:
        return self._batches("test", self.eval_batch_size, shuffle=False)
