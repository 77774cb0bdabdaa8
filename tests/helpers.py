"""Assertions shared by the pipeline tests: what every run's artifacts must satisfy."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

FOUR_SCALARS = {"train_loss", "val_loss", "val_accuracy", "learning_rate"}

# Loads the exported program where this package cannot be imported, and scores it on the
# test split of a Dataset artifact (raw pixels in [0, 1]: the program normalises itself).
_PREDICT = """
import json, sys
sys.modules["kfp_lightning"] = None
import torch
program = torch.export.load(sys.argv[1]).module()
data = torch.load(sys.argv[2], weights_only=True)
images = data["test_images"].float().div(255).unsqueeze(1)
log_probs = program(images)
accuracy = (log_probs.argmax(1) == data["test_labels"].long()).float().mean().item()
print(json.dumps({"shape": list(log_probs.shape), "accuracy": accuracy,
                  "sum_of_probs": log_probs.exp().sum(1).mean().item()}))
"""


def predict_in_fresh_process(model_dir: Path, dataset_dir: Path) -> dict:
    """Runs the exported model in a new interpreter that cannot import this package."""
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            _PREDICT,
            str(model_dir / "model.pt2"),
            str(dataset_dir / "mnist.pt"),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=model_dir,
    )
    return json.loads(process.stdout.strip().splitlines()[-1])


def scalars(logs_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files directly under `logs_dir`: tag -> [(step, value)]."""
    accumulator = EventAccumulator(str(logs_dir), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()[SCALARS]
    }


def assert_self_contained_html(html: str) -> None:
    """No script, and nothing fetched from anywhere: the KFP UI's sandbox allows neither."""
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"url\(|@import|<link|<iframe|<img", html, re.IGNORECASE)
    # The SVG namespace is an identifier, not a fetch; nothing else may mention a URL.
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}
