"""A user's own pipeline with two trainings in one run: each keeps its state apart.

The point of a component set is that users compose their own pipelines. Two `train_mnist`
tasks in one run, both given the run id as `pipelines/mnist.py` gives it, must neither resume
each other's checkpoints nor write each other's live logs: each task's state is keyed by the
task's name and its inputs (the data set's checksums, the parameters). Run with `kfp.local`
on two small MNIST-format sets, each result is checked against its own data.
"""

import json
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl, local

from kfp_lightning.components.common.training import TrainConfig, training_task_key
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.train_mnist.component import train_mnist
from tests.helpers import predict_in_fresh_process, scalars
from tests.synthetic_mnist import write_mirror

TRAINING = {"epochs": 1, "gpus": "0", "validation": "100", "live_update_seconds": 1}


@dsl.pipeline
def same_settings_on_two_data_sets(
    mirror_a: str, md5_a: dict, mirror_b: str, md5_b: dict, logs_root: str
) -> None:
    """Downloads two data sets and trains on each with the same settings."""
    for mirror, md5 in ((mirror_a, md5_a), (mirror_b, md5_b)):
        data = download_mnist(mirror=mirror, expected_md5=md5)
        train_mnist(
            dataset=data.outputs["dataset"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
            tensorboard_logs_root=logs_root,
            **TRAINING,
        )


@dsl.pipeline
def two_settings_on_one_data_set(mirror: str, md5: dict, logs_root: str) -> None:
    """Trains twice on one data set, with two learning rates."""
    data = download_mnist(mirror=mirror, expected_md5=md5)
    for learning_rate in (1.0, 0.5):
        train_mnist(
            dataset=data.outputs["dataset"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
            tensorboard_logs_root=logs_root,
            learning_rate=learning_rate,
            **TRAINING,
        )


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, dict[str, str]]]:
    """Two different small sets (other seeds and sizes: 300 and 200 test images)."""
    found = []
    for seed, test in ((0, 300), (7, 200)):
        directory = tmp_path_factory.mktemp(f"mirror-{seed}")
        found.append((directory, write_mirror(directory, train=1200, test=test, seed=seed)))
    return found


def run_locally(pipeline, root: Path, **arguments) -> list[Path]:
    """Runs `pipeline` with kfp.local; returns the directory of each training task's outputs."""
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root / "artifacts"),
        raise_on_error=True,
    )
    pipeline(logs_root=str(root / "tensorboard"), **arguments)
    return sorted(root.glob("artifacts/*/train-mnist*"))


def event_files(root: Path) -> list[Path]:
    return sorted(root.glob("tensorboard/**/*tfevents*"))


def test_same_settings_on_different_data_keep_apart(mirrors, tmp_path: Path) -> None:
    (dir_a, md5_a), (dir_b, md5_b) = mirrors
    tasks = run_locally(
        same_settings_on_two_data_sets,
        tmp_path,
        mirror_a=dir_a.as_uri() + "/",
        md5_a=md5_a,
        mirror_b=dir_b.as_uri() + "/",
        md5_b=md5_b,
    )

    assert [t.name for t in tasks] == ["train-mnist", "train-mnist-2"]
    test_images = []
    for task in tasks:
        metadata = json.loads((task / "model" / "metadata.json").read_text())
        # train-mnist trained on download-mnist's data set, train-mnist-2 on download-mnist-2's.
        download = task.name.replace("train-mnist", "download-mnist")
        dataset = next((tmp_path / "artifacts").glob(f"*/{download}/dataset"))
        own = predict_in_fresh_process(task / "model", dataset)
        evaluation = json.loads((task / "evaluation" / "evaluation.json").read_text())
        # The task's own confusion matrix counts its own test set, and its reported accuracy is
        # what its model scores on its own data: it trained, rather than resuming the other.
        counted = sum(map(sum, evaluation["confusion_matrix"]))
        test_images.append(counted)
        assert counted == sum(map(sum, own["confusion_matrix"]))
        assert metadata["test_accuracy"] == pytest.approx(own["accuracy"], abs=1e-6)
        assert own["accuracy"] > 0.5
    assert test_images == [300, 200]
    # Two task folders under the run, each with its own checkpoints and live logs.
    (run,) = (tmp_path / "tensorboard").iterdir()
    folders = sorted(p.name for p in run.iterdir())
    assert len(folders) == 2
    assert sorted(f.rsplit("-", 1)[0] for f in folders) == ["train-mnist", "train-mnist-2"]
    for folder in folders:
        assert list((run / folder / "checkpoints").iterdir())
        assert list((run / folder).rglob("*tfevents*"))


def test_different_settings_on_the_same_data_write_their_own_curves(
    mirrors, tmp_path: Path
) -> None:
    ((directory, md5), _) = mirrors
    run_locally(two_settings_on_one_data_set, tmp_path, mirror=directory.as_uri() + "/", md5=md5)

    (run,) = (tmp_path / "tensorboard").iterdir()
    folders = sorted(run.iterdir())
    assert sorted(f.name.rsplit("-", 1)[0] for f in folders) == ["train-mnist", "train-mnist-2"]
    rates = []
    for folder in folders:
        curves = scalars(folder)
        # Each folder holds one training's curve, every step once.
        steps = [step for step, _ in curves["loss/train"]]
        assert steps == sorted(set(steps))
        rates.append(curves["learning_rate"][0][1])
    assert sorted(rates) == [0.5, 1.0]


def test_the_compiled_pipeline_gives_each_training_task_its_own_location(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(two_settings_on_one_data_set, str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    tasks = {
        name: task
        for name, task in spec["root"]["dag"]["tasks"].items()
        if name.startswith("train-mnist")
    }
    assert sorted(tasks) == ["train-mnist", "train-mnist-2"]
    for task in tasks.values():
        value = task["inputs"]["parameters"]["task_name"]["runtimeValue"]["constant"]
        assert value == dsl.PIPELINE_TASK_NAME_PLACEHOLDER
    # The KFP driver resolves the placeholder to each task's own name (backend/src/v2/driver/
    # driver.go, `{{$.pipeline_task_name}}`): one data set, one configuration, two keys.
    sha = {"mnist.npz": "0" * 64}
    keys = {training_task_key(name, sha, TrainConfig(gpus=0)) for name in tasks}
    assert len(keys) == 2
    # And the same task on other data or settings has another key, too.
    assert (
        training_task_key("train-mnist", {"mnist.npz": "1" * 64}, TrainConfig(gpus=0)) not in keys
    )
    assert training_task_key("train-mnist", sha, TrainConfig(gpus=0, epochs=2)) not in keys
