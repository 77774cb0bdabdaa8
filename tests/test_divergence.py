"""A diverged run stops at its first non-finite value, with one line, and no NaN is ever written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from kfp_lightning.components.common.files import write_json
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.live import CHECKPOINT_DIR
from kfp_lightning.components.train_mnist.progress import (
    DivergenceGuard,
    TrainingDivergedError,
)
from kfp_lightning.components.train_mnist.train import TrainingOutputs, run_training
from tests.helpers import scalars

REPO = Path(__file__).resolve().parents[1]
TINY = {"validation": "200", "gpus": "0", "log_every_n_steps": 1}


def test_diverged_local_run_fails_with_one_line(http_mirror, mnist_mirror, tmp_path):
    _, md5 = mnist_mirror
    out = tmp_path / "out"
    process = subprocess.run(
        [
            *(sys.executable, str(REPO / "pipelines" / "mnist.py"), "--local"),
            *("--output-dir", str(out), "--mirror", http_mirror, "--expected-md5", json.dumps(md5)),
            *("--gpus", "0", "--validation", "200", "--live-update-seconds", "1", "--epochs", "1"),
            *("--optimizer", "sgd", "--learning-rate", "1e6"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = process.stdout + process.stderr
    assert process.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    # The last line, on stderr, is the failed task's own error: where, what, and the
    # parameters most likely at fault; the line before it says which task and where its log is.
    *_, which, line = process.stderr.strip().splitlines()
    assert line.startswith("error: training diverged: loss/train=nan at step ")
    assert "learning_rate (now 1e+06 with optimizer=sgd" in line
    assert which == f"task train-mnist failed; its whole output: {out / 'local-run.log'}"
    assert line.removeprefix("error: ") in (out / "local-run.log").read_text()
    assert not (out / "summary.json").exists()
    assert not list(out.glob("artifacts/*/train-mnist/model"))
    # The curve up to the divergence stays readable in the live logs.
    (live,) = (out / "tensorboard").iterdir()
    assert scalars(live)["loss/train"]


class _ValidationOverflows(L.LightningModule):
    """A module whose training is fine but whose validation loss overflows to infinity."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("loss/val", torch.tensor(float("inf")))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_infinite_validation_loss_stops_training(tmp_path):
    ones = torch.utils.data.TensorDataset(torch.ones(8, 1))
    data = torch.utils.data.DataLoader(ones, batch_size=4)
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        callbacks=[DivergenceGuard("lower learning_rate", check_every_n_steps=2)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(TrainingDivergedError, match=r"loss/val=inf after epoch 1; lower"):
        trainer.fit(_ValidationOverflows(), data, data)
    assert trainer.current_epoch == 0  # stopped in the first epoch, not after all three


def test_checkpoint_with_nan_weights_is_not_resumed(dataset, tmp_path, capsys):
    config = TrainConfig(epochs=2, **TINY)
    live = parse_logs_root(str(tmp_path / "live")).child("run-1")
    run_training(dataset, TrainingOutputs(tmp_path / "model-1", tmp_path / "logs-1"), config, live)
    checkpoints = sorted((Path(live.path) / CHECKPOINT_DIR).glob("*.ckpt"))
    assert len(checkpoints) == 2
    # The newest one holds NaN weights, as a state saved after training diverged would.
    newest = torch.load(checkpoints[-1], weights_only=False)
    newest["state_dict"]["net.fc2.weight"][0, 0] = float("nan")
    torch.save(newest, checkpoints[-1])

    capsys.readouterr()
    outputs = TrainingOutputs(tmp_path / "model-2", tmp_path / "logs-2")
    result = run_training(dataset, outputs, config, live)
    captured = capsys.readouterr()
    assert f"skipping checkpoint {CHECKPOINT_DIR}/{checkpoints[-1].name}: non-finite" in (
        captured.err
    )
    assert f"resuming from {CHECKPOINT_DIR}/{checkpoints[0].name}" in captured.out
    # Epoch 2 was trained again, and its new checkpoint holds finite weights.
    weights = torch.load(checkpoints[-1], weights_only=False)["state_dict"]["net.fc2.weight"]
    assert bool(torch.isfinite(weights).all())
    assert all(math.isfinite(v) for v in result.metrics.values())


def test_json_never_holds_nan(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(tmp_path / "m.json", {"val_loss": float("inf")})
    assert not (tmp_path / "m.json").exists()
