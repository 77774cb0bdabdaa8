"""Command line of `python pipelines/mnist.py` (`kfp-lightning` installed): compile, run, check.

Every pipeline parameter is also an option, generated from the pipeline's signature and
docstring so the two never drift; a preset supplies a recipe's values as defaults, explicit
options win. Errors are one line on stderr: exit status 2 for a bad value, 1 for a failed run.
"""

import argparse
import ast
import contextlib
import difflib
import errno
import json
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import psutil
from kfp import compiler

from kfp_lightning.components.common import images
from kfp_lightning.components.common.errors import (
    EXIT_USER_ERROR,
    WRITE_FAULT_CAUSES,
    UserInputError,
    WriteError,
    invalid,
    run_or_exit,
)
from kfp_lightning.components.common.files import atomic_file
from kfp_lightning.components.common.kubernetes_syntax import check_secret_name
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.training import plain_number
from kfp_lightning.components.train_on_nodes.nodes import MAX_NODES, check_nodes
from kfp_lightning.pipelines import compare, preflight

# The components name their images when imported, and refuse a registry in the environment
# that is none (components/common/images.py). The CLI judges that value once its options are
# read (`run`): --image-registry takes its place, and modes that name no image leave it alone.
# Until then, and in the tasks of a --local run, the components name the default registry.
_ENVIRONMENT_REGISTRY = os.environ.get(images.REGISTRY_ENV, "")
try:
    images.registry()
except UserInputError:
    del os.environ[images.REGISTRY_ENV]

# These import the components: after the registry above.
from kfp_lightning.pipelines import parameters as run_parameters  # noqa: E402
from kfp_lightning.pipelines.mnist import (  # noqa: E402
    DEFAULT_TRAINING_TIMEOUT_SECONDS,
    NODES_STEP_MARGIN_SECONDS,
    build_pipeline,
)

DEFAULT_YAML = "mnist_pipeline.yaml"
# Write faults that come from the --output chosen, and so are refused like a bad value.
_PATH_FAULTS = {
    WRITE_FAULT_CAUSES[e]
    for e in (
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    )
}
_ACCEPTED = {int: "an integer", float: "a number", dict: "a JSON object", list: "a JSON list"}
# The modes, each a flag of its own, with their help.
MODE_HELP = {
    "compile": "write the KFP v2 pipeline YAML",
    "local": "run the pipeline here (kfp.local)",
    "check_cluster": "check that the current kubeconfig context's cluster can run the pipeline "
    "with these parameters (see pipelines/preflight.py)",
    "compare_runs": "open one Kubeflow TensorBoard over every run's logs under "
    "tensorboard_logs_root in the namespace, to compare runs (see pipelines/compare.py)",
}
MODES = tuple(MODE_HELP)
# The modes each option applies to, and its default there. An option given to a mode that
# ignores it is refused rather than dropped silently (e.g. --training-timeout with --local).
MODE_OPTIONS: dict[str, tuple[tuple[str, ...], Any]] = {
    "nodes": (("compile", "local", "check_cluster"), 1),
    "output": (("compile",), DEFAULT_YAML),
    "image_registry": (("compile", "check_cluster"), None),
    "logs_pvc": (("compile", "check_cluster"), None),
    "training_timeout": (("compile",), DEFAULT_TRAINING_TIMEOUT_SECONDS),
    "output_dir": (("local",), "runs/local"),
    "keep_tensorboard": (("local",), False),
    "verbose": (("local",), False),
    "namespace": (("check_cluster", "compare_runs"), None),
    "service_account": (("check_cluster",), preflight.DEFAULT_SERVICE_ACCOUNT),
    "kfp_namespace": (("check_cluster",), preflight.DEFAULT_KFP_NAMESPACE),
}


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _typed(name: str, kind: type) -> Callable[[str], Any]:
    """Parses an option's text as `kind`, failing with the project's one-line message."""

    def parse(text: str) -> Any:
        accepted = _ACCEPTED[kind]
        try:
            value = json.loads(text) if kind in (dict, list) else kind(text)
            if kind in (int, float) and not plain_number(text):
                value = None
        except json.JSONDecodeError as err:  # a subclass of ValueError: say where the JSON broke
            accepted += f" (this is not JSON: {err.msg} at character {err.pos + 1})"
            value = None
        except RecursionError:  # nested deeper than the decoder recurses
            accepted += " (this is nested too deeply)"
            value = None
        except ValueError:
            value = None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"invalid {name}={text!r}: expected {accepted}")
        return value

    return parse


