"""The MNIST pipeline: download -> train with Lightning -> report, plus its command line.

    python pipelines/mnist.py --compile [--output mnist_pipeline.yaml] [--preset fast]
    python pipelines/mnist.py --local [--output-dir runs/local] [--epochs 1 --mirror URL ...]

`--compile` writes the KFP v2 YAML to upload in the Kubeflow UI; `--local` runs the same
pipeline on this machine with `kfp.local` and writes `summary.json`. Every pipeline parameter is
also a `--local` option, generated from the pipeline's signature and docstring so the two never
drift. Parameters are validated before anything runs, so a bad value costs one line, not a pod.
"""

import argparse
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import HTML, Artifact, Metrics, Model

from kfp_lightning.components import images
from kfp_lightning.components.common.errors import (
    EXIT_USER_ERROR,
    UserInputError,
    invalid,
    run_or_exit,
)
from kfp_lightning.components.common.files import write_json
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.report_training.component import report_training
from kfp_lightning.components.train_mnist.component import train_mnist
from kfp_lightning.components.train_mnist.config import PRESETS, TrainConfig, preset_values

PIPELINE_NAME = "mnist-lightning"
DEFAULT_YAML = "mnist_pipeline.yaml"
GPU_RESOURCE = "nvidia.com/gpu"
# Taint that GPU node pools commonly carry (GKE, EKS and the NVIDIA GPU operator's examples).
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

_train = TrainConfig()


class Outputs(NamedTuple):
    model: Model
    metrics: Metrics
    tensorboard_logs: Artifact
    report: HTML


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Download MNIST, train the PyTorch example CNN with Lightning on a GPU node, "
    "and chart its TensorBoard scalars.",
)
def mnist_pipeline(
    mirror: str = download_mnist.component_spec.inputs["mirror"].default,
    expected_md5: dict = download_mnist.component_spec.inputs["expected_md5"].default,
    epochs: int = _train.epochs,
    batch_size: int = _train.batch_size,
    learning_rate: float = _train.learning_rate,
    gamma: float = _train.gamma,
    optimizer: str = _train.optimizer,
    lr_schedule: str = _train.lr_schedule,
    seed: int = _train.seed,
    validation_size: int = _train.validation_size,
    gpus: int = _train.gpus,
    precision: str = _train.precision,
    torch_compile: str = "on" if _train.torch_compile else "off",
    channels_last: str = "on" if _train.channels_last else "off",
    node_selector: dict = {},
    tolerations: list = [GPU_TOLERATION],
) -> Outputs:
    """Downloads MNIST, trains the CNN with Lightning and reports its TensorBoard scalars.

    Args:
        mirror: Base URLs holding the four MNIST *-ubyte.gz files, comma-separated, tried in
            order (http://, https:// or file://). Default: torchvision's public mirrors.
        expected_md5: MD5 of each uncompressed MNIST file, by file name. Default: the published
            checksums; change only to train on another MNIST-format data set.
        epochs: Passes over the training set (classic recipe: 14).
        batch_size: Training batch size (classic: 64).
        learning_rate: Adadelta's learning rate (classic: 1.0), or the one-cycle peak rate.
        gamma: StepLR's learning-rate decay per epoch, in (0, 1] (classic: 0.7).
        optimizer: adadelta (classic) or sgd (Nesterov momentum 0.9, weight decay 5e-4).
        lr_schedule: step (StepLR each epoch, classic) or onecycle (OneCycleLR each step).
        seed: Seed of the initial weights, the validation split, dropout and shuffling.
        validation_size: Training images held out for the validation pass after every epoch;
            0 validates on the test set, as the upstream example does.
        gpus: GPUs requested for training (nvidia.com/gpu): 1, or 0 to train on CPU nodes.
        precision: 32-true, bf16-mixed or 16-mixed (16-mixed needs a GPU).
        torch_compile: on or off: compile the network with torch.compile.
        channels_last: on or off: keep convolutions in the NHWC memory layout.
        node_selector: Node labels the training pod must match, as a JSON object, e.g.
            {"cloud.google.com/gke-accelerator": "nvidia-l4"}. Empty: any node with the GPU.
        tolerations: Tolerations of the training pod, as a JSON list of Kubernetes
            Toleration objects. Default: tolerate the nvidia.com/gpu NoSchedule taint.
    """
    download = download_mnist(mirror=mirror, expected_md5=expected_md5)
    download.set_display_name("Download MNIST").set_caching_options(True)
    download.set_cpu_request("500m").set_memory_request("1Gi").set_memory_limit("2Gi")

    train = train_mnist(
        dataset=download.outputs["dataset"],
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        gamma=gamma,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        seed=seed,
        validation_size=validation_size,
        gpus=gpus,
        precision=precision,
        torch_compile=torch_compile,
        channels_last=channels_last,
    )
    # A run is asked for in order to train: never answer it from the cache.
    train.set_display_name("Train with Lightning").set_caching_options(False)
    train.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    train.set_cpu_request("2").set_memory_request("4Gi").set_memory_limit("16Gi")
    kubernetes.add_node_selector_json(train, node_selector)
    kubernetes.add_toleration_json(train, tolerations)

    report = report_training(tensorboard_logs=train.outputs["tensorboard_logs"])
    report.set_display_name("Report").set_caching_options(True)
    report.set_cpu_request("250m").set_memory_request("512Mi").set_memory_limit("1Gi")

    return Outputs(
        model=train.outputs["model"],
        metrics=train.outputs["metrics"],
        tensorboard_logs=train.outputs["tensorboard_logs"],
        report=report.outputs["report"],
    )


