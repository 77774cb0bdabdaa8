"""Bad input: every rule a component enforces, enforced by the CLI first, from the same code.

Each run parameter is declared once (`mnist.RUN_PARAMETERS`), and each component validates its
inputs by building those declarations when it starts (the Kubeflow run form bypasses the CLI).
The table below has rejected values for every declared run parameter, and a test fails when a
parameter has none, so adding a parameter means adding its rule here. Each case is checked in
process against both sides: the component's declaration and the CLI's validation must raise
the same one-line message. A handful also run end to end, through the CLI and through a
component exactly as a pod runs it: exit status 2, one line, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kfp_lightning.components.common.errors import UserInputError
from kfp_lightning.components.common.run_form import PIPELINE, from_run_form, parameters_of
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.download_mnist.download import MNIST_MD5
from kfp_lightning.components.launch_tensorboard.component import launch_tensorboard
from kfp_lightning.components.train_mnist.component import train_mnist
from kfp_lightning.pipelines import cli, compare
from kfp_lightning.pipelines.mnist import RUN_PARAMETERS, mnist_pipeline
from kfp_lightning.pipelines.parameters import pipeline_defaults, validate_parameters
from tests.component_runner import run_component

REPO = Path(__file__).resolve().parents[1]
# The published checksums with one file name mistyped.
MISTYPED_MD5 = dict(MNIST_MD5)
MISTYPED_MD5["train-labels"] = MISTYPED_MD5.pop("train-labels-idx1-ubyte")

# (parameter, a value it rejects, the start of the message)
REJECTED = [
    ("mirror", "ftp://example.com/mnist/", "invalid mirror='ftp://example.com/mnist/'"),
    ("mirror", "https:///mnist/", "invalid mirror='https:///mnist/'"),
    ("mirror", "file://tmp/data/", "invalid mirror='file://tmp/data/': expected file:///tmp/data/"),
    ("expected_md5", {"a": "b"}, 'invalid expected_md5={"a": "b"}: expected a 32-hex-digit MD5'),
    (
        "expected_md5",
        MISTYPED_MD5,
        f"invalid expected_md5={json.dumps(MISTYPED_MD5)}: expected a 32-hex-digit MD5 for each "
        "of train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (missing train-labels-idx1-ubyte; unknown train-labels)",
    ),
    ("epochs", 0, "invalid epochs=0: expected an integer from 1 to 2147483647"),
    ("epochs", 10**20, "invalid epochs=100000000000000000000: expected an integer from 1 to"),
    ("epochs", 2.5, "invalid epochs=2.5"),
    ("batch_size", -8, "invalid batch_size=-8"),
    ("batch_size", 0, "invalid batch_size=0"),
    (
        "learning_rate",
        float("inf"),
        "invalid learning_rate=inf: expected a number from 1.2e-38 to 3.4e38",
    ),
    # Finite, but beyond float32, in which torch's optimizers apply it.
    (
        "learning_rate",
        1e39,
        "invalid learning_rate=1e+39: expected a number from 1.2e-38 to 3.4e38",
    ),
    ("learning_rate", 0.0, "invalid learning_rate=0"),
    # Positive, but zero in float32: no weight would ever change.
    ("learning_rate", 1e-320, "invalid learning_rate=1e-320: expected a number from 1.2e-38 to"),
    ("learning_rate", -0.1, "invalid learning_rate=-0.1"),
    ("gamma", 0.0, "invalid gamma=0"),
    ("gamma", 1.5, "invalid gamma=1.5: expected a number in (0, 1]"),
    ("optimizer", "adam", "invalid optimizer='adam': expected one of adadelta, sgd, adamw"),
    ("lr_schedule", "cosine", "invalid lr_schedule='cosine': expected one of step, onecycle"),
    ("seed", -1, "invalid seed=-1"),
    ("seed", 2**32, "invalid seed=4294967296: expected an integer in [0, 4294967295]"),
    ("validation", "half", "invalid validation='half'"),
    ("validation", "0", "invalid validation='0': expected test-set or a number of training"),
    ("validation", "60000", "invalid validation='60000': expected test-set or fewer than the"),
    ("augmentation", "shift:9", "invalid augmentation='shift:9': expected none or shift:N"),
    ("gpus", "-1", "invalid gpus='-1': expected a whole number from 0 to 16"),
    ("gpus", "0.5", "invalid gpus='0.5'"),
    ("gpus", "17", "invalid gpus='17': expected a whole number from 0 to 16"),
    ("gpus", " 2", "invalid gpus=' 2': expected a whole number from 0 to 16, digits only"),
    ("gpus", 1.5, "invalid gpus=1.5: expected a whole number from 0 to 16"),
    ("precision", "fp8", "invalid precision='fp8': expected one of 32-true, bf16-mixed, 16-mixed"),
    ("torch_compile", "maybe", "invalid torch_compile='maybe': expected one of on, off"),
    ("channels_last", "yes", "invalid channels_last='yes': expected one of on, off"),
    ("gradient_clip_val", "-1", "invalid gradient_clip_val='-1': expected off or a number from"),
    ("gradient_clip_val", "nan", "invalid gradient_clip_val='nan'"),
    ("gradient_clip_val", "none", "invalid gradient_clip_val='none'"),
    ("gradient_clip_val", "1e-50", "invalid gradient_clip_val='1e-50'"),
    ("gradient_clip_val", "1_0", "invalid gradient_clip_val='1_0'"),
    ("gradient_clip_val", "\u0663", "invalid gradient_clip_val='\u0663'"),
    (
        "gradient_clip_val",
        "1e39",
        "invalid gradient_clip_val='1e39': expected off or a number from 1.2e-38 to 3.4e38",
    ),
    ("checkpoint_interval_minutes", 0.0, "invalid checkpoint_interval_minutes=0"),
    ("tensorboard_logs_root", "gs://bucket/tb", "invalid tensorboard_logs_root='gs://bucket/tb'"),
    ("tensorboard_logs_root", "runs/tb", "invalid tensorboard_logs_root='runs/tb'"),
    ("tensorboard_logs_root", "file://tmp/tb", "invalid tensorboard_logs_root='file://tmp/tb'"),
    ("tensorboard_logs_root", "s3://Bad_Bucket/x", "invalid tensorboard_logs_root="),
    # A malformed name: which rule it breaks is said.
    (
        "tensorboard_logs_root",
        "s3://ab/x",
        "invalid tensorboard_logs_root='s3://ab/x': expected s3://bucket/prefix, pvc://claim/path, "
        "file:///absolute/path or /absolute/path (a bucket is 3 to 63 of a-z, 0-9, '.' and '-'",
    ),
    (
        "tensorboard_logs_root",
        "pvc://Claim/x",
        "invalid tensorboard_logs_root='pvc://Claim/x': expected s3://bucket/prefix, "
        "pvc://claim/path, file:///absolute/path or /absolute/path (a claim is a DNS-1123",
    ),
    ("s3_endpoint", "minio:9000", "invalid s3_endpoint='minio:9000': expected auto or an endpoint"),
    ("s3_credentials_secret", "Not A Name", "invalid s3_credentials_secret='Not A Name'"),
    ("live_update_seconds", 0, "invalid live_update_seconds=0: expected an integer from 1 to 300"),
    ("live_update_seconds", 301, "invalid live_update_seconds=301"),
    ("kubeflow_base_url", "kubeflow.example.com", "invalid kubeflow_base_url="),
    (
        "node_selector",
        {"bad key!": "x"},
        'invalid node_selector={"bad key!": "x"}: expected a JSON object of node labels',
    ),
    ("node_selector", [], "invalid node_selector=[]: expected a JSON object"),
    (
        "tolerations",
        [{"key": "gpu", "operator": "Sometimes"}],
        "invalid tolerations[0].operator='Sometimes': expected Exists or Equal",
    ),
    (
        "tolerations",
        [{"key": "gpu", "operator": "Exists", "value": "x"}],
        "invalid tolerations[0].value='x': expected none with operator Exists",
    ),
    (
        "tolerations",
        [{"key": "gpu", "colour": "x"}],
        "invalid tolerations[0].colour='x': expected only the fields effect, key",
    ),
    (
        "tolerations",
        [{"key": "Bad Key"}],
        "invalid tolerations[0].key='Bad Key': expected a label key",
    ),
    (
        "tolerations",
        [{"key": "gpu", "effect": "Never"}],
        "invalid tolerations[0].effect='Never': expected NoSchedule, PreferNoSchedule, NoExecute",
    ),
    (
        "tolerations",
        [{"key": "gpu", "tolerationSeconds": 60}],
        "invalid tolerations[0].tolerationSeconds=60: expected whole seconds, given only with effect NoExecute",
    ),
    (
        "tolerations",
        [{"key": "gpu"}, "gpu"],
        "invalid tolerations[1]='gpu': expected a Toleration object",
    ),
]
# Rules that relate two parameters: (values, the start of the message).
REJECTED_TOGETHER = [
    ({"gpus": "0", "precision": "16-mixed"}, "invalid precision='16-mixed': expected 32-true"),
]


def test_every_run_parameter_has_a_rejected_value():
    covered = {name for name, _, _ in REJECTED}
    declared = {p.name for p in parameters_of(RUN_PARAMETERS, scopes=[PIPELINE])}
    assert declared - covered == set(), "add the new parameter's rule to REJECTED"


def _error(call) -> str:
    with pytest.raises(UserInputError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("values", "message"),
    [({name: value}, message) for name, value, message in REJECTED] + REJECTED_TOGETHER,
    ids=[f"{n}={v!r}"[:60] for n, v, _ in REJECTED] + [str(v) for v, _ in REJECTED_TOGETHER],
)
def test_the_cli_enforces_what_the_component_enforces(values, message):
    defaults = {name: spec.default for name, spec in mnist_pipeline.component_spec.inputs.items()}
    form = {**defaults, **values}
    # Component side: the declarations the parameter's owner (and so its component) builds.
    owners = {p.owner for p in parameters_of(RUN_PARAMETERS) if p.name in values}
    component_messages = []
    for owner in owners:
        try:
            from_run_form(owner, form)
        except UserInputError as err:
            component_messages.append(str(err))
    # The validation hold-out against the dataset is checked when training reads the data;
    # the CLI knows MNIST's size in advance.
    if values.get("validation") != "60000":
        assert component_messages, f"no component rejects {values}"
        assert component_messages[0].startswith(message)
    # CLI side: the same message, before anything runs.
    assert _error(lambda: validate_parameters(values)).startswith(message)


# End to end through the CLI: (arguments, the start of the one line on stderr).
CLI_CASES = [
    (["--compile", "--epochs", "0"], "error: invalid epochs=0: expected an integer from 1 to 2147483647"),
    (["--compile", "--gpus", "0", "--precision", "16-mixed"], "error: invalid precision="),
    (["--local", "--mirror", "file://tmp/data/"], "error: invalid mirror='file://tmp/data/'"),
    (["--local", "--tensorboard-logs-root", "pvc://claim/x"], "error: invalid tensorboard_logs_root="),
    (["--compile", "--output", "."], "error: invalid output='.': expected a file path ending in"),
    (["--compile", "--output", "pipeline.txt"], "error: invalid output='pipeline.txt'"),
    (["--compile", "--torch-compile", "on"], "error: invalid torch_compile='on': expected off"),
    (["--compile", "--tensorboard-logs-root", "pvc://claim/x"], "error: invalid tensorboard_logs_root='pvc://claim/x': expected an s3:// root, or compile with --logs-pvc claim"),
    (["--compile", "--logs-pvc", "a", "--tensorboard-logs-root", "pvc://b/x"], "error: invalid tensorboard_logs_root='pvc://b/x': expected pvc://a/PATH"),
    (["--compile", "--node-selector", "[]"], "error: invalid node_selector='[]': expected a JSON object"),
    (["--compile", "--tolerations", '[{"key": "a",'], """error: invalid tolerations='[{"key": "a",': expected a JSON list (this is not JSON: Expecting property name enclosed in double quotes at character 14)"""),
    # Nested deeper than the JSON decoder recurses: refused like any other bad value.
    (["--compile", "--tolerations", "[" * 5000 + "]" * 5000], "error: invalid tolerations='[[[[["),
    (["--local", "--node-selector", "[" * 5000 + "]" * 5000], "error: invalid node_selector='[[[[["),
    (["--compile", "--s3-endpoint", "AUTO"], "error: invalid s3_endpoint='AUTO': expected auto or an endpoint of the form http(s)://host[:port]"),
    (["--compile", "--epoch", "3"], "error: unrecognized arguments: --epoch 3 (did you mean --epochs?)"),
    # argparse says first that no mode was given: the typo is still named.
    (["--compile", "--epochs", "2.5", "--outp", "x.yaml"], "error: invalid epochs='2.5': expected an integer (--outp: did you mean --output?)"),
    (["--compile", "--epoch=3"], "error: unrecognized arguments: --epoch=3 (did you mean --epochs?)"),
    (["--zzzz", "--compil"], "error: one of the arguments --compile --local --check-cluster --compare-runs is required (--compil: did you mean --compile?)"),
    (["--compil"], "error: one of the arguments --compile --local --check-cluster --compare-runs is required (--compil: did you mean --compile?)"),
    (["--compile", "--epochs", "2.5"], "error: invalid epochs='2.5': expected an integer"),
    # What int() and float() read besides plain digits: a typo is refused, not taken as 10 or 3.
    (["--compile", "--epochs", "1_0"], "error: invalid epochs='1_0': expected an integer"),
    (["--compile", "--epochs", "\u0663"], "error: invalid epochs='\u0663': expected an integer"),
    (["--compile", "--learning-rate", "1_0.5"], "error: invalid learning_rate='1_0.5': expected a number"),
    (["--check-cluster", "--image-registry", "r.example/ml"], "error: --image-registry applies to --check-cluster only with --nodes N > 1"),
    # A hold-out that leaves a process nothing to train on: no batch size would do.
    (["--compile", "--nodes", "2", "--validation", "59999", "--batch-size", "1"], "error: invalid validation='59999': expected at most 59998, which leaves a training batch of 1 for each of 2 processes"),
    (["--compile", "--nodes", "16", "--validation", "59990"], "error: invalid validation='59990': expected at most 58976, which leaves a training batch of 64 for each of 16 processes"),
    (["--compile", "--nodes", "100", "--validation", "59950", "--batch-size", "1000"], "error: invalid batch_size=1000: expected at most 600, each process's share of the 60000 training images with validation=test-set"),
    # Negative numbers that argparse alone would take for options, refused as values.
    (["--compile", "--learning-rate", "-1e-3"], "error: invalid learning_rate=-0.001: expected a number from 1.2e-38 to 3.4e38"),
    (["--local", "--gamma", "-inf"], "error: invalid gamma=-inf: expected a number in (0, 1]"),
    (["--compile", "--epochs", "-2e1"], "error: invalid epochs='-2e1': expected an integer"),
    (["--compile", "--preset", "turbo"], "error: invalid preset='turbo': expected one of classic, fast"),
    (["--compile", "--image-registry", "Bad Registry"], "error: invalid image_registry='Bad Registry'"),
    # What no image reference holds (distribution/reference's grammar): no pull could succeed.
    (["--compile", "--image-registry", "registry.example.com:99999/ml"], "error: invalid image_registry='registry.example.com:99999/ml': expected a registry prefix"),
    (["--compile", "--image-registry", "registry.example.com:0/ml"], "error: invalid image_registry="),
    (["--compile", "--image-registry", "registry..example.com/ml"], "error: invalid image_registry="),
    (["--compile", "--image-registry", "/"], "error: invalid image_registry='/': expected a registry prefix"),
    (["--compile", "--image-registry", "registry-.example.com/ml"], "error: invalid image_registry="),
    (["--compile", "--image-registry", "registry.example.com/ml._x"], "error: invalid image_registry="),
    (["--compile", "--logs-pvc", "Bad_Claim"], "error: invalid logs_pvc='Bad_Claim'"),
    (["--compile", "--training-timeout", "0"], "error: invalid training_timeout=0: expected an integer in [1, 2147482747] (seconds)"),
    # A pod's deadline is at most 2^31 - 1 s, the nodes step's 15 min more than training's.
    (["--compile", "--training-timeout", "2147482748"], "error: invalid training_timeout=2147482748: expected an integer in [1, 2147482747]"),
    # Every process of every node takes an equal share of the 60000 training images.
    (["--compile", "--nodes", "2", "--batch-size", "30001"], "error: invalid batch_size=30001: expected at most the 30000 training images of each of 2 processes"),
    (["--local", "--nodes", "3", "--gpus", "2", "--batch-size", "10001"], "error: invalid batch_size=10001: expected at most the 10000 training images of each of 6 processes"),
    # Local nodes share this machine's cores: not a hundred of them on a laptop.
    (["--local", "--nodes", "100"], "error: invalid nodes=100: expected at most "),
    (["--local", "--output-dir", ""], "error: invalid output_dir='': expected a folder path"),
    (["--compile", "--preset", ""], "error: invalid preset='': expected one of classic, fast"),
    (["--local", "--output-dir", "runs/{namespace}"], "error: invalid output_dir='runs/{namespace}': expected a folder path without {namespace}"),
    # `..` in the output folder is resolved, not passed on to the logs root under it.
    (["--local", "--output-dir", "a/../out", "--validation", "60000"], "error: invalid validation='60000': expected test-set or fewer"),
    # --check-cluster refuses what --compile would, before it asks any cluster.
    (["--check-cluster", "--nodes", "2", "--tensorboard-logs-root", "/tmp/x"], "error: invalid tensorboard_logs_root='/tmp/x': expected s3://bucket/prefix or pvc://claim/path with several nodes"),
    (["--check-cluster", "--torch-compile", "on"], "error: invalid torch_compile='on': expected off: the trainer image has no C compiler"),
    # A local run's tasks have no namespace to put there.
    (["--local", "--tensorboard-logs-root", "/tmp/{namespace}/tb"], "error: invalid tensorboard_logs_root='/tmp/{namespace}/tb': expected a root without {namespace} outside a Kubernetes pod"),
    # A logs root on this machine is made before anything runs, like the output folder.
    (["--local", "--tensorboard-logs-root", "/dev/null"], "error: invalid tensorboard_logs_root='/dev/null': expected a folder, not a file"),
    (["--local", "--tensorboard-logs-root", "/dev/null/tb"], "error: invalid tensorboard_logs_root='/dev/null/tb': expected a folder this user can write (Not a directory)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"), CLI_CASES, ids=[" ".join(a)[:60] for a, _ in CLI_CASES]
)
def test_cli_in_process(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    given = "--local" not in args or "--output-dir" in args
    with pytest.raises(SystemExit) as exited:
        cli.main(args if given else [*args, "--output-dir", "out"])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(message)
    assert list(tmp_path.iterdir()) == []


BAD_REGISTRY = (
    "error: invalid KFP_LIGHTNING_IMAGE_REGISTRY='bad reg': expected a registry prefix such as "
    "registry.example.com/ml"
)


BAD_ROOT = "error: invalid tensorboard_logs_root='s3://Bad_Bucket/x'"


# The CLI's two commands, and a pipeline of one's own.
PROGRAMS = {
    "script": [sys.executable, str(REPO / "pipelines" / "mnist.py")],
    "console script": [str(Path(sys.executable).with_name("kfp-lightning"))],
    "own pipeline": [sys.executable, str(REPO / "examples" / "own_pipeline.py")],
}


def run_with_bad_registry(
    command: str, args: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Runs a `PROGRAMS` command in a fresh process, KFP_LIGHTNING_IMAGE_REGISTRY set to no
    registry."""
    program = PROGRAMS[command]
    environment = {**os.environ, "KFP_LIGHTNING_IMAGE_REGISTRY": "bad reg"}
    return subprocess.run(
        [*program, *args], cwd=cwd, env=environment, capture_output=True, text=True
    )