# The options besides the modes and the pipeline parameters, in `--help`'s order; each
# defaults to None (its mode's default: MODE_OPTIONS), and is listed with the options of the
# modes it applies to (MODE_OPTIONS; those of most modes in the main list).
OPTION_HELP: dict[str, str] = {
    "preset": "recipe whose values become the defaults: classic (pytorch/examples, the "
    "default) or fast (one-cycle AdamW with 1-pixel shifts, 2 epochs); explicit options "
    "still win",
    "nodes": f"train on N nodes (1 to {MAX_NODES}, default 1): on a cluster as a Kubeflow "
    "Trainer TrainJob (--compile, --check-cluster), here as N torchrun processes on "
    "127.0.0.1 (--local)",
    "output": f"YAML file to write (default: {DEFAULT_YAML})",
    "image_registry": "registry prefix for every image, also for --check-cluster --nodes N's "
    f"TrainJob (default: ${images.REGISTRY_ENV}, else {images.DEFAULT_REGISTRY})",
    "logs_pvc": "mount this PersistentVolumeClaim in the training pod, for a "
    "tensorboard_logs_root of pvc://CLAIM/path (which becomes the default)",
    "training_timeout": "deadline of the training pod "
    f"(default: {DEFAULT_TRAINING_TIMEOUT_SECONDS})",
    "output_dir": "artifacts, TensorBoard logs, local-run.log and summary.json (default: "
    f"{MODE_OPTIONS['output_dir'][1]})",
    "verbose": "show everything kfp.local and the tasks print, not only each task's own "
    "lines (all of it is in OUTPUT_DIR/local-run.log either way)",
    "keep_tensorboard": "leave the local TensorBoard server running when the pipeline ends",
    "namespace": "namespace the runs run in (default: the kubeconfig context's)",
    "service_account": "account the runs' pods run as "
    f"(default: {preflight.DEFAULT_SERVICE_ACCOUNT})",
    "kfp_namespace": "namespace of the Kubeflow Pipelines backend "
    f"(default: {preflight.DEFAULT_KFP_NAMESPACE})",
}
# add_argument's other keywords, for the options that need some.
_OPTION_EXTRA: dict[str, dict[str, Any]] = {
    "nodes": {"type": _typed("nodes", int), "metavar": "N"},
    "logs_pvc": {"metavar": "CLAIM"},
    "training_timeout": {"type": _typed("training_timeout", int), "metavar": "SECONDS"},
    "verbose": {"action": "store_true"},
    "keep_tensorboard": {"action": "store_true"},
}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line on stderr (no usage block) and exit status 2."""

    given: Sequence[str] = ()

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self.given = list(sys.argv[1:] if args is None else args)
        # argparse takes only plain negative numbers (-1, -0.5) for an option's value, and reads
        # -1e-3 or -inf as another option: joined with "=", they are refused as values are.
        takes_value = {o for a in self._actions if a.nargs is None for o in a.option_strings}
        joined: list[str] = []
        for arg in self.given:
            if joined and joined[-1] in takes_value and arg.startswith("-") and _is_number(arg):
                joined[-1] += f"={arg}"
            else:
                joined.append(arg)
        return super().parse_args(joined, namespace)

    def error(self, message: str) -> NoReturn:
        # Our converters name the parameter themselves; argparse's own prefix would repeat it.
        message = re.sub(r"^argument [^:]+: (?=invalid \w+=)", "", message)
        # A mistyped option, whatever argparse found wrong first (a mode missing, for --compil).
        known = [o for action in self._actions for o in action.option_strings]
        typed = [a.split("=")[0] for a in self.given if a.startswith("--")]
        unknown = [option for option in typed if option not in known]
        if close := [(u, m[0]) for u in unknown if (m := difflib.get_close_matches(u, known, n=1))]:
            (option, spelling), *_ = close
            # Named, unless the message names it already: it may be about another option.
            named = re.search(rf"{re.escape(option)}(?![\w-])", message)
            message += f" ({'' if named else f'{option}: '}did you mean {spelling}?)"
        self.exit(EXIT_USER_ERROR, f"error: {message}\n")


SCRIPT = "kfp-lightning"  # the console script (pyproject.toml's [project.scripts])


def build_parser() -> argparse.ArgumentParser:
    """The parser: a mode, its options, and one option per pipeline parameter."""
    parser = OneLineParser(
        # Usage lines name the command as it was typed: the console script, or the file.
        prog=SCRIPT if Path(sys.argv[0]).name == SCRIPT else "python pipelines/mnist.py",
        description="Compile the MNIST Lightning pipeline for Kubeflow, run it locally, check "
        "that a cluster can run it, or compare its runs in one TensorBoard.",
        # `--epoch 3` would silently mean --epochs: an option is spelled out or refused.
        allow_abbrev=False,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    for name, help_text in MODE_HELP.items():
        mode.add_argument(_flag(name), action="store_true", help=help_text)
    groups: dict[str, Any] = {}
    for name, help_text in OPTION_HELP.items():
        modes = MODE_OPTIONS.get(name, (MODES, None))[0]
        title = " and ".join(map(_flag, modes)) + " options"
        if len(modes) <= 2 and title not in groups:
            groups[title] = parser.add_argument_group(title)
        extra = _OPTION_EXTRA.get(name, {})
        groups.get(title, parser).add_argument(_flag(name), default=None, help=help_text, **extra)
    group = parser.add_argument_group("pipeline parameters (default: the preset's, or these)")
    # From the declarations the run form is made of: the same names, types and descriptions.
    for parameter in run_parameters.run_form_parameters():
        name, kind = parameter.name, parameter.form_type
        group.add_argument(
            _flag(name),
            type=_typed(name, kind) if kind is not str else str,
            metavar=kind.__name__.upper(),
            help=f"{parameter.description} (default: {json.dumps(parameter.default)})",
        )
    return parser


def apply_mode_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fills in each mode option's default, refusing options the chosen mode would ignore.

    Raises:
        SystemExit: Status 2, with one line naming the option and the modes it applies to.
    """
    mode = next(m for m in MODES if getattr(args, m))
    for name, (modes, default) in MODE_OPTIONS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif mode not in modes:
            *others, last = [_flag(m) for m in modes]
            applies = f"{', '.join(others)} and {last}" if others else last
            parser.error(f"{_flag(name)} applies only to {applies}, not to {_flag(mode)}")
    if mode == "check_cluster" and args.image_registry is not None and args.nodes == 1:
        parser.error(
            "--image-registry applies to --check-cluster only with --nodes N > 1 (its TrainJob "
            "names the trainer image)"
        )
    if mode == "local":  # they place or reach a cluster's pods, and tasks here run in no pod
        for name in ("node_selector", "tolerations", "s3_credentials_secret", "kubeflow_base_url"):
            if getattr(args, name) is not None:
                parser.error(f"{_flag(name)} does not apply to --local (it is for cluster runs)")
    if mode == "compare_runs":  # the runs' own parameters are theirs: refused, not ignored
        for name in ["preset"] + [p.name for p in run_parameters.run_form_parameters()]:
            if getattr(args, name) is not None and name not in compare.RUN_PARAMETERS:
                applies = ", ".join(map(_flag, compare.RUN_PARAMETERS))
                parser.error(f"{_flag(name)} does not apply to --compare-runs (it takes {applies})")


