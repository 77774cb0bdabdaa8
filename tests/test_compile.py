"""The compiled pipeline: parsed strictly into KFP's protos and checked task by task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb
from kfp.pipeline_spec import pipeline_spec_pb2

from kfp_lightning.components import images
from kfp_lightning.components.train_mnist.component import train_mnist
from kfp_lightning.components.train_mnist.config import TrainConfig, preset_values
from kfp_lightning.pipelines.cli import compile_pipeline

REPO = Path(__file__).resolve().parents[1]


def load(
    path: Path,
) -> tuple[pipeline_spec_pb2.PipelineSpec, dict[str, k8s_pb.KubernetesExecutorConfig]]:
    """Parses the YAML strictly: an unknown field anywhere is an error."""
    pipeline_doc, platform_doc = yaml.safe_load_all(path.read_text())
    spec = json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec())
    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    executors = platform.platforms["kubernetes"].deployment_spec.executors
    return spec, {
        name: json_format.ParseDict(
            json_format.MessageToDict(config), k8s_pb.KubernetesExecutorConfig()
        )
        for name, config in executors.items()
    }


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return load(compile_pipeline(tmp_path_factory.mktemp("yaml") / "pipeline.yaml"))


def _executor(spec: pipeline_spec_pb2.PipelineSpec, task: str) -> Struct:
    component = spec.root.dag.tasks[task].component_ref.name
    executor = spec.components[component].executor_label
    return spec.deployment_spec["executors"][executor]


def test_dag(compiled):
    spec, _ = compiled
    tasks = spec.root.dag.tasks
    assert set(tasks) == {"download-mnist", "train-mnist", "launch-tensorboard", "report-training"}
    assert list(tasks["download-mnist"].dependent_tasks) == []
    # TensorBoard starts beside training, depending on nothing.
    assert list(tasks["launch-tensorboard"].dependent_tasks) == []
    assert not tasks["launch-tensorboard"].inputs.artifacts
    assert list(tasks["train-mnist"].dependent_tasks) == ["download-mnist"]
    assert list(tasks["report-training"].dependent_tasks) == ["train-mnist"]
    dataset = tasks["train-mnist"].inputs.artifacts["dataset"].task_output_artifact
    assert (dataset.producer_task, dataset.output_artifact_key) == ("download-mnist", "dataset")
    logs = tasks["report-training"].inputs.artifacts["tensorboard_logs"].task_output_artifact
    assert (logs.producer_task, logs.output_artifact_key) == ("train-mnist", "tensorboard_logs")
    # The run id reaches training as KFP's placeholder, resolved per run by the backend.
    for task in ("train-mnist", "launch-tensorboard"):
        run_id = tasks[task].inputs.parameters["run_id"].runtime_value.constant
        assert run_id.string_value == "{{$.pipeline_job_uuid}}"
        for shared in ("tensorboard_logs_root", "s3_endpoint"):
            assert tasks[task].inputs.parameters[shared].component_input_parameter == shared


def test_gpu_request_follows_the_gpus_parameter(compiled):
    spec, _ = compiled
    resources = _executor(spec, "train-mnist")["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == (
        "{{$.inputs.parameters['pipelinechannel--gpus']}}"
    )
    # The task receives the run's gpus both as the placeholder's source and as its argument.
    parameters = spec.root.dag.tasks["train-mnist"].inputs.parameters
    assert parameters["pipelinechannel--gpus"].component_input_parameter == "gpus"
    assert parameters["gpus"].component_input_parameter == "gpus"
    assert spec.root.input_definitions.parameters["gpus"].default_value.number_value == 1


def test_images_and_no_install_at_start(compiled):
    spec, _ = compiled
    expected = {
        "download-mnist": images.image_ref(images.TRAINER),
        "train-mnist": images.image_ref(images.TRAINER),
        "launch-tensorboard": images.image_ref(images.TOOLS),
        "report-training": images.image_ref(images.TOOLS),
    }
    for task, image in expected.items():
        container = _executor(spec, task)["container"]
        assert container["image"] == image
        text = " ".join([*container["command"], *container["args"]])
        assert "pip install" not in text
        assert "-m pip" not in text
        assert "kfp.dsl.executor_main" in text


def test_every_parameter_is_documented(compiled):
    spec, _ = compiled
    for name, parameter in spec.root.input_definitions.parameters.items():
        assert len(parameter.description) > 20, name
    for component in spec.components.values():
        for name, parameter in component.input_definitions.parameters.items():
            assert parameter.description, name
        for name, artifact in component.input_definitions.artifacts.items():
            assert artifact.description, name


def test_defaults_are_never_falsy_for_the_kubeflow_ui(compiled):
    # The Kubeflow UI treats a "", 0 or false default as missing and refuses to start a run.
    spec, _ = compiled
    for name, parameter in spec.root.input_definitions.parameters.items():
        value = json_format.MessageToDict(parameter.default_value)
        assert value not in ("", 0, 0.0, False, None), name


def test_kubernetes_settings(compiled):
    _, executors = compiled
    train = executors["exec-train-mnist"]
    assert train.node_selector.node_selector_json.component_input_parameter == "node_selector"
    assert [t.toleration_json.component_input_parameter for t in train.tolerations] == [
        "tolerations"
    ]
    (secret,) = train.secret_as_env
    assert secret.secret_name_parameter.component_input_parameter == "s3_credentials_secret"
    assert secret.optional
    assert {(m.secret_key, m.env_var) for m in secret.key_to_env} == {
        ("accesskey", "AWS_ACCESS_KEY_ID"),
        ("secretkey", "AWS_SECRET_ACCESS_KEY"),
    }
    assert [(f.name, f.field_path) for f in train.field_path_as_env] == [
        ("POD_NAMESPACE", "metadata.namespace")
    ]
    assert train.active_deadline_seconds == 6 * 3600
    assert not train.pvc_mount
    launcher = executors["exec-launch-tensorboard"]
    assert [(f.name, f.field_path) for f in launcher.field_path_as_env] == [
        ("POD_NAMESPACE", "metadata.namespace")
    ]
    # The launcher only names the secret in the PodDefault; it never reads credentials.
    assert not launcher.secret_as_env


def test_caching_and_retries(compiled):
    spec, _ = compiled
    tasks = spec.root.dag.tasks
    assert tasks["download-mnist"].caching_options.enable_cache
    assert not tasks["train-mnist"].caching_options.enable_cache
    assert tasks["report-training"].caching_options.enable_cache
    assert not tasks["launch-tensorboard"].caching_options.enable_cache
    assert tasks["download-mnist"].retry_policy.max_retry_count == 3
    assert tasks["train-mnist"].retry_policy.max_retry_count == 2
    assert tasks["train-mnist"].retry_policy.backoff_duration.seconds == 60


def test_component_defaults_equal_the_training_config_defaults():
    # component.py repeats defaults as literals (its source ships as text): hold them equal.
    inputs = train_mnist.component_spec.inputs
    for name, value in TrainConfig().as_dict().items():
        if name in inputs:
            expected = ("on" if value else "off") if isinstance(value, bool) else value
            assert inputs[name].default == expected, name


def test_preset_logs_pvc_and_registry(tmp_path, monkeypatch):
    monkeypatch.setenv(images.REGISTRY_ENV, "registry.example.com:5000/ml")
    spec, executors = load(
        compile_pipeline(
            tmp_path / "fast.yaml",
            {
                name: preset_values("fast")[name]
                for name in ("epochs", "batch_size", "learning_rate", "optimizer", "lr_schedule")
            },
            logs_pvc="tb-logs",
            training_timeout_seconds=600,
        )
    )
    defaults = {
        name: json_format.MessageToDict(p.default_value)
        for name, p in spec.root.input_definitions.parameters.items()
    }
    assert defaults["epochs"] == 2
    assert defaults["lr_schedule"] == "onecycle"
    assert defaults["tensorboard_logs_root"] == "pvc://tb-logs/tensorboard"
    (mount,) = executors["exec-train-mnist"].pvc_mount
    assert mount.mount_path == "/mnt/pvc/tb-logs"
    assert mount.pvc_name_parameter.runtime_value.constant.string_value == "tb-logs"
    assert executors["exec-train-mnist"].active_deadline_seconds == 600
    for executor in spec.deployment_spec["executors"].values():
        assert executor["container"]["image"].startswith("registry.example.com:5000/ml/")
    (env,) = spec.deployment_spec["executors"]["exec-launch-tensorboard"]["container"]["env"]
    assert dict(env) == {"name": images.REGISTRY_ENV, "value": "registry.example.com:5000/ml"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "mnist.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def test_cli_compiles_to_the_default_path(tmp_path):
    process = run_cli("--compile", cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == str(tmp_path / "mnist_pipeline.yaml")
    load(tmp_path / "mnist_pipeline.yaml")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "error: invalid epochs=0: expected an integer >= 1"),
        (["--image-registry", "Bad Registry"], "error: invalid image_registry='Bad Registry'"),
        (["--logs-pvc", "Bad_Claim"], "error: invalid logs_pvc='Bad_Claim'"),
        (["--tensorboard-logs-root", "gs://bucket/x"], "error: invalid tensorboard_logs_root="),
    ],
)
def test_cli_rejects_bad_values_without_writing(tmp_path, args, message):
    process = run_cli("--compile", "--output", "p.yaml", *args, cwd=tmp_path)
    assert process.returncode == 2
    (line,) = process.stderr.strip().splitlines()
    assert line.startswith(message)
    assert list(tmp_path.iterdir()) == []
