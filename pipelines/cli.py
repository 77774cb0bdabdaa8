"""Command line of `python pipelines/mnist.py`: compile for Kubeflow, or run locally.

Every pipeline parameter is also an option, generated from the pipeline's signature and
docstring so the two never drift; a preset supplies a recipe's values as defaults, explicit
options win. Errors are one line on stderr: exit status 2 for a bad value, 1 for a failed run.
"""

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from kfp import compiler

from kfp_lightning.components import images
from kfp_lightning.components.common.errors import EXIT_USER_ERROR, invalid, run_or_exit
from kfp_lightning.components.common.kubernetes_syntax import check_secret_name
from kfp_lightning.components.train_mnist.config import PRESETS
from kfp_lightning.pipelines.mnist import (
    DEFAULT_TRAINING_TIMEOUT_SECONDS,
    build_pipeline,
    mnist_pipeline,
)
from kfp_lightning.pipelines.parameters import preset_parameters, validate_parameters

DEFAULT_YAML = "mnist_pipeline.yaml"
# KFP's names for parameter types -> the Python type a command-line value is parsed into.
PARAMETER_TYPES: dict[str, type] = {
    "Integer": int,
    "Float": float,
    "String": str,
    "Dict": dict,
    "List": list,
}


def _parameter_docs() -> dict[str, str]:
    import docstring_parser

    doc = docstring_parser.parse(mnist_pipeline.pipeline_func.__doc__ or "")
    return {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}


_ACCEPTED = {int: "an integer", float: "a number", dict: "a JSON object", list: "a JSON list"}


def _typed(name: str, kind: type) -> Callable[[str], Any]:
    """Parses an option's text as `kind`, failing with the project's one-line message."""

    def parse(text: str) -> Any:
        try:
            value = json.loads(text) if kind in (dict, list) else kind(text)
        except ValueError:
            value = None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"invalid {name}={text!r}: expected {_ACCEPTED[kind]}")
        return value

    return parse


def _choice(name: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid {name}={text!r}: expected one of {', '.join(choices)}"
            )
        return text

    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        # Our converters name the parameter themselves; argparse's own prefix would repeat it.
        message = re.sub(r"^argument [^:]+: (?=invalid \w+=)", "", message)
        self.exit(EXIT_USER_ERROR, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser: a mode, its options, and one option per pipeline parameter."""
    parser = OneLineParser(
        prog="python pipelines/mnist.py",
        description="Compile the MNIST Lightning pipeline for Kubeflow, or run it locally.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compile", action="store_true", help="write the KFP v2 pipeline YAML")
    mode.add_argument("--local", action="store_true", help="run the pipeline here (kfp.local)")
    parser.add_argument(
        "--preset",
        type=_choice("preset", tuple(PRESETS)),
        default=None,
        help="recipe whose values become the defaults: classic (pytorch/examples, the default) "
        "or fast (one-cycle AdamW with 1-pixel shifts, 2 epochs); explicit options still win",
    )
    compile_options = parser.add_argument_group("--compile options")
    compile_options.add_argument(
        "--output", default=DEFAULT_YAML, help=f"YAML file to write (default: {DEFAULT_YAML})"
    )
    compile_options.add_argument(
        "--image-registry",
        default=None,
        help="registry prefix for every image "
        f"(default: ${images.REGISTRY_ENV}, else {images.DEFAULT_REGISTRY})",
    )
    compile_options.add_argument(
        "--logs-pvc",
        default=None,
        metavar="CLAIM",
        help="mount this PersistentVolumeClaim in the training pod, for a "
        "tensorboard_logs_root of pvc://CLAIM/path (which becomes the default)",
    )
    compile_options.add_argument(
        "--training-timeout",
        type=_typed("training_timeout", int),
        default=DEFAULT_TRAINING_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"deadline of the training pod (default: {DEFAULT_TRAINING_TIMEOUT_SECONDS})",
    )
    local_options = parser.add_argument_group("--local options")
    local_options.add_argument(
        "--output-dir", default="runs/local", help="artifacts, TensorBoard logs and summary.json"
    )
    local_options.add_argument(
        "--keep-tensorboard",
        action="store_true",
        help="leave the local TensorBoard server running when the pipeline ends",
    )
    docs = _parameter_docs()
    group = parser.add_argument_group("pipeline parameters (default: the preset's, or these)")
    for name, spec in mnist_pipeline.component_spec.inputs.items():
        kind = PARAMETER_TYPES[spec.type]
        option = f"--{name.replace('_', '-')}"
        group.add_argument(
            option,
            dest=name,
            type=_typed(name, kind) if kind is not str else str,
            default=None,
            metavar=kind.__name__.upper(),
            help=f"{docs.get(name, '')} (default: {json.dumps(spec.default)})",
        )
    return parser


def chosen_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The preset's values overlaid with the options given explicitly."""
    parameters = preset_parameters(mnist_pipeline, args.preset) if args.preset else {}
    for name in mnist_pipeline.component_spec.inputs:
        if getattr(args, name) is not None:
            parameters[name] = getattr(args, name)
    return parameters


def compile_pipeline(
    output: str | Path,
    parameters: Mapping[str, Any] | None = None,
    logs_pvc: str | None = None,
    training_timeout_seconds: int = DEFAULT_TRAINING_TIMEOUT_SECONDS,
) -> Path:
    """Writes the pipeline YAML, with `parameters` as the run form's defaults.

    Args:
        output: YAML file to write (atomically).
        parameters: Default overrides, e.g. a preset's values.
        logs_pvc: Claim to mount for pvc:// logs roots.
        training_timeout_seconds: Deadline of the training pod.

    Returns:
        The absolute path written.
    """
    parameters = dict(parameters or {})
    if logs_pvc is not None:
        check_secret_name(logs_pvc, "logs_pvc")
        parameters.setdefault("tensorboard_logs_root", f"pvc://{logs_pvc}/tensorboard")
    if isinstance(training_timeout_seconds, bool) or training_timeout_seconds < 1:
        raise invalid("training_timeout", training_timeout_seconds, "an integer >= 1 (seconds)")
    pipeline = build_pipeline(logs_pvc=logs_pvc, training_timeout_seconds=training_timeout_seconds)
    validate_parameters(pipeline, parameters)
    output = Path(output).absolute()
    staging = output.with_name(f".{output.stem}.partial{output.suffix}")
    try:
        compiler.Compiler().compile(pipeline, str(staging), pipeline_parameters=parameters or None)
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python pipelines/mnist.py`."""
    args = build_parser().parse_args(argv)
    parameters = run_or_exit(chosen_parameters, args)
    if args.compile:
        if args.image_registry is not None:
            run_or_exit(images.use_registry, args.image_registry)
        path = run_or_exit(
            compile_pipeline, args.output, parameters, args.logs_pvc, args.training_timeout
        )
        print(path)
        return 0
    from kfp_lightning.pipelines.local import run_local

    summary = run_or_exit(run_local, args.output_dir, parameters, args.keep_tensorboard)
    rate = summary["train_samples_per_second"]
    print(
        f"test accuracy {summary['test_accuracy']:.4f}, test loss {summary['test_loss']:.4f}, "
        f"{summary['epochs']} epochs, {rate:.0f} training samples/s\n"
        f"model:   {summary['model']}\nreport:  {summary['report_html']}\n"
        f"summary: {Path(args.output_dir).absolute() / 'summary.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