def compile_pipeline(
    output: str | Path,
    parameters: Mapping[str, Any] | None = None,
    logs_pvc: str | None = None,
    training_timeout_seconds: int = DEFAULT_TRAINING_TIMEOUT_SECONDS,
    nodes: int = 1,
) -> Path:
    """Writes the pipeline YAML, with `parameters` as the run form's defaults.

    Args:
        output: YAML file to write, a .yaml or .yml path (atomically; missing folders are
            created).
        parameters: Default overrides, e.g. a preset's values.
        logs_pvc: Claim to mount for pvc:// logs roots.
        training_timeout_seconds: Deadline of the training pod.
        nodes: Nodes to train on; more than one trains as a Kubeflow Trainer TrainJob.

    Returns:
        The absolute path written.

    Raises:
        UserInputError: A bad value, or one a cluster run cannot use (nothing is written); for
            `output`, a directory, a suffix other than .yaml or .yml, or a file where a folder
            must be.
    """
    path = Path(output).absolute()
    accepted = "a file path ending in .yaml or .yml"
    if path.is_dir() or str(output).endswith(("/", os.sep)):
        raise invalid("output", str(output), f"{accepted}, not a directory")
    if path.suffix not in (".yaml", ".yml"):
        raise invalid("output", str(output), accepted)
    for folder in path.parents:
        if folder.exists() and not folder.is_dir():
            raise invalid(
                "output", str(output), f"a path whose folders are folders ({folder} is a file)"
            )
    parameters = dict(parameters or {})
    if logs_pvc is not None:
        check_secret_name(logs_pvc, "logs_pvc")
        parameters.setdefault("tensorboard_logs_root", f"pvc://{logs_pvc}/tensorboard")
    # Kubernetes caps a pod's activeDeadlineSeconds at 2^31 - 1 (ValidatePodSpec, pkg/apis/core/
    # validation/validation.go); the nodes step's pod has its margin on top.
    longest = 2**31 - 1 - NODES_STEP_MARGIN_SECONDS
    if isinstance(training_timeout_seconds, bool) or not 1 <= training_timeout_seconds <= longest:
        raise invalid(
            "training_timeout", training_timeout_seconds, f"an integer in [1, {longest}] (seconds)"
        )
    nodes = check_nodes(nodes)
    pipeline = build_pipeline(
        logs_pvc=logs_pvc, training_timeout_seconds=training_timeout_seconds, nodes=nodes
    )
    values = run_parameters.validate_parameters(parameters, nodes)
    run_parameters.check_cluster_run(values, logs_pvc, nodes)
    try:
        with atomic_file(path) as staging:  # KFP wants a .yaml suffix: the staging file keeps it
            compiler.Compiler().compile(
                pipeline,
                str(staging),
                pipeline_parameters=run_parameters.form_values(parameters) or None,
            )
            staging.write_text(stable_header(staging.read_text()))
    except OSError as err:  # a folder that cannot be made or written: nothing was written
        raise invalid(
            "output", str(output), f"a path this user can write ({err.strerror})"
        ) from None
    except WriteError as err:
        # The path chosen is at fault, not the machine (a full disk stays a write fault, exit 1).
        if err.cause not in _PATH_FAULTS:
            raise
        raise invalid("output", str(output), f"a path this user can write ({err.cause})") from None
    return path


