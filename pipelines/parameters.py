"""The pipeline's run parameters: defaults, presets, and validation before anything runs.

Every parameter is declared once, as a field of one of `mnist.RUN_PARAMETERS`; each component
builds and so validates the same dataclasses from its inputs when it starts (the Kubeflow
form bypasses the CLI), and `validate_parameters` builds all of them, so the CLI enforces
every rule a component enforces, from the same code, before anything runs.
"""

from collections.abc import Mapping
from typing import Any

from kfp_lightning.components.common import logs_location, run_form, training
from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.run_form import from_run_form
from kfp_lightning.components.download_mnist.download import MNIST_TRAIN_SAMPLES, DownloadConfig
from kfp_lightning.components.train_on_nodes.nodes import TRAINJOB, check_shared_location
from kfp_lightning.pipelines.mnist import RUN_PARAMETERS


def run_form_parameters() -> list[run_form.RunParameter]:
    """The pipeline's run parameters (its run form), in order."""
    return run_form.parameters_of(RUN_PARAMETERS, scopes=[run_form.PIPELINE])


def pipeline_defaults() -> dict[str, Any]:
    """Every run parameter with its default value."""
    return {parameter.name: parameter.default for parameter in run_form_parameters()}


def preset_parameters(preset: str) -> dict[str, Any]:
    """The run-form values a preset sets (the classic recipe's for every other field).

    Raises:
        UserInputError: No such preset.
    """
    config = training.TrainConfig.from_preset(preset)
    fields = run_form.parameters_of([training.TrainConfig], scopes=[run_form.PIPELINE])
    return {p.name: p.to_form(getattr(config, p.name)) for p in fields}


