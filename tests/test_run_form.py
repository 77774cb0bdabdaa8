"""One declaration per run parameter: the signatures, the CLI and the README derive from it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from kfp_lightning.components.common.run_form import (
    COMPONENT,
    PIPELINE,
    declared_parameters,
    parameters_of,
    run_parameter,
    with_run_parameters,
)
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.launch_tensorboard.component import launch_tensorboard
from kfp_lightning.components.train_mnist.component import train_mnist
from kfp_lightning.pipelines.cli import build_parser
from kfp_lightning.pipelines.mnist import RUN_PARAMETERS, mnist_pipeline
from kfp_lightning.pipelines.parameters import with_parameters_table
from tests.conftest import REPO

KFP_TYPES = {str: "String", int: "Integer", float: "Float", dict: "Dict", list: "List"}


@dataclasses.dataclass(frozen=True)
class _Example:
    """A tiny declaration."""

    count: int = run_parameter(3)
    """How many | of them."""
    enabled: bool = run_parameter(False, form="switch")
    """on or off."""
    tuning: float = run_parameter(0.5, scope=COMPONENT)
    """A knob the run form leaves out."""
    internal: str = "x"
    """Not a run parameter."""


def _template(data: str, **parameters) -> dict:
    """Collects its parameters.

    Args:
        data: A fixed parameter.
        result: Output. What comes back.
    """
    return {"data": data, **parameters}


def test_a_template_gets_one_explicit_parameter_per_declared_field():
    function = with_run_parameters(_Example, defaults={"count": 7})(_template)
    signature = inspect.signature(function)
    assert list(signature.parameters) == ["data", "count", "enabled", "tuning"]
    assert signature.parameters["count"].default == 7  # a preset's override
    assert signature.parameters["enabled"].default == "off"  # the run form's switch
    assert signature.parameters["count"].annotation is int
    assert function("d") == {"data": "d", "count": 7, "enabled": "off", "tuning": 0.5}
    source = inspect.getsource(function)  # what KFP ships to the pod
    doc = inspect.getdoc(function)
    # Declared entries go before the outputs, each with its field's docstring.
    assert doc.index("count: How many | of them.") < doc.index("result: Output.")
    assert "enabled: on or off." in doc
    assert "internal" not in source
    pipeline_only = with_run_parameters(_Example, scopes=[PIPELINE])(_template)
    assert list(inspect.signature(pipeline_only).parameters) == ["data", "count", "enabled"]


def test_a_field_without_a_docstring_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        count: int = run_parameter(3)

    with pytest.raises(TypeError, match="needs a docstring"):
        declared_parameters(Undocumented)


def test_pipeline_run_form_is_the_declarations():
    inputs = mnist_pipeline.component_spec.inputs
    declared = parameters_of(RUN_PARAMETERS, scopes=[PIPELINE])
    assert list(inputs) == [p.name for p in declared]
    for parameter in declared:
        spec = inputs[parameter.name]
        assert spec.type == KFP_TYPES[parameter.form_type], parameter.name
        assert spec.default == parameter.default, parameter.name
        assert " ".join(spec.description.split()) == parameter.description, parameter.name


@pytest.mark.parametrize("component", [download_mnist, train_mnist, launch_tensorboard])
def test_each_component_takes_its_declared_parameters(component):
    inputs = component.component_spec.inputs
    run_parameters = component.python_func.run_parameters
    assert run_parameters, component.name
    for parameter in run_parameters:
        assert inputs[parameter.name].default == parameter.default, parameter.name
        assert inputs[parameter.name].type == KFP_TYPES[parameter.form_type], parameter.name
    # The pipeline passes every one it has: a component never silently keeps a default the
    # run form shows otherwise.
    pipeline_names = set(mnist_pipeline.component_spec.inputs)
    for parameter in run_parameters:
        assert (parameter.name in pipeline_names) == (parameter.scope == PIPELINE)


def test_cli_has_an_option_per_run_parameter_with_its_description():
    help_text = " ".join(build_parser().format_help().split())
    for parameter in parameters_of(RUN_PARAMETERS, scopes=[PIPELINE]):
        assert f"--{parameter.name.replace('_', '-')}" in help_text
        assert parameter.description[:40] in help_text, parameter.name


def test_readme_parameters_table_is_generated_from_the_declarations():
    readme = (REPO / "README.md").read_text()
    assert with_parameters_table(readme) == readme, (
        "README.md's parameters table is stale: run `python -m kfp_lightning.pipelines.parameters`"
    )