# The components name their images when imported, from the environment's registry; the CLI
# judges it as --image-registry, where images are named (the YAML; --check-cluster's TrainJob,
# with --nodes), and leaves it alone elsewhere: a bad logs root after it shows which. In a fresh
# process, by the script and the console script alike.
@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (["--compile"], BAD_REGISTRY),
        (["--check-cluster", "--nodes", "2"], BAD_REGISTRY),
        (["--check-cluster"], BAD_ROOT),
        (["--local"], BAD_ROOT),
        (["--compare-runs"], BAD_ROOT),
    ],
)
@pytest.mark.parametrize("command", ["script", "console script"])
def test_a_registry_from_the_environment_counts_where_images_are_named(
    mode, message, command, tmp_path
):
    done = run_with_bad_registry(
        command, [*mode, "--tensorboard-logs-root", "s3://Bad_Bucket/x"], tmp_path
    )

    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(message)
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_image_registry_takes_the_place_of_a_bad_one_in_the_environment(tmp_path):
    output = tmp_path / "p.yaml"
    done = run_with_bad_registry(
        "script",
        ["--compile", "--output", str(output), "--image-registry", "registry.example.com/ml"],
        tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert "image: registry.example.com/ml/kfp-lightning-trainer:" in output.read_text()
    assert "bad reg" not in output.read_text()
    assert run_with_bad_registry("console script", ["--help"], tmp_path).returncode == 0
    # In --check-cluster's place too: the bad logs root is what it then refuses.
    args = ["--check-cluster", "--nodes", "2", "--image-registry", "registry.example.com/ml"]
    done = run_with_bad_registry(
        "script", [*args, "--tensorboard-logs-root", "s3://B_/x"], tmp_path
    )
    assert done.stderr.startswith("error: invalid tensorboard_logs_root='s3://B_/x'"), done.stderr


def test_a_pipeline_of_ones_own_refuses_a_bad_registry_on_import(tmp_path):
    # Rather than compile image references no node can pull.
    done = run_with_bad_registry("own pipeline", [], tmp_path)

    assert done.returncode == 1
    error = "kfp_lightning.components.common.errors.UserInputError: "
    assert done.stderr.splitlines()[-1] == error + BAD_REGISTRY.removeprefix("error: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--compile", "--output", "p.yaml", "--epochs", "0"],
        ["--local", "--output-dir", "out", "--gamma", "1.5"],
    ],
)
def test_cli_as_a_user_runs_it(args, tmp_path):
    process = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "mnist.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert process.returncode == 2
    (line,) = process.stderr.strip().splitlines()
    assert line.startswith("error: invalid ")
    assert list(tmp_path.iterdir()) == []


