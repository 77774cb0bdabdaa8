"""The pipeline's run parameters: defaults, presets, and validation before anything runs.

The Kubeflow run form bypasses this module (each component validates its own inputs when it
starts); the CLI calls `validate_parameters` so a bad value costs one line, not a pod.
"""

from collections.abc import Mapping
from typing import Any

from kfp.dsl import base_component

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.kubernetes_syntax import (
    check_node_selector,
    check_secret_name,
    check_tolerations,
)
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.common.urls import (
    parse_base_url,
    parse_http_endpoint,
    parse_mirrors,
)
from kfp_lightning.components.download_mnist.sources import checksum_table
from kfp_lightning.components.train_mnist.config import PRESETS, TrainConfig, preset_values


def pipeline_defaults(pipeline: base_component.BaseComponent) -> dict[str, Any]:
    """Every parameter of `pipeline` with its default value."""
    return {name: spec.default for name, spec in pipeline.component_spec.inputs.items()}


def train_parameter_names(pipeline: base_component.BaseComponent) -> tuple[str, ...]:
    """The pipeline parameters that are `TrainConfig` fields."""
    inputs = pipeline.component_spec.inputs
    return tuple(name for name in TrainConfig.__dataclass_fields__ if name in inputs)


def preset_parameters(pipeline: base_component.BaseComponent, preset: str) -> dict[str, Any]:
    """The pipeline parameters a preset sets, in the run form's types (switches as on/off)."""
    if preset not in PRESETS:
        raise invalid("preset", preset, f"one of {', '.join(PRESETS)}")
    values = preset_values(preset)
    return {
        name: ("on" if values[name] else "off") if isinstance(values[name], bool) else values[name]
        for name in train_parameter_names(pipeline)
    }


def validate_parameters(
    pipeline: base_component.BaseComponent, parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """Checks every parameter as the components will when they start.

    Args:
        pipeline: The pipeline the parameters are for.
        parameters: Values chosen by the user; the others take their defaults.

    Returns:
        All parameters, defaults filled in.

    Raises:
        UserInputError: Naming the first parameter with an unacceptable value.
    """
    defaults = pipeline_defaults(pipeline)
    for name in parameters:
        if name not in defaults:
            raise invalid("parameter", name, f"one of {', '.join(sorted(defaults))}")
    values = {**defaults, **parameters}
    parse_mirrors(values["mirror"], ())
    checksum_table(values["expected_md5"])
    TrainConfig(**{name: values[name] for name in train_parameter_names(pipeline)})
    # The namespace is only known in the pod; any valid name stands in for it here.
    root = parse_logs_root(values["tensorboard_logs_root"], namespace="namespace")
    if root.scheme == "s3":
        parse_http_endpoint(values["s3_endpoint"], "s3_endpoint")
    check_secret_name(values["s3_credentials_secret"], "s3_credentials_secret")
    parse_base_url(values["kubeflow_base_url"])
    check_node_selector(values["node_selector"])
    check_tolerations(values["tolerations"])
    return values