# ---------------------------------------------------------------------------------------------
# Parameters: defaults, presets, validation.

TRAIN_PARAMETERS = tuple(
    name
    for name in TrainConfig.__dataclass_fields__
    if name in mnist_pipeline.component_spec.inputs
)


def pipeline_defaults() -> dict[str, Any]:
    """Every pipeline parameter with its default value."""
    return {name: spec.default for name, spec in mnist_pipeline.component_spec.inputs.items()}


def preset_parameters(preset: str) -> dict[str, Any]:
    """The pipeline parameters a preset sets (in the run form's types: switches as on/off)."""
    values = preset_values(preset)
    return {
        name: ("on" if values[name] else "off") if isinstance(values[name], bool) else values[name]
        for name in TRAIN_PARAMETERS
    }


def validate_parameters(parameters: Mapping[str, Any]) -> None:
    """Checks every pipeline parameter before a run or a compile; raises `UserInputError`."""
    from kfp_lightning.components.common.urls import parse_mirrors

    known = set(mnist_pipeline.component_spec.inputs)
    for name in parameters:
        if name not in known:
            raise invalid("parameter", name, f"one of {', '.join(sorted(known))}")
    values = {**pipeline_defaults(), **parameters}
    parse_mirrors(values["mirror"], ())
    TrainConfig(**{name: values[name] for name in TRAIN_PARAMETERS})


# ---------------------------------------------------------------------------------------------
# Command line.


def _parameter_docs() -> dict[str, str]:
    import docstring_parser

    doc = docstring_parser.parse(mnist_pipeline.pipeline_func.__doc__ or "")
    return {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}