# A valid value for each mode option (none for a flag): the mode, not the value, is refused.
MODE_OPTION_VALUES = {
    "nodes": ["2"],
    "output": ["p.yaml"],
    "image_registry": ["registry.example.com/ml"],
    "logs_pvc": ["claim"],
    "training_timeout": ["60"],
    "output_dir": ["out"],
    "keep_tensorboard": [],
    "verbose": [],
    "namespace": ["team-a"],
    "service_account": ["pipeline-runner"],
    "kfp_namespace": ["kubeflow"],
}
MISPLACED_OPTIONS = [
    (mode, name)
    for name, (modes, _) in cli.MODE_OPTIONS.items()
    for mode in cli.MODES
    if mode not in modes
]


def test_help_lists_each_option_under_the_modes_it_applies_to():
    # Not --service-account under --compare-runs, which refuses it, nor --logs-pvc only under
    # --compile, when --check-cluster takes it too.
    sections = {}
    for block in cli.build_parser().format_help().split("\n\n"):
        title, _, body = block.partition(":\n")
        sections[title] = body
    assert "--service-account" in sections["--check-cluster options"]
    assert "--kfp-namespace" in sections["--check-cluster options"]
    assert "--namespace" in sections["--check-cluster and --compare-runs options"]
    assert "--service-account" not in sections["--check-cluster and --compare-runs options"]
    assert "--logs-pvc" in sections["--compile and --check-cluster options"]
    assert "--image-registry" in sections["--compile and --check-cluster options"]
    assert "--training-timeout" in sections["--compile options"]
    assert "--output-dir" in sections["--local options"]


