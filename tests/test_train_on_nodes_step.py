"""The multi-node step's own logic, in this process: its settings, the files it shares with the
nodes, and the training progress it prints, on a directory location and real event files."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException
from torch.utils.tensorboard import SummaryWriter

from kfp_lightning.components.common import run_layout
from kfp_lightning.components.common.errors import RunError, UserInputError
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.storage import DirectoryStorage
from kfp_lightning.components.common.torchrun import Cancelled, sigterm_raises
from kfp_lightning.components.train_on_nodes.component import train_on_nodes
from kfp_lightning.components.train_on_nodes.nodes import (
    LOCAL,
    TRAINJOB,
    NodesSettings,
    ProgressReader,
    check_nodes,
    check_shared_location,
    upload_dataset,
)
from kfp_lightning.components.train_on_nodes.trainjob import explain_refusal
from tests.component_runner import run_component
from tests.fake_kubernetes import write_kubeconfig


@pytest.mark.parametrize("value", [2, "2", 2.0, " 3 ", 100])
def test_node_counts_accepted(value: object) -> None:
    assert check_nodes(value) == int(str(value).strip().split(".")[0])


@pytest.mark.parametrize("value", [0, -1, 101, 2.5, "two", True, None])
def test_node_counts_refused_in_one_line(value: object) -> None:
    with pytest.raises(UserInputError, match=r"^invalid nodes=.*: expected a whole number"):
        check_nodes(value)


def test_settings() -> None:
    # KFP hands constants of number inputs over as floats.
    assert NodesSettings(2.0, TRAINJOB, "img", "", 600.0).timeout_seconds == 600
    with pytest.raises(UserInputError, match="invalid node_launcher='ssh'"):
        NodesSettings(2, "ssh", "img")
    with pytest.raises(UserInputError, match="invalid trainer_image=''"):
        NodesSettings(2, TRAINJOB, "")
    assert NodesSettings(2, LOCAL, "").trainer_image == ""
    with pytest.raises(UserInputError, match="invalid timeout_seconds=0"):
        NodesSettings(2, TRAINJOB, "img", "", 0)
    with pytest.raises(UserInputError, match="invalid logs_pvc='Bad_Claim'"):
        NodesSettings(2, TRAINJOB, "img", "Bad_Claim")


def test_every_node_must_reach_the_location() -> None:
    s3 = parse_logs_root("s3://mlpipeline/tb").child("run")
    claim = parse_logs_root("pvc://tb-logs/tb").child("run")
    directory = parse_logs_root("/data/tb").child("run")
    check_shared_location(s3, None, TRAINJOB)
    check_shared_location(claim, "tb-logs", TRAINJOB)
    check_shared_location(directory, None, LOCAL)  # local nodes share this machine's disk
    with pytest.raises(UserInputError, match="expected s3://bucket/prefix or pvc://claim/path"):
        check_shared_location(directory, None, TRAINJOB)
    with pytest.raises(UserInputError, match="compile with --logs-pvc tb-logs"):
        check_shared_location(claim, None, TRAINJOB)


def make_outputs(root: Path) -> dict[str, Path]:
    dirs = {name: root / name for name in run_layout.OUTPUT_DIRS}
    (dirs["model"] / "sub").mkdir(parents=True)
    (dirs["model"] / "weights.pt").write_bytes(b"w" * 1000)
    (dirs["model"] / "sub" / "x.json").write_text("{}")
    (dirs["tensorboard_logs"] / "run").mkdir(parents=True)
    (dirs["tensorboard_logs"] / "run" / "events.out.tfevents.1").write_bytes(b"e" * 10)
    dirs["evaluation"].mkdir()
    (dirs["evaluation"] / "evaluation.json").write_text('{"a": 1}')
    return dirs


def collect_outputs(storage: DirectoryStorage, out: Path) -> run_layout.TrainResult:
    targets = {"model": "model", "tensorboard_logs": "logs", "evaluation": "evaluation"}
    return run_layout.collect_outputs(storage, {k: out / v for k, v in targets.items()})


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


RESULT = {
    "metrics": {"test_accuracy": 0.5, "nodes": 2, "processes": 4},
    "model_metadata": {"k": "v"},
    "labels": ["0", "1"],
    "confusion_matrix": [[1, 0], [0, 1]],
}


def test_published_outputs_are_collected_file_for_file(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path / "location")
    dirs = make_outputs(tmp_path / "rank0")
    files = run_layout.publish_outputs(storage, dirs, RESULT)
    assert run_layout.read_marker(storage) == files
    out = tmp_path / "out"

    result = collect_outputs(storage, out)

    assert result.metrics == {"test_accuracy": 0.5, "nodes": 2.0, "processes": 4.0}
    assert (result.labels, result.confusion_matrix) == (["0", "1"], [[1, 0], [0, 1]])
    targets = {"model": "model", "tensorboard_logs": "logs", "evaluation": "evaluation"}
    for name, target in targets.items():
        assert files_of(out / target) == files_of(dirs[name]), name


def test_nothing_is_collected_without_the_marker_or_from_a_torn_file(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path / "location")
    out = tmp_path / "out"
    with pytest.raises(RunError, match="rank 0 published no outputs"):
        collect_outputs(storage, out)
    assert not out.exists()

    run_layout.publish_outputs(storage, make_outputs(tmp_path / "rank0"), RESULT)
    # A file changed after the marker listed it (a node still writing): refused, nothing kept.
    (tmp_path / "location" / "outputs" / "model" / "weights.pt").write_bytes(b"w" * 10)
    with pytest.raises(RunError, match=r"outputs/model/weights.pt .* has 10 bytes, 1000 expected"):
        collect_outputs(storage, out)
    assert not out.exists() or not any(out.iterdir())


def test_the_dataset_is_uploaded_once(tmp_path: Path, dataset: Path) -> None:
    storage = DirectoryStorage(tmp_path / "location")
    upload_dataset(storage, dataset)
    uploaded = run_layout.files_under(storage, run_layout.DATASET)
    assert uploaded == {f"dataset/{p.name}": p.stat().st_size for p in dataset.iterdir()}
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "location" / "dataset").iterdir()}
    upload_dataset(storage, dataset)  # a retry: the same files are there already
    assert {p: p.stat().st_mtime_ns for p in first} == first
    with pytest.raises(UserInputError, match="invalid dataset="):
        upload_dataset(storage, tmp_path / "empty")


def test_progress_lines_follow_the_live_logs(tmp_path: Path) -> None:
    location = tmp_path / "location"
    storage = DirectoryStorage(location)
    reader = ProgressReader(storage, every_seconds=0)
    try:
        assert reader.poll() is None  # nothing logged yet
        writer = SummaryWriter(str(location / "my-run"))
        for step in range(1, 21):
            writer.add_scalar("loss/train", 1.0 / step, step)
            writer.add_scalar("epoch", step // 10, step)
        writer.add_scalar("accuracy/val", 0.875, 20)
        writer.flush()
        # Files of the dataset and outputs folders are not the live logs.
        (location / "outputs").mkdir()
        (location / "outputs" / "events.out.tfevents.9").write_bytes(b"not an event file")

        assert reader.poll() == "training: step 20, epoch 3, loss/train 0.0500, accuracy/val 0.8750"
        assert reader.poll() is None  # no new step
        writer.add_scalar("loss/train", 0.01, 30)
        writer.flush()
        assert reader.poll() == "training: step 30, epoch 3, loss/train 0.0100, accuracy/val 0.8750"
        writer.close()
    finally:
        reader.close()


def test_sigterm_becomes_cancelled_then_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_raises(), pytest.raises(Cancelled, match="SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


def refusal(status: int, message: str) -> ApiException:
    err = ApiException(status=status, reason="Forbidden" if status == 403 else "Not Found")
    err.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return err


def test_refusals_say_what_to_do() -> None:
    rbac = explain_refusal(
        refusal(403, 'trainjobs.trainer.kubeflow.org is forbidden: User "u" cannot create'),
        "team-a",
        "create",
    )
    assert "may not create trainjobs.trainer.kubeflow.org in namespace team-a" in str(rbac)
    assert "apply manifests/trainjob-rbac.yaml" in str(rbac)
    # What the apiserver makes of the Trainer webhook's denial (a 403 as well): not RBAC.
    webhook = explain_refusal(
        refusal(
            403,
            'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
            "spec.runtimeRef: Invalid value: ...: specified clusterTrainingRuntime must be "
            "created before the TrainJob is created",
        ),
        "team-a",
        "create",
    )
    assert str(webhook).startswith("Kubeflow Trainer refused the TrainJob in team-a (HTTP 403: ")
    assert "must be created before the TrainJob" in str(webhook)
    missing = explain_refusal(refusal(404, "the server could not find"), "team-a", "create")
    assert "install Kubeflow Trainer v2" in str(missing)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "error: invalid epochs=0: expected an integer from 1 to 2147483647"),
        ({"node_launcher": "ssh"}, "error: invalid node_launcher='ssh': expected one of"),
        ({"tolerations": [{"effect": "Sometimes"}]}, "error: invalid tolerations[0]."),
        (
            {"tensorboard_logs_root": "/data/logs"},
            "error: invalid tensorboard_logs_root='/data/logs': expected s3://bucket/prefix",
        ),
    ],
    ids=["epochs", "launcher", "tolerations", "directory-root"],
)
def test_the_component_refuses_bad_values_in_one_line(
    overrides: dict, message: str, dataset: Path, tmp_path: Path
) -> None:
    # The Kubeflow run form bypasses the CLI: the component checks every value itself, before
    # any TrainJob exists (here a kubeconfig with an unreachable server).
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:9")
    parameters = {"run_id": "run-1", "trainer_image": "img", **overrides}
    done, outputs = run_component(
        train_on_nodes,
        tmp_path / "step",
        parameters,
        {"dataset": dataset},
        {"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": "team-a"},
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert done.stderr.count("\n") == 1
    assert not any(path.exists() for path in outputs.values())


def test_the_logs_are_published_where_they_live_not_copied_below_outputs(tmp_path: Path) -> None:
    # The run's location is the live TensorBoard's logspath: a copy of the event files below
    # outputs/ would show every curve twice.
    location = tmp_path / "location"
    storage = DirectoryStorage(location)
    dirs = make_outputs(tmp_path / "rank0")
    # The live copy holds the run's event file already (training keeps it current), but not
    # hparams.yaml, as after a storage outage during the last copy.
    (location / "run").mkdir(parents=True)
    (location / "run" / "events.out.tfevents.1").write_bytes(b"e" * 10)
    (dirs["tensorboard_logs"] / "run" / "hparams.yaml").write_text("lr: 1\n")

    files = run_layout.publish_outputs(storage, dirs, RESULT)

    assert run_layout.live_log_files(files) == {
        "run/events.out.tfevents.1": 10,
        "run/hparams.yaml": 6,
    }
    assert not list((location / run_layout.OUTPUTS).rglob("*tfevents*"))
    assert [p.relative_to(location).as_posix() for p in location.rglob("*tfevents*")] == [
        "run/events.out.tfevents.1"
    ]
    out = tmp_path / "out"
    collect_outputs(storage, out)
    assert files_of(out / "logs") == files_of(dirs["tensorboard_logs"])

    # A live file that changed after the marker listed it is not trusted.
    (location / "run" / "events.out.tfevents.1").write_bytes(b"e" * 12)
    again = tmp_path / "again"
    with pytest.raises(RunError, match=r"run/events.out.tfevents.1 .* has 12 bytes, 10 expected"):
        collect_outputs(storage, again)