# A dict or list default in KFP's header comment; the YAML body below it has no line that
# starts with "#".
_DEFAULT_IN_HEADER = re.compile(r"^(#    \w+: \w+ \[Default: )([\[{].*)\]$", re.MULTILINE)


def stable_header(text: str) -> str:
    """`text` with the dict and list defaults of KFP's header comment in sorted key order.

    KFP writes each default there from a protobuf Struct (kfp/compiler/pipeline_spec_builder.py,
    the pipeline header's `collect_pipeline_signatures`), whose map order changes from one
    process to the next; the YAML body below it is key-sorted already. Sorted, the same source
    compiles to the same bytes, as GitOps diffs and content-keyed caches need.
    """

    def sorted_default(match: re.Match[str]) -> str:
        # A JSON round trip with sorted keys sorts every nested dict too.
        value = json.loads(json.dumps(ast.literal_eval(match.group(2)), sort_keys=True))
        return f"{match.group(1)}{value!r}]"

    return _DEFAULT_IN_HEADER.sub(sorted_default, text)


def run(args: argparse.Namespace) -> int:
    """Does what the parsed command line asks; see `main`.

    Raises:
        UserInputError: A bad value.
        RunError: The run failed.
    """
    # The preset's values overlaid with the options given explicitly.
    parameters = run_parameters.preset_parameters(args.preset) if args.preset is not None else {}
    given = {p.name: getattr(args, p.name) for p in run_parameters.run_form_parameters()}
    parameters.update({name: value for name, value in given.items() if value is not None})
    nodes = check_nodes(args.nodes)
    # The environment's registry is a value as --image-registry's is, which takes its place,
    # where images are named: the YAML, and the TrainJob --check-cluster submits as a dry run.
    from_environment = os.environ.get(images.REGISTRY_ENV, _ENVIRONMENT_REGISTRY).strip()
    if args.image_registry is not None:
        images.use_registry(args.image_registry)
    elif from_environment and (args.compile or (args.check_cluster and nodes > 1)):
        images.use_registry(from_environment, images.REGISTRY_ENV)
    if args.compare_runs or args.check_cluster:
        if args.logs_pvc is not None:  # --check-cluster's, as --compile's
            parameters.setdefault("tensorboard_logs_root", f"pvc://{args.logs_pvc}/tensorboard")
        values = run_parameters.validate_parameters(parameters, nodes)
        if args.compare_runs:
            compare.open_runs_tensorboard(values, args.namespace)
            return 0
        # What --compile would refuse for these values is refused first, without a cluster;
        # a pvc:// root's claim is the one --compile --logs-pvc would mount.
        root = parse_logs_root(values["tensorboard_logs_root"], "namespace")
        mounted = args.logs_pvc or (root.claim if root.scheme == "pvc" else None)
        run_parameters.check_cluster_run(values, mounted, nodes)
        return preflight.check_cluster(
            values, args.namespace, args.service_account, args.kfp_namespace, nodes, mounted
        )
    if args.compile:
        print(
            compile_pipeline(args.output, parameters, args.logs_pvc, args.training_timeout, nodes)
        )
        # What a user must know about the images before uploading the YAML: each node pulls
        # them (--nodes runs the trainer image in its TrainJob too).
        refs = sorted(images.image_ref(name) for name in images.IMAGE_NAMES)
        listed = "".join(f"  {ref}\n" for ref in refs)
        registry = images.registry()
        if registry == images.DEFAULT_REGISTRY:
            advice = (
                f"{images.DEFAULT_REGISTRY} holds them for released versions only; for any other "
                "build, or a cluster that cannot reach it, push them to your own registry with "
                "`make images IMAGE_REGISTRY=REGISTRY PUSH=1` and compile again with "
                "the same --image-registry"
            )
        else:
            push = f"make images IMAGE_REGISTRY={shlex.quote(registry)} PUSH=1"
            advice = f"push them before the first run: {push}"
        print(f"images the cluster must pull:\n{listed}({advice})")
        return 0
    from kfp_lightning.pipelines.local import run_local

    summary = run_local(args.output_dir, parameters, args.keep_tensorboard, nodes, args.verbose)
    print(
        f"test accuracy {summary['test_accuracy']:.4f}, test loss {summary['test_loss']:.4f}, "
        f"{summary['epochs']} epoch{'s' if summary['epochs'] != 1 else ''}, "
        f"{summary['train_samples_per_second']:.0f} training samples/s, "
        f"{summary['nodes']} node(s), {summary['processes']} process(es)\n"
        f"model:   {summary['model']}\nreport:  {summary['report_html']}\n"
        f"summary: {Path(os.path.abspath(args.output_dir), 'summary.json')}"
    )
    return 0