def test_every_mode_option_has_a_value_to_try():
    assert set(MODE_OPTION_VALUES) == set(cli.MODE_OPTIONS)


@pytest.mark.parametrize(
    ("mode", "name"), MISPLACED_OPTIONS, ids=[f"{m}-{n}" for m, n in MISPLACED_OPTIONS]
)
def test_cli_refuses_an_option_its_mode_ignores(mode, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    option = f"--{name.replace('_', '-')}"
    with pytest.raises(SystemExit) as exited:
        cli.main([f"--{mode.replace('_', '-')}", option, *MODE_OPTION_VALUES[name]])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {option} applies only to --")
    assert line.endswith(f", not to --{mode.replace('_', '-')}")
    assert list(tmp_path.iterdir()) == []


def test_output_creates_missing_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--compile", "--output", "runs/new/dir/pipeline.yaml"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(tmp_path / "runs/new/dir/pipeline.yaml")
    assert (tmp_path / "runs/new/dir/pipeline.yaml").is_file()


# Through a component exactly as a pod runs it (the Kubeflow form bypasses the CLI).
COMPONENT_CASES = [
    (download_mnist, {"mirror": "file://tmp/data/"}, "invalid mirror='file://tmp/data/'"),
    (train_mnist, {"gpus": "0", "precision": "16-mixed"}, "invalid precision='16-mixed'"),
    (launch_tensorboard, {"s3_endpoint": "minio:9000"}, "invalid s3_endpoint='minio:9000'"),
]


@pytest.mark.parametrize(
    ("component", "parameters", "message"),
    COMPONENT_CASES,
    ids=[c.name for c, _, _ in COMPONENT_CASES],
)
def test_component_as_a_pod_runs_it(component, parameters, message, tmp_path):
    inputs = {}
    if component is train_mnist:
        # Never read: the parameters are checked before the dataset is opened.
        inputs = {"dataset": tmp_path / "no-dataset"}
    if component in (train_mnist, launch_tensorboard):
        parameters = {"run_id": "run-1", **parameters}
    process, outputs = run_component(component, tmp_path / "pod", parameters, inputs)
    assert process.returncode == 2, process.stderr[-2000:]
    (line,) = [x for x in process.stderr.strip().splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: {message}")
    assert "Traceback" not in process.stderr
    assert not (tmp_path / "pod" / "executor_output.json").exists()
    assert all(not path.exists() for path in outputs.values())
    json.dumps(parameters)  # what the pod received was plain JSON


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's sysfs at /sys")
def test_an_output_nobody_may_create_is_refused_like_a_bad_value(capsys):
    # sysfs lets no one, root included, create a file: the path chosen is at fault (exit 2),
    # where a full disk is the machine's (exit 1, tests/test_write_faults.py).
    with pytest.raises(SystemExit) as exited:
        cli.main(["--compile", "--output", "/sys/kfp-lightning.yaml"])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: invalid output='/sys/kfp-lightning.yaml': expected a path this user can write "
        "(permission denied)"
    )


IGNORED_BY_COMPARE = ["preset"] + [
    name for name in pipeline_defaults() if name not in compare.RUN_PARAMETERS
]


@pytest.mark.parametrize("name", IGNORED_BY_COMPARE)
def test_compare_runs_refuses_the_runs_own_parameters(name, capsys):
    # --compare-runs reads where the runs' logs are; any other run parameter would be dropped.
    default = "fast" if name == "preset" else pipeline_defaults()[name]
    text = json.dumps(default) if isinstance(default, dict | list) else str(default)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--compare-runs", f"--{name.replace('_', '-')}", text])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --{name.replace('_', '-')} does not apply to --compare-runs")


