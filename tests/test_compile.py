"""The compiled pipeline: parsed strictly into KFP's protos and checked task by task."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format, struct_pb2
from google.protobuf.struct_pb2 import Struct
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb
from kfp.pipeline_spec import pipeline_spec_pb2

from kfp_lightning.components.common import images
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.download_mnist.download import DEFAULT_MIRRORS
from kfp_lightning.components.train_mnist.component import train_mnist
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


_CHANNEL = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")


def driver_string_value(value: struct_pb2.Value) -> str:
    """What the KFP driver reads from a resolved parameter for a pod-spec field.

    backend/src/v2/driver/resolve.go, `resolvePodSpecInputRuntimeParameter`, returns
    `val.GetStringValue()`: the string of a string value, and "" for any other kind.
    """
    return value.string_value if value.WhichOneof("kind") == "string_value" else ""


def test_gpu_limit_reaches_the_pod(compiled):
    """Walks the IR from the accelerator count to the run parameter, as the driver resolves it."""
    spec, _ = compiled
    resources = _executor(spec, "train-mnist")["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    (placeholder,) = _CHANNEL.fullmatch(resources["accelerator"]["resourceCount"]).groups()
    task_input = spec.root.dag.tasks["train-mnist"].inputs.parameters[placeholder]
    root_name = task_input.component_input_parameter
    assert root_name == "gpus"
    root = spec.root.input_definitions.parameters[root_name]
    # The run form and the API send a value of the declared type: it must be a string, or the
    # driver reads "" and drops the nvidia.com/gpu limit without a word.
    assert root.parameter_type == pipeline_spec_pb2.ParameterType.STRING
    count = driver_string_value(root.default_value)
    assert count == "1"  # what Kubernetes' ParseQuantity then reads as the limit
    # The component gets the same run parameter as its own argument.
    assert spec.root.dag.tasks["train-mnist"].inputs.parameters["gpus"].component_input_parameter
    # The old declaration (an integer parameter) is what this walk exists to catch.
    assert driver_string_value(struct_pb2.Value(number_value=1)) == ""


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


def test_the_run_form_holds_values_as_the_components_read_them(tmp_path):
    # "" or "false" as a default would be read as missing by the Kubeflow UI (see above).
    given = {"channels_last": "TRUE", "torch_compile": "false", "mirror": "", "seed": "7"}
    spec, _ = load(compile_pipeline(tmp_path / "p.yaml", {**given, "gradient_clip_val": " 1.0 "}))
    defaults = {
        name: json_format.MessageToDict(p.default_value)
        for name, p in spec.root.input_definitions.parameters.items()
    }
    assert (defaults["channels_last"], defaults["torch_compile"]) == ("on", "off")
    assert defaults["mirror"] == ",".join(DEFAULT_MIRRORS)
    assert (defaults["gradient_clip_val"], defaults["seed"]) == ("1.0", 7)


def test_kubernetes_settings(compiled):
    _, executors = compiled
    train = executors["exec-train-mnist"]
    assert train.node_selector.node_selector_json.component_input_parameter == "node_selector"
    assert [t.toleration_json.component_input_parameter for t in train.tolerations] == [
        "tolerations"
    ]
    (secret,) = train.secret_as_env
    assert secret.secret_name_parameter.component_input_parameter == "s3_credentials_secret"
    # `optional` exists only from backend 2.15; 2.14 rejects a run that sets it.
    assert not secret.HasField("optional")
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
    spec, executors = compiled
    tasks = spec.root.dag.tasks
    assert tasks["download-mnist"].caching_options.enable_cache
    assert not tasks["train-mnist"].caching_options.enable_cache
    assert tasks["report-training"].caching_options.enable_cache
    assert not tasks["launch-tensorboard"].caching_options.enable_cache
    assert tasks["download-mnist"].retry_policy.max_retry_count == 3
    assert tasks["train-mnist"].retry_policy.max_retry_count == 2
    assert tasks["train-mnist"].retry_policy.backoff_duration.seconds == 60
    for task in ("download-mnist", "train-mnist"):
        policy = tasks[task].retry_policy
        deadline = executors[f"exec-{task}"].active_deadline_seconds
        # Backend 2.5.0 truncates the factor to an integer (argocompiler/container.go).
        assert policy.backoff_factor == int(policy.backoff_factor) >= 1
        pauses = sum(
            policy.backoff_duration.seconds * policy.backoff_factor**i
            for i in range(policy.max_retry_count)
        )
        # Argo counts maxDuration from the first attempt's start and makes it every later
        # attempt's deadline: each attempt must be able to run to its own deadline.
        assert deadline > 0
        assert policy.backoff_max_duration.seconds >= (
            (policy.max_retry_count + 1) * deadline + pauses
        ), task


def test_component_defaults_equal_the_training_config_defaults():
    # component.py repeats defaults as literals (its source ships as text): hold them equal.
    inputs = train_mnist.component_spec.inputs
    fields = TrainConfig().as_dict()
    from_component = TrainConfig(**{n: inputs[n].default for n in fields if n in inputs})
    assert from_component.as_dict() == fields


def test_preset_logs_pvc_and_registry(tmp_path, monkeypatch):
    monkeypatch.setenv(images.REGISTRY_ENV, "registry.example.com:5000/ml")
    spec, executors = load(
        compile_pipeline(
            tmp_path / "fast.yaml",
            {
                name: TrainConfig.from_preset("fast").as_dict()[name]
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
    # pvc:// logs need no object-store credentials: no secret a namespace might lack.
    assert not executors["exec-train-mnist"].secret_as_env
    assert mount.pvc_name_parameter.runtime_value.constant.string_value == "tb-logs"
    assert executors["exec-train-mnist"].active_deadline_seconds == 600
    retry = spec.root.dag.tasks["train-mnist"].retry_policy
    assert retry.backoff_max_duration.seconds >= 3 * 600
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
    path, *notes = process.stdout.strip().splitlines()
    assert path == str(tmp_path / "mnist_pipeline.yaml")
    spec, _ = load(tmp_path / "mnist_pipeline.yaml")
    # The images the YAML names are listed, with how to make them pullable.
    named = {e["container"]["image"] for e in spec.deployment_spec["executors"].values()}
    assert {line.strip() for line in notes if ":" in line and " " not in line.strip()} == named
    assert "make images IMAGE_REGISTRY=REGISTRY PUSH=1" in notes[-1]


@pytest.mark.parametrize(
    ("registry", "typed"),
    [
        ("127.0.0.1:5000/ml", "127.0.0.1:5000/ml"),
        ("[::1]:5000/ml", "'[::1]:5000/ml'"),  # quoted: shells expand [...] as a pattern
    ],
)
def test_cli_names_the_registry_to_push_to(tmp_path, registry, typed):
    process = run_cli("--compile", "--image-registry", registry, cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert f"  {registry}/kfp-lightning-trainer:" in process.stdout
    assert f"make images IMAGE_REGISTRY={typed} PUSH=1" in process.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "error: invalid epochs=0: expected an integer from 1 to 2147483647"),
        (["--image-registry", "Bad Registry"], "error: invalid image_registry='Bad Registry'"),
        (["--logs-pvc", "Bad_Claim"], "error: invalid logs_pvc='Bad_Claim'"),
        (["--tensorboard-logs-root", "gs://bucket/x"], "error: invalid tensorboard_logs_root="),
        # The hold-out named as what leaves too few training images for a batch.
        (
            ["--validation", "59999"],
            "error: invalid batch_size=64: expected at most the 1 training image that "
            "validation=59999 leaves",
        ),
        # A run-form default the Kubeflow UI would take for missing.
        (
            ["--seed", "0"],
            "error: invalid seed=0: expected another default than 0 (the Kubeflow UI",
        ),
        # Quoted as typed, though the run form would read it as on.
        (["--torch-compile", "True"], "error: invalid torch_compile='True': expected off"),
    ],
)
def test_cli_rejects_bad_values_without_writing(tmp_path, args, message):
    process = run_cli("--compile", "--output", "p.yaml", *args, cwd=tmp_path)
    assert process.returncode == 2
    (line,) = process.stderr.strip().splitlines()
    assert line.startswith(message)
    assert list(tmp_path.iterdir()) == []


OLDEST_BACKEND = Path(sys.prefix) / "oldest-backend"  # made by `make setup`
# Parses each executor's Kubernetes config strictly against the platform proto of the oldest
# supported backend, loaded in a fresh interpreter: its messages have the same full names as
# the installed kfp-kubernetes's, and one process cannot hold both.
_PARSE_WITH_OLDEST = """
import importlib.util, json, sys
from google.protobuf import json_format
spec = importlib.util.spec_from_file_location("oldest_pb2", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
errors = {}
for name, config in json.load(sys.stdin).items():
    try:
        json_format.ParseDict(config, module.KubernetesExecutorConfig())
    except json_format.ParseError as err:
        errors[name] = str(err)
print(json.dumps(errors))
"""


def rejected_by_oldest_backend(executors: dict) -> dict[str, str]:
    """Executor name -> parse error, for every config the oldest backend's proto rejects."""
    pb2 = OLDEST_BACKEND / "kfp" / "kubernetes" / "kubernetes_executor_config_pb2.py"
    assert pb2.is_file(), f"{pb2} is missing: run `make setup`"
    process = subprocess.run(
        [sys.executable, "-c", _PARSE_WITH_OLDEST, str(pb2)],
        input=json.dumps(executors),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(process.stdout)


@pytest.mark.parametrize("logs_pvc", [None, "tb-logs"])
def test_oldest_supported_backend_accepts_every_kubernetes_config(tmp_path, logs_pvc):
    # Backend 2.14's API server parses these strictly (argocompiler/container.go,
    # protojson.Unmarshal) and refuses the run over one unknown field; the oldest backend's
    # proto is the narrowest, so a config it accepts is accepted by every newer one.
    path = compile_pipeline(tmp_path / "p.yaml", logs_pvc=logs_pvc)
    _, platform_doc = yaml.safe_load_all(path.read_text())
    executors = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) >= {"exec-train-mnist", "exec-launch-tensorboard"}
    assert rejected_by_oldest_backend(executors) == {}


def test_oldest_backend_check_rejects_a_newer_field():
    # The field a 2.14 API server refused: the check must see it.
    config = {
        "secretAsEnv": [
            {
                "secretNameParameter": {"componentInputParameter": "s3_credentials_secret"},
                "keyToEnv": [{"secretKey": "accesskey", "envVar": "AWS_ACCESS_KEY_ID"}],
                "optional": True,
            }
        ]
    }
    assert "optional" in rejected_by_oldest_backend({"exec-x": config})["exec-x"]


def test_an_output_under_a_file_names_the_file_in_the_way(tmp_path):
    from kfp_lightning.components.common.errors import UserInputError

    blocking = tmp_path / "afile"
    blocking.write_text("")
    with pytest.raises(UserInputError) as raised:
        compile_pipeline(blocking / "x.yaml")
    assert str(raised.value) == (
        f"invalid output='{blocking / 'x.yaml'}': expected a path whose folders are folders "
        f"({blocking} is a file)"
    )


def test_an_output_that_is_a_link_is_written_through(tmp_path):
    # As open() would: e.g. a GitOps checkout's pipeline.yaml linked to the compiled file.
    target = tmp_path / "deploy" / "pipeline.yaml"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "pipeline.yaml"
    link.symlink_to(target)

    assert compile_pipeline(link) == link

    assert link.is_symlink()
    assert link.resolve() == target
    assert yaml.safe_load_all(target.read_text())
    assert "pipelineInfo" in target.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["pipeline.yaml"]  # no temporary


def test_an_output_link_that_loops_is_refused_and_kept(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.symlink_to(second)
    second.symlink_to(first)
    from kfp_lightning.components.common.errors import UserInputError

    with pytest.raises(UserInputError) as raised:
        compile_pipeline(first)

    assert str(raised.value) == (
        f"invalid output='{first}': expected a path this user can write (Too many levels of "
        "symbolic links)"
    )
    assert first.is_symlink()
    assert second.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml"]


def test_an_output_replaced_keeps_its_mode(tmp_path):
    # As a file written in place would: a private file stays private.
    output = tmp_path / "pipeline.yaml"
    output.write_text("old")
    output.chmod(0o600)

    compile_pipeline(output)

    assert output.stat().st_mode & 0o777 == 0o600
    assert "pipelineInfo" in output.read_text()


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs util-linux's setpriv")
def test_a_read_only_output_is_refused_for_a_user_who_may_not_write_it():
    # Run as nobody (root may write any file), in a folder of theirs outside pytest's private
    # tmp_path, where the file is read-only.
    folder = Path(tempfile.mkdtemp(prefix="read-only-output-"))
    output = folder / "pipeline.yaml"
    output.write_text("old")
    output.chmod(0o444)
    for path in (folder, output):
        os.chown(path, 65534, 65534)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    script = str(REPO / "pipelines" / "mnist.py")
    try:
        done = subprocess.run(
            [*as_nobody, sys.executable, "-B", script, "--compile", "--output", str(output)],
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "HOME": str(folder)},
        )

        assert done.returncode == 2, done.stderr
        assert done.stderr == (
            f"error: invalid output='{output}': expected a path this user can write "
            "(permission denied)\n"
        )
        assert output.read_text() == "old"
        assert sorted(p.name for p in folder.iterdir()) == ["pipeline.yaml"]
    finally:
        shutil.rmtree(folder)
