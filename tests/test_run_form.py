"""One declaration per run parameter: the signatures, the CLI and the README derive from it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import shutil
from typing import Annotated, Literal

import pydantic
import pytest

from kfp_lightning.components.common.errors import UserInputError
from kfp_lightning.components.common.kubernetes_syntax import check_secret_name
from kfp_lightning.components.common.run_form import (
    COMPONENT,
    PIPELINE,
    Switch,
    checked_by,
    declared_parameters,
    from_run_form,
    parameters_of,
    run_config,
    run_parameter,
)
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.common.training_pod import GPU_TOLERATION, SchedulingConfig
from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.download_mnist.download import MNIST_MD5, DownloadConfig
from kfp_lightning.components.launch_tensorboard.component import launch_tensorboard
from kfp_lightning.components.train_mnist.component import train_mnist
from kfp_lightning.components.train_on_nodes.component import train_on_nodes
from kfp_lightning.pipelines.cli import build_parser
from kfp_lightning.pipelines.mnist import RUN_PARAMETERS, mnist_pipeline
from scripts import generate
from scripts.generate import END, PARAMETERS, SIGNATURES, START, Signature, written
from tests.conftest import REPO

KFP_TYPES = {str: "String", int: "Integer", float: "Float", dict: "Dict", list: "List"}
COMPONENTS = {
    c.python_func.__name__: c
    for c in (download_mnist, train_mnist, launch_tensorboard, train_on_nodes)
}


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


EXAMPLE = f'''"""An example."""


def example(
    data: str,
    {START}
    removed: int = 1,
    {END}
):
    """Collects its parameters.

    Args:
        data: A fixed parameter.
        removed: A run parameter no longer declared.
        result: Output. What comes back.
    """
    return dict(locals())
'''


def _signature(function: str) -> tuple[list[tuple[str, str, object]], str]:
    tree = ast.parse(function)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
    arguments = [
        (a.arg, ast.unparse(a.annotation), d and ast.literal_eval(d))
        for a, d in zip(node.args.args, defaults, strict=True)
    ]
    return arguments, ast.get_docstring(node)


def test_the_generator_writes_each_declared_field_into_the_signature():
    signature = Signature("example.py", "example", (_Example,))
    text = written(signature, EXAMPLE)
    arguments, doc = _signature(text)
    assert arguments == [
        ("data", "str", None),
        ("count", "int", 3),
        ("enabled", "str", "off"),  # the run form's switch
        ("tuning", "float", 0.5),
    ]
    # Declared entries go before the outputs, each with its field's docstring; the entry of a
    # parameter no longer declared goes with it.
    assert doc.index("count: How many | of them.") < doc.index("result: Output.")
    assert "enabled: on or off." in doc
    assert "removed" not in text
    assert "internal" not in text
    assert written(signature, text) == text  # a fixed point: --check passes after a rewrite
    pipeline = Signature("example.py", "example", (_Example,), scopes=(PIPELINE,))
    assert [a for a, _, _ in _signature(written(pipeline, text))[0]] == ["data", "count", "enabled"]


def test_a_function_without_the_markers_is_refused():
    signature = Signature("example.py", "example", (_Example,))
    with pytest.raises(ValueError, match="no example with # run parameters"):
        written(signature, EXAMPLE.replace(START, "# hand-written"))


def test_a_field_without_a_docstring_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        count: int = run_parameter(3)

    with pytest.raises(TypeError, match="needs a docstring"):
        declared_parameters(Undocumented)


@run_config
class _Checked:
    """A tiny declaration with rules."""

    count: Annotated[int, pydantic.Field(ge=1, description="an integer >= 1")] = run_parameter(3)
    """How many."""
    speed: Literal["fast", "slow"] = run_parameter("fast")
    """fast or slow."""
    secret: Annotated[str, checked_by(check_secret_name)] = run_parameter("keys")
    """A Secret's name."""
    enabled: Switch = run_parameter(False, form="switch")
    """on or off."""
    label: str = run_parameter("x")
    """Any text."""


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0,), {}, "invalid count=0: expected an integer >= 1"),  # positional
        ((), {"count": "0"}, "invalid count='0': expected an integer >= 1"),  # as given
        ((), {"speed": "slowest"}, "invalid speed='slowest': expected one of fast, slow"),
        ((), {"secret": "Not A Name"}, "invalid secret='Not A Name': expected a Kubernetes"),
        ((), {"enabled": "yes"}, "invalid enabled='yes': expected one of on, off"),
        ((), {"label": {}}, "invalid label={}: expected a valid string"),  # pydantic's words
    ],
)
def test_a_rejected_value_is_one_line_naming_it_as_given(args, kwargs, message):
    with pytest.raises(UserInputError) as raised:
        _Checked(*args, **kwargs)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_a_validated_declaration_is_a_run_form_like_any_other():
    form = {p.name: (p.form_type, p.default) for p in declared_parameters(_Checked)}
    assert form == {
        "count": (int, 3),
        "speed": (str, "fast"),
        "secret": (str, "keys"),
        "enabled": (str, "off"),
        "label": (str, "x"),
    }
    with pytest.raises(pydantic.ValidationError, match="Unexpected keyword"):
        _Checked(counts=3)  # a mistake in the code, not in a value