def _json_value(name: str, kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(
                f"--{name.replace('_', '-')} needs a JSON {kind.__name__}"
            )
        return value

    return parse


# KFP's names for parameter types -> the Python type a CLI value is parsed into.
PARAMETER_TYPES: dict[str, type] = {
    "Integer": int,
    "Float": float,
    "String": str,
    "Dict": dict,
    "List": list,
}


def build_parser() -> argparse.ArgumentParser:
    """The CLI: --compile or --local, plus one option per pipeline parameter."""
    parser = argparse.ArgumentParser(
        prog="python pipelines/mnist.py",
        description="Compile the MNIST Lightning pipeline for Kubeflow, or run it locally.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compile", action="store_true", help="write the KFP v2 pipeline YAML")
    mode.add_argument("--local", action="store_true", help="run the pipeline here with kfp.local")
    parser.add_argument(
        "--output", default=DEFAULT_YAML, help=f"--compile: YAML path (default {DEFAULT_YAML})"
    )
    parser.add_argument(
        "--output-dir",
        default="runs/local",
        help="--local: directory for artifacts and summary.json",
    )
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="training recipe whose values become the defaults: classic (pytorch/examples, the "
        "default) or fast (one-cycle SGD, 2 epochs); explicit options still win",
    )
    parser.add_argument(
        "--image-registry",
        default=None,
        help="registry prefix for every image "
        f"(default: ${images.REGISTRY_ENV}, else {images.DEFAULT_REGISTRY})",
    )
    docs = _parameter_docs()
    group = parser.add_argument_group(
        "pipeline parameters (default: the pipeline's, or the preset's)"
    )
    for name, spec in mnist_pipeline.component_spec.inputs.items():
        kind = PARAMETER_TYPES[spec.type]
        converter = _json_value(name, kind) if kind in (dict, list) else kind
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=converter,
            default=None,
            metavar=kind.__name__.upper(),
            help=f"{docs.get(name, '')} (default: {json.dumps(spec.default)})",
        )
    return parser


def chosen_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Preset values overlaid with the options given explicitly on the command line."""
    parameters = preset_parameters(args.preset) if args.preset else {}
    for name in mnist_pipeline.component_spec.inputs:
        if getattr(args, name) is not None:
            parameters[name] = getattr(args, name)
    return parameters


def compile_pipeline(output: str | Path, parameters: Mapping[str, Any] | None = None) -> Path:
    """Writes the pipeline YAML with `parameters` as the run form's defaults.

    Args:
        output: YAML file to write (atomically).
        parameters: Default overrides, e.g. a preset's values.

    Returns:
        The absolute path written.
    """
    parameters = dict(parameters or {})
    validate_parameters(parameters)
    output = Path(output).absolute()
    staging = output.with_name(f".{output.stem}.partial{output.suffix}")
    try:
        compiler.Compiler().compile(
            mnist_pipeline, str(staging), pipeline_parameters=parameters or None
        )
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    return output


def run_local(output_dir: str | Path, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Runs the pipeline on this machine with kfp.local and writes `summary.json`.

    Args:
        output_dir: Holds `artifacts/` (every task's outputs), the local cache and the summary.
        parameters: Pipeline arguments (others take their defaults).

    Returns:
        The summary that was written.
    """
    from kfp import local

    validate_parameters(parameters)
    output_dir = Path(output_dir).absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    # The components name container images; here they run in this Python environment.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(output_dir / "artifacts"),
        raise_on_error=True,
        enable_caching=True,
        cache_root=str(output_dir / "cache"),
    )
    task = mnist_pipeline(**parameters)
    outputs = task.outputs
    metrics = dict(outputs["metrics"].metadata)
    summary = {
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "epochs": int(metrics["epochs"]),
        "train_samples_per_second": metrics["train_samples_per_second"],
        "metrics": metrics,
        "model": outputs["model"].path,
        "tensorboard_logs": outputs["tensorboard_logs"].path,
        "report_html": outputs["report"].path,
        "parameters": {**pipeline_defaults(), **parameters},
    }
    write_json(output_dir / "summary.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python pipelines/mnist.py`."""
    args = build_parser().parse_args(argv)
    if args.image_registry is not None:
        run_or_exit(images.use_registry, args.image_registry)
    parameters = chosen_parameters(args)
    if args.compile:
        path = run_or_exit(compile_pipeline, args.output, parameters)
        print(path)
        return 0
    summary = run_or_exit(run_local, args.output_dir, parameters)
    rate = summary["train_samples_per_second"]
    print(
        f"test accuracy {summary['test_accuracy']:.4f}, test loss {summary['test_loss']:.4f}, "
        f"{summary['epochs']} epochs, {rate:.0f} training samples/s\n"
        f"model: {summary['model']}\nreport: {summary['report_html']}\n"
        f"summary: {Path(args.output_dir).absolute() / 'summary.json'}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserInputError as err:  # raised outside run_or_exit, e.g. while parsing
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
