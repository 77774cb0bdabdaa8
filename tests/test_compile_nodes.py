"""`--compile --nodes N`: the pipeline with a TrainJob step in place of the training task.

The same strict checks as tests/test_compile.py: the YAML parsed into KFP's protos with no
unknown field, every Kubernetes config parsed against the platform proto of the oldest
supported backend (2.5.0), and the DAG, images, settings and parameter documentation asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from kfp_lightning.components.common import images
from kfp_lightning.pipelines.cli import compile_pipeline
from kfp_lightning.pipelines.mnist import (
    DEFAULT_TRAINING_TIMEOUT_SECONDS,
    NODES_STEP_MARGIN_SECONDS,
)
from tests.test_compile import REPO, _executor, load, rejected_by_oldest_backend

TASK = "train-on-nodes"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return load(compile_pipeline(tmp_path_factory.mktemp("yaml") / "p.yaml", nodes=3))


def _constant(task, name: str):
    return json_format.MessageToDict(task.inputs.parameters[name].runtime_value.constant)


def test_dag_has_the_step_in_place_of_training(compiled):
    spec, _ = compiled
    tasks = spec.root.dag.tasks
    assert set(tasks) == {"download-mnist", TASK, "launch-tensorboard", "report-training"}
    assert list(tasks[TASK].dependent_tasks) == ["download-mnist"]
    assert list(tasks["report-training"].dependent_tasks) == [TASK]
    for name in ("tensorboard_logs", "evaluation"):
        source = tasks["report-training"].inputs.artifacts[name].task_output_artifact
        assert (source.producer_task, source.output_artifact_key) == (TASK, name)
    # The pipeline's outputs are the step's, as they were the training task's.
    outputs = spec.root.dag.outputs.artifacts
    for name in ("model", "metrics", "classification_metrics", "tensorboard_logs"):
        (selector,) = outputs[name].artifact_selectors
        assert (selector.producer_subtask, selector.output_artifact_key) == (TASK, name)
    step = tasks[TASK]
    assert tasks[TASK].component_ref.name in spec.components
    assert _constant(step, "nodes") == 3
    assert _constant(step, "node_launcher") == "trainjob"
    assert _constant(step, "trainer_image") == images.image_ref(images.TRAINER)
    assert _constant(step, "timeout_seconds") == DEFAULT_TRAINING_TIMEOUT_SECONDS
    assert _constant(step, "run_id") == "{{$.pipeline_job_uuid}}"
    # Every run parameter the nodes need reaches the step from the run form.
    for name in ("gpus", "node_selector", "tolerations", "s3_credentials_secret", "epochs"):
        assert step.inputs.parameters[name].component_input_parameter == name
    assert not step.caching_options.enable_cache


def test_the_step_runs_in_the_trainer_image_without_a_gpu(compiled):
    spec, executors = compiled
    container = _executor(spec, TASK)["container"]
    assert container["image"] == images.image_ref(images.TRAINER)
    assert "accelerator" not in container["resources"]
    assert "pip install" not in " ".join([*container["command"], *container["args"]])
    config = executors[f"exec-{TASK}"]
    # The nodes get the GPU, selector and tolerations through the TrainJob, not this pod.
    assert not config.node_selector.node_selector_json.component_input_parameter
    assert not config.tolerations
    (secret,) = config.secret_as_env
    assert secret.secret_name_parameter.component_input_parameter == "s3_credentials_secret"
    assert not secret.HasField("optional")
    # Its namespace, and the name and account the nodes' pods copy (trainjob.py).
    assert [(f.name, f.field_path) for f in config.field_path_as_env] == [
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
        ("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]
    # The step's own deadline (the training timeout) passes first; the pod's comes later.
    deadline = config.active_deadline_seconds
    assert deadline == DEFAULT_TRAINING_TIMEOUT_SECONDS + NODES_STEP_MARGIN_SECONDS
    policy = spec.root.dag.tasks[TASK].retry_policy
    pauses = sum(
        policy.backoff_duration.seconds * policy.backoff_factor**i
        for i in range(policy.max_retry_count)
    )
    assert policy.max_retry_count == 2
    assert policy.backoff_max_duration.seconds >= (policy.max_retry_count + 1) * deadline + pauses


def test_every_parameter_of_the_step_is_documented(compiled):
    spec, _ = compiled
    component = spec.components[spec.root.dag.tasks[TASK].component_ref.name]
    for name, parameter in component.input_definitions.parameters.items():
        assert parameter.description, name
    for name, artifact in component.input_definitions.artifacts.items():
        assert artifact.description, name


@pytest.mark.parametrize("logs_pvc", [None, "tb-logs"])
def test_oldest_supported_backend_accepts_the_steps_kubernetes_config(tmp_path, logs_pvc):
    path = compile_pipeline(tmp_path / "p.yaml", logs_pvc=logs_pvc, nodes=2)
    _, platform_doc = yaml.safe_load_all(path.read_text())
    executors = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert f"exec-{TASK}" in executors
    assert "exec-train-mnist" not in executors
    assert rejected_by_oldest_backend(executors) == {}
    if logs_pvc:
        _, configs = load(path)
        (mount,) = configs[f"exec-{TASK}"].pvc_mount
        assert mount.mount_path == f"/mnt/pvc/{logs_pvc}"
        assert not configs[f"exec-{TASK}"].secret_as_env
        spec, _ = load(path)
        assert _constant(spec.root.dag.tasks[TASK], "logs_pvc") == logs_pvc


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "mnist.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def test_cli_compiles_several_nodes_and_one_node_as_before(tmp_path):
    done = run_cli("--compile", "--nodes", "2", "--output", "two.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    spec, _ = load(tmp_path / "two.yaml")
    assert TASK in spec.root.dag.tasks

    one = run_cli("--compile", "--nodes", "1", "--output", "one.yaml", cwd=tmp_path)
    default = run_cli("--compile", "--output", "default.yaml", cwd=tmp_path)
    assert one.returncode == default.returncode == 0
    # The same documents (KFP's header comment lists dict defaults in no fixed order).
    documents = [
        list(yaml.safe_load_all((tmp_path / f).read_text())) for f in ("one.yaml", "default.yaml")
    ]
    assert documents[0] == documents[1]
    assert TASK not in (tmp_path / "one.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "error: invalid nodes=0: expected a whole number from 1 to 100"),
        (["--nodes", "two"], "error: invalid nodes='two': expected an integer"),
        (
            ["--nodes", "2", "--tensorboard-logs-root", "/data/logs"],
            "error: invalid tensorboard_logs_root='/data/logs': expected s3://bucket/prefix or "
            "pvc://claim/path with several nodes",
        ),
        (
            ["--nodes", "2", "--tensorboard-logs-root", "pvc://other/logs", "--logs-pvc", "tb"],
            "error: invalid tensorboard_logs_root='pvc://other/logs'",
        ),
    ],
    ids=["zero", "not-a-number", "directory", "unmounted-claim"],
)
def test_cli_rejects_what_several_nodes_cannot_use(tmp_path, args, message):
    done = run_cli("--compile", "--output", "p.yaml", *args, cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(message), line
    assert list(tmp_path.iterdir()) == []