@pytest.mark.parametrize(
    "name", ["node_selector", "tolerations", "s3_credentials_secret", "kubeflow_base_url"]
)
def test_local_refuses_what_only_a_cluster_run_reads(name, tmp_path, monkeypatch, capsys):
    # Scheduling, a secret's name and the links: tasks that run in no pod would drop them.
    monkeypatch.chdir(tmp_path)
    default = pipeline_defaults()[name]
    text = json.dumps(default) if isinstance(default, dict | list) else str(default)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--local", f"--{name.replace('_', '-')}", text])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    option = f"--{name.replace('_', '-')}"
    assert line == f"error: {option} does not apply to --local (it is for cluster runs)"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def no_aws_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS keys anywhere boto3 looks: environment, files, instance metadata."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


S3_ROOT = ["--tensorboard-logs-root", "s3://bucket/x", "--s3-endpoint", "http://127.0.0.1:1"]


@pytest.mark.parametrize(
    ("environment", "why"),
    [
        ({}, ")"),
        ({"AWS_ACCESS_KEY_ID": "key"}, ": Partial credentials found in env, missing: "),
        ({"AWS_PROFILE": "nowhere"}, ": The config profile (nowhere) could not be found)"),
        ({"AWS_ACCESS_KEY_ID": " ", "AWS_SECRET_ACCESS_KEY": " "}, ")"),
        ({"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "  "}, ")"),
        (
            {"AWS_CONFIG_FILE": "[default]\ncredential_process = false\n"},
            ": Error when retrieving credentials from custom-process)",
        ),
        (
            {
                "AWS_CONFIG_FILE": "[default]\ncredential_process = sh -c 'echo a >&2; echo b >&2; exit 3'\n"
            },
            ": Error when retrieving credentials from custom-process: a b)",
        ),
        (
            {"AWS_CONFIG_FILE": "[default]\ncredential_process = /nonexistent/helper\n"},
            ": loading them failed (FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/helper'))",
        ),
        (
            {"AWS_CONFIG_FILE": "[default]\ncredential_process = echo not-json\n"},
            ": loading them failed (JSONDecodeError: Expecting value: line 1 column 1 (char 0)))",
        ),
        (
            {"AWS_CONFIG_FILE": "[default]\ncredential_process = echo []\n"},
            ": loading them failed (AttributeError: ",
        ),
        (
            {
                "AWS_CONFIG_FILE": """[default]\ncredential_process = echo '{"Version": 1, "AccessKeyId": null, "SecretAccessKey": "b"}'\n"""
            },
            ")",
        ),
    ],
    ids=[
        "none",
        "half",
        "no-such-profile",
        "blank",
        "blank-secret",
        "failing-process",
        "process-with-lines",
        "missing-process",
        "process-not-json",
        "process-not-an-object",
        "process-without-a-key",
    ],
)
def test_a_local_run_to_s3_without_keys_is_refused_before_any_task(
    no_aws_keys, tmp_path, tmp_path_factory, monkeypatch, capsys, environment, why: str
):
    monkeypatch.chdir(tmp_path)
    for name, value in environment.items():
        if name == "AWS_CONFIG_FILE":  # a file of this text, outside the run's folder
            (config := tmp_path_factory.mktemp("aws") / "config").write_text(value)
            value = str(config)
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--local", "--output-dir", "out", *S3_ROOT])

    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "error: invalid tensorboard_logs_root='s3://bucket/x': expected an s3:// root with keys "
        "here (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile" + why
    )
    assert list(tmp_path.iterdir()) == []


EXPIRED = '{"Version": 1, "AccessKeyId": "a", "SecretAccessKey": "b", "Expiration": "2000-01-01T00:00:00Z"}'


# Keys fetched on use are left to the tasks: fetching them here would call STS (which this
# machine cannot reach, and whose refusal is the tasks' to report) or refresh what expired.
@pytest.mark.parametrize(
    "config",
    [
        None,
        "[profile base]\naws_access_key_id = a\naws_secret_access_key = b\n"
        "[default]\nrole_arn = arn:aws:iam::123456789012:role/x\nsource_profile = base\n",
        f"[default]\ncredential_process = echo '{EXPIRED}'\n",
    ],
    ids=["environment", "assume-role", "expiring-process"],
)
def test_a_local_run_to_s3_with_keys_may_start(no_aws_keys, monkeypatch, tmp_path, config):
    from kfp_lightning.pipelines.parameters import check_local_run

    if config is None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    else:
        (tmp_path / "config").write_text(config)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    values = validate_parameters(
        {"tensorboard_logs_root": "s3://bucket/x"} | {"s3_endpoint": "http://127.0.0.1:1"}
    )

    check_local_run(values)  # no error: the tasks will find the same keys