def test_run_form_values_coerce_as_they_always_have():
    train = from_run_form(
        TrainConfig,
        {
            "gpus": "2",
            "torch_compile": "ON",
            "channels_last": " false ",
            "validation": 5000,
            "augmentation": " shift:2 ",
            "gradient_clip_val": 1.0,
            "epochs": 3.0,
        },
    )
    assert (train.gpus, train.torch_compile, train.channels_last) == (2, True, False)
    assert (train.validation, train.augmentation, train.gradient_clip_val) == (
        "5000",
        "shift:2",
        "1.0",
    )
    assert (train.epochs, type(train.epochs)) == (3, int)
    assert dataclasses.replace(train, gpus="0").gpus == 0
    placement = from_run_form(SchedulingConfig, {"node_selector": {"gpu": "l4"}})
    assert (placement.node_selector, placement.tolerations) == ({"gpu": "l4"}, [GPU_TOLERATION])
    for empty in (None, {}):
        assert DownloadConfig(expected_md5=empty).expected_md5 == MNIST_MD5
    reordered = dict(reversed(MNIST_MD5.items()))
    assert list(DownloadConfig(expected_md5=reordered).expected_md5) == list(MNIST_MD5)
    assert DownloadConfig(" http://a/x  file:///m ").mirror == "http://a/x/,file:///m/"


def test_every_signature_is_written_from_the_declarations():
    stale = [str(path.relative_to(REPO)) for path, _ in generate.drifted()]
    assert not stale, f"{stale} differ from the declarations: run `python scripts/generate.py`"


def test_check_names_a_stale_file_and_a_rewrite_fixes_it(tmp_path, monkeypatch, capsys):
    (signature,) = [s for s in SIGNATURES if s.function == "download_mnist"]
    copy = tmp_path / signature.path
    copy.parent.mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", tmp_path)  # ruff's settings
    copy.write_text((REPO / signature.path).read_text().replace("    mirror: str", "    old: int"))
    readme = tmp_path / "README.md"
    readme.write_text(generate.README.read_text().replace("| `epochs` |", "| `epoch` |"))
    monkeypatch.setattr(generate, "REPO", tmp_path)
    monkeypatch.setattr(generate, "README", readme)
    monkeypatch.setattr(generate, "SIGNATURES", (signature,))
    assert generate.main(["--check"]) == 1
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"stale: {signature.path}",
        "stale: README.md",
    ]
    assert generate.main([]) == 0
    assert copy.read_text() == (REPO / signature.path).read_text()
    assert readme.read_text() == generate.README.read_text()
    assert generate.main(["--check"]) == 0


def test_pipeline_run_form_is_the_declarations():
    inputs = mnist_pipeline.component_spec.inputs
    declared = parameters_of(RUN_PARAMETERS, scopes=[PIPELINE])
    assert list(inputs) == [p.name for p in declared]
    for parameter in declared:
        spec = inputs[parameter.name]
        assert spec.type == KFP_TYPES[parameter.form_type], parameter.name
        assert spec.default == parameter.default, parameter.name
        assert " ".join(spec.description.split()) == parameter.description, parameter.name


@pytest.mark.parametrize("signature", SIGNATURES[:-1], ids=lambda s: s.function)
def test_each_component_takes_its_declared_parameters(signature):
    component = COMPONENTS[signature.function]
    inputs = component.component_spec.inputs
    for parameter in signature.parameters():
        assert inputs[parameter.name].default == parameter.default, parameter.name
        assert inputs[parameter.name].type == KFP_TYPES[parameter.form_type], parameter.name
    # The pipeline passes every one it has: a component never silently keeps a default the
    # run form shows otherwise.
    pipeline_names = set(mnist_pipeline.component_spec.inputs)
    for parameter in signature.parameters():
        assert (parameter.name in pipeline_names) == (parameter.scope == PIPELINE)


@pytest.mark.parametrize("component", COMPONENTS.values(), ids=list(COMPONENTS))
def test_kfp_ships_the_component_as_its_file_says(component):
    function = component.python_func
    assert inspect.getsourcefile(function).endswith(f"{function.__name__}/component.py")
    source = inspect.getsource(function)
    shipped = "\n".join(component.component_spec.implementation.container.command)
    assert source[source.index("def ") :] in shipped
    kinds = {p.kind for p in inspect.signature(function).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds


def test_cli_has_an_option_per_run_parameter_with_its_description():
    help_text = " ".join(build_parser().format_help().split())
    for parameter in parameters_of(RUN_PARAMETERS, scopes=[PIPELINE]):
        assert f"--{parameter.name.replace('_', '-')}" in help_text
        assert parameter.description[:40] in help_text, parameter.name


def test_readme_parameters_table_is_generated_from_the_declarations():
    readme = (REPO / "README.md").read_text()
    table = generate.parameters_table()
    assert generate.with_section(readme, *PARAMETERS, table) == readme, (
        "README.md's parameters table is stale: run `python scripts/generate.py`"
    )