def form_values(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """`parameters`, validated, as the components read them, in the run form's types.

    A switch typed "TRUE" reads on, `mirror=""` the default mirrors, " 1.0 " 1.0: the run form's
    defaults are what runs, and never "", 0 or "false", which the Kubeflow UI takes for missing.

    Raises:
        UserInputError: A value that is "" or 0 as the components read it (`seed=0`).
    """
    values = {**pipeline_defaults(), **parameters}
    configs = {config: from_run_form(config, values) for config in RUN_PARAMETERS}
    form = {
        p.name: p.to_form(getattr(configs[p.owner], p.name))
        for p in run_form_parameters()
        if p.name in parameters
    }
    for name, value in form.items():
        if not isinstance(value, (dict, list)) and value in ("", 0):
            why = "the Kubeflow UI takes it for a missing value: give it when starting the run"
            raise invalid(name, parameters[name], f"another default than {value!r} ({why})")
    return form


def validate_parameters(parameters: Mapping[str, Any], nodes: int = 1) -> dict[str, Any]:
    """Checks every parameter as the components will when they start.

    Args:
        parameters: Values chosen by the user; the others take their defaults.
        nodes: Nodes the run trains on; each runs `max(1, gpus)` processes, as
            `training.plan_devices` plans them, and every process takes an equal share.

    Returns:
        All parameters, defaults filled in.

    Raises:
        UserInputError: Naming the first parameter with an unacceptable value.
    """
    defaults = pipeline_defaults()
    for name in parameters:
        if name not in defaults:
            raise invalid("parameter", name, f"one of {', '.join(sorted(defaults))}")
    values = {**defaults, **parameters}
    configs = {config: from_run_form(config, values) for config in RUN_PARAMETERS}
    # The validation hold-out must leave training images. Training checks the same against the
    # downloaded data; with the published checksums the data is the official MNIST, whose size
    # is known, so the CLI can say so before anything runs.
    config = configs[training.TrainConfig]
    if not configs[DownloadConfig].published_checksums:
        return values
    if config.validation_size >= MNIST_TRAIN_SAMPLES:
        raise invalid(
            "validation",
            values["validation"],
            f"{training.TEST_SET} or fewer than the {MNIST_TRAIN_SAMPLES} MNIST training images",
        )
    processes = nodes * max(1, config.gpus)
    held_out = config.validation_size
    training.check_batch_size(
        config.batch_size, MNIST_TRAIN_SAMPLES - held_out, processes, held_out
    )
    return values


def check_cluster_run(values: Mapping[str, Any], logs_pvc: str | None, nodes: int = 1) -> None:
    """What a cluster run needs beyond valid values: a mounted claim, a compiler, a shared root.

    Args:
        values: Every pipeline parameter, validated.
        logs_pvc: The claim `--logs-pvc` mounts in the training pod, if any.
        nodes: Nodes to train on; more than one need a logs root they all share.

    Raises:
        UserInputError: A pvc:// root the pod would not have mounted, `torch_compile=on`,
            which the trainer image cannot run (it has no C compiler), or a root the nodes of
            a TrainJob would not share.
    """
    given = values["tensorboard_logs_root"]
    root = logs_location.parse_logs_root(given, "namespace")
    logs_location.check_mounted_claim(root, logs_pvc, given)
    if from_run_form(training.TrainConfig, values).torch_compile:
        raise invalid(
            "torch_compile",
            values["torch_compile"],
            "off: the trainer image has no C compiler, which torch.compile needs",
        )
    if nodes > 1:
        check_shared_location(root, logs_pvc, TRAINJOB, given)


def check_local_run(values: Mapping[str, Any]) -> None:
    """What a `--local` run needs beyond valid values: a root this machine can write.

    Raises:
        UserInputError: A pvc:// root (no claim is mounted here), an s3:// root without keys
            for it here, `torch_compile=on` without a compiler on this machine, or GPUs or a
            precision this machine lacks.
    """
    root = values["tensorboard_logs_root"]
    # No namespace: the tasks run outside a pod, where `{namespace}` has nothing to become.
    scheme = logs_location.parse_logs_root(root).scheme
    if scheme == "pvc":
        raise invalid("tensorboard_logs_root", root, "a directory or s3:// for --local runs")
    # An s3:// root needs an endpoint this machine reaches; `auto` finds one only in a cluster.
    from_run_form(logs_location.LiveLogsConfig, values).endpoint()
    if scheme == "s3":
        # And keys, which the tasks find as boto3 does: said before the download, not when
        # training first lists the logs.
        import botocore.credentials
        import botocore.exceptions
        import botocore.session

        keys = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile"
        try:
            credentials = botocore.session.get_session().get_credentials()
        except botocore.exceptions.BotoCoreError as err:  # half the keys, a missing profile
            # A credential_process that fails silently leaves botocore's line ending in ": ".
            credentials, keys = None, f"{keys}: {' '.join(str(err).split()).rstrip(': ')}"
        except Exception as err:  # whatever a credential_process or a token file did
            why = f"{type(err).__name__}: {' '.join(str(err).split())}"
            credentials, keys = None, f"{keys}: loading them failed ({why})"
        # Keys fetched on use (assume-role, web identity, SSO, an expiring credential_process)
        # are left to the tasks: fetching them here would call STS. Static keys are read:
        # botocore takes blank ones (`AWS_ACCESS_KEY_ID=' '`) for keys, and no store does.
        static = not isinstance(credentials, botocore.credentials.RefreshableCredentials)
        if credentials is None or (
            static
            and not all(
                isinstance(key, str) and key.strip()
                for key in (credentials.access_key, credentials.secret_key)
            )
        ):
            raise invalid("tensorboard_logs_root", root, f"an s3:// root with keys here ({keys})")
    config = from_run_form(training.TrainConfig, values)
    # --local trains in this Python: on the CPU, or on this machine's GPU if it has one.
    training.check_compiler(config.torch_compile, "cpu")
    if config.gpus:
        training.check_compiler(config.torch_compile, "gpu")
    if config.gpus > 1 or config.precision == "16-mixed":
        # Only these depend on this machine's GPUs, and torch is imported only to count them.
        training.plan_devices(config.gpus, config.precision, training.visible_gpus())