def stop_tasks() -> None:
    """Sends SIGTERM to the processes this one started that share its process group.

    Those are the kfp.local task and what it ran in its group; each then stops what it
    started in sessions of its own (torchrun's nodes), as the local TensorBoard's owner does.
    The group alone will not do: this process leads it only when a shell's job control made
    it so, and otherwise shares it with whatever started it. psutil finds the descendants on
    every POSIX system (Linux's /proc, macOS's sysctl).
    """
    group = os.getpgid(0)
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error, ProcessLookupError):  # ended meanwhile
            if os.getpgid(process.pid) == group:
                process.terminate()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python pipelines/mnist.py`: exit status 0, 1 (failed), 2 (bad value).

    Interrupted by SIGINT (Ctrl-C) or SIGTERM, it stops its tasks and exits 130 or 143.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_mode_defaults(parser, args)
    terminated: list[int] = []

    def interrupt_on_sigterm(signum: int, frame: object) -> None:
        # SIGTERM (a supervisor's or `kill`'s stop) ends a run as Ctrl-C does. It must raise
        # KeyboardInterrupt itself: `subprocess.Popen.__exit__`, which kfp.local's task runner
        # leaves through, waits briefly for the task only on exactly that type, and waits for
        # it to end on any other.
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    try:
        return run_or_exit(run, args)
    except KeyboardInterrupt:
        # Every step cleans up after itself (atomic writes, the local TensorBoard). The tasks
        # this process started are stopped here when only it got the signal: a terminal's
        # Ctrl-C reaches the whole foreground process group, tasks included; `kill -INT <pid>`,
        # a stop button, a supervisor's SIGTERM or a script's `kill $!` reach this process
        # alone, and the running kfp.local task would go on training as an orphan.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no second stop inside this one
        stop_tasks()
        print("error: interrupted", file=sys.stderr, flush=True)
        # 128 + the signal's number, as shells report a process a signal ended (130 for Ctrl-C).
        return 128 + (terminated[0] if terminated else signal.SIGINT)
    except BrokenPipeError:
        # stdout's reader left while this process, not a task, was printing (a task's lines
        # are let go where they are shown, and the run goes on): no traceback, as shells see it.
        from kfp_lightning.pipelines.local import discard_output

        discard_output(sys.stdout)
        return 128 + signal.SIGPIPE
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
