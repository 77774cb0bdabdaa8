"""Assertions shared by the pipeline tests: what every run's artifacts must satisfy."""

from __future__ import annotations

import ctypes
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2

FOUR_SCALARS = {"loss/train", "loss/val", "accuracy/val", "learning_rate"}

# Loads the exported program where this package cannot be imported, and scores it on the
# test split of a Dataset artifact (raw pixels in [0, 1]: the program normalises itself).
_PREDICT = """
import json, sys
sys.modules["kfp_lightning"] = None
import numpy, torch
program = torch.export.load(sys.argv[1]).module()
data = {k: torch.from_numpy(v) for k, v in numpy.load(sys.argv[2]).items()}
images = data["test_images"].float().div(255).unsqueeze(1)
log_probs = program(images)
labels, predicted = data["test_labels"].long(), log_probs.argmax(1)
accuracy = (predicted == labels).float().mean().item()
confusion = torch.bincount(labels * 10 + predicted, minlength=100).view(10, 10).tolist()
print(json.dumps({"shape": list(log_probs.shape), "accuracy": accuracy,
                  "sum_of_probs": log_probs.exp().sum(1).mean().item(),
                  "confusion_matrix": confusion}))
"""


def predict_in_fresh_process(model_dir: Path, dataset_dir: Path) -> dict:
    """Runs the exported model in a new interpreter that cannot import this package."""
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            _PREDICT,
            str(model_dir / "model.pt2"),
            str(dataset_dir / "mnist.npz"),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=model_dir,
    )
    return json.loads(process.stdout.strip().splitlines()[-1])


def run_folder(logs_dir: Path) -> Path:
    """The one folder below `logs_dir` (itself included) that holds event files: the run."""
    (folder,) = {p.parent for p in Path(logs_dir).rglob("*tfevents*")}
    return folder


def assert_only_logs(logs_dir: Path) -> None:
    """A `tensorboard_logs` artifact holds one run folder of event files and hparams.yaml."""
    files = [p for p in Path(logs_dir).rglob("*") if p.is_file()]
    assert {p.parent for p in files} == {run_folder(logs_dir)}, files
    assert all("tfevents" in p.name or p.name == "hparams.yaml" for p in files), files


def scalars(logs_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run logged under `logs_dir`: tag -> [(step, value)].

    As TensorBoard reads them: points a restarted writer purged are left out.
    """
    accumulator = EventAccumulator(str(run_folder(logs_dir)), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()[SCALARS]
    }


def scalar_events(logs_dir: Path) -> list[tuple[str, int]]:
    """(tag, step) of every scalar in the raw event files under `logs_dir`, in file order.

    Unlike `scalars`, nothing is purged: a step written twice shows twice.
    """
    events = []
    for path in sorted(logs_dir.rglob("*tfevents*")):
        for record in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(record)
            events.extend(
                (value.tag, event.step)
                for value in event.summary.value
                if value.HasField("simple_value")
            )
    return events


def assert_self_contained_html(html: str) -> None:
    """Nothing fetched from anywhere: the KFP UI's sandboxed iframe has no network.

    Scripts are allowed (the sandbox has `allow-scripts`), but only inline ones; images only
    as `data:` URIs. URLs inside an inline script are strings of its code (a library names
    sites it can fetch from on request), so the browser tests prove that none is fetched.
    """
    for tag in re.findall(r"<script\b[^>]*>", html, re.IGNORECASE):
        assert not re.search(r"\bsrc\s*=", tag, re.IGNORECASE), tag
    outside = re.sub(r"<script\b[^>]*>.*?</script>", "", html, flags=re.IGNORECASE | re.DOTALL)
    assert not re.search(r"<(link|iframe|object|embed|base)\b|@import", outside, re.IGNORECASE)
    for attribute in ("src", "href", "action", "poster", "srcset", "xlink:href"):
        for value in re.findall(rf"""\s{attribute}\s*=\s*["']?([^"'\s>]*)""", outside, re.I):
            assert value.startswith("data:"), f"{attribute}={value}"
    for value in re.findall(r"""url\(\s*["']?([^"')]*)""", outside, re.IGNORECASE):
        assert value.startswith("data:"), f"url({value})"
    # The SVG namespace is an identifier, not a fetch; nothing else may mention a URL.
    assert set(re.findall(r"https?://[^\s\"'<>]+", outside)) <= {"http://www.w3.org/2000/svg"}


class FileWrites:
    """Counts the writers that finished writing a file in a folder (Linux inotify).

    A file written once and closed gives one `IN_CLOSE_WRITE` event per writer that had it
    open for writing; replacing it by a rename gives `IN_MOVED_TO`. The folder must exist.

    Args:
        directory: Folder to watch.
        name: File name within it.
    """

    IN_CLOSE_WRITE, IN_MOVED_TO = 0x00000008, 0x00000080

    def __init__(self, directory: Path, name: str) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.name = name.encode()
        self._seen = 0
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = self.IN_CLOSE_WRITE | self.IN_MOVED_TO
        if self._libc.inotify_add_watch(self._fd, str(directory).encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")

    def count(self) -> int:
        """Writes of the file seen since the watch began (closes after writing, renames)."""
        data = b""
        while True:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            data += chunk
        offset = 0
        while offset < len(data):
            _, _, _, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
            self._seen += name == self.name
            offset += 16 + length
        return self._seen

    def close(self) -> None:
        """Stops watching."""
        os.close(self._fd)


# Runs a script in a new interpreter that imports torch and nothing of this package, as a
# consumer of the Model artifact would; the script's last stdout line is its JSON result.
_TORCH_ONLY_PRELUDE = """
import json, sys
import torch
assert "kfp_lightning" not in sys.modules and "lightning" not in sys.modules, sorted(sys.modules)
"""


def run_with_torch_only(script: str, *args: object, cwd: Path | None = None) -> dict:
    """Runs `script` (after importing torch alone) with `args` as sys.argv[1:]; its JSON result.

    The script may not import this package or Lightning: the prelude asserts neither is loaded,
    and the script should assert the same at its end.
    """
    process = subprocess.run(
        [sys.executable, "-c", _TORCH_ONLY_PRELUDE + script, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def task_dir(parameters: dict, dataset: Path, task_name: str = "") -> Path:
    """Where a train_mnist task with these run-form `parameters` keeps its live state:
    `<tensorboard_logs_root>/<run_id>/<task key>` (a local root)."""
    from kfp_lightning.components.common.dataset import read_dataset_metadata
    from kfp_lightning.components.common.run_form import from_run_form
    from kfp_lightning.components.common.training import TrainConfig, training_task_key

    config = from_run_form(TrainConfig, parameters)
    key = training_task_key(task_name, read_dataset_metadata(dataset)["sha256"], config)
    return Path(str(parameters["tensorboard_logs_root"])) / str(parameters["run_id"]) / key


def run_build_py(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `images/build.py ARGS`; once more after restarting the daemon if the daemon crashed.

    Debian's dockerd 20.10 can die mid-build reading BuildKit's cache records from a bolt value
    outside its transaction (moby/buildkit#2861, a race as the database grows): that says nothing
    about this project's images, so the build is retried once on a fresh daemon, which
    images/ensure-docker.sh starts, and the daemon's crash stays visible in the test's output.
    """
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "images" / "build.py"), *args]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    if result.returncode != 0 and "the Docker daemon does not answer" in result.stderr:
        print(f"the daemon crashed during the build; restarting it:\n{result.stderr[-2000:]}")
        subprocess.run(["bash", str(root / "images" / "ensure-docker.sh")], check=True)
        result = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    return result
