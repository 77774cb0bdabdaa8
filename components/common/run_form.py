"""Run parameters declared once, as dataclass fields, and read back from a run's values.

A run parameter's name, type, default and description live in one place: a field of a
configuration dataclass (`TrainConfig`, `LiveLogsConfig`, ...), described by the docstring
under it, as litgpt declares its arguments. KFP needs them again as explicit parameters of each
component and of the pipeline: `python -m kfp_lightning.pipelines.signatures` writes those from
these fields (a test fails when they differ), so the YAML reads like hand-written code, and the
Kubeflow run form, the CLI and the README table all come from the same fields. A component
builds, and so validates, the same dataclasses from its arguments with `from_run_form`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import docstring_parser

T = TypeVar("T")

PIPELINE = "pipeline"  # in the run form (the pipeline's parameters) and in component signatures
COMPONENT = "component"  # in component signatures only; the pipeline leaves the default
# Switch values in the run form: the Kubeflow UI treats a `false` default as missing and
# refuses to start the run (frontend/src/components/NewRunParametersV2.tsx), so on/off.
ON, OFF = "on", "off"
_FORM_TYPES = (str, int, float, dict, list)
_BY_NAME = {kind.__name__: kind for kind in _FORM_TYPES}


def run_parameter(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    form: type | None = None,
    scope: str = PIPELINE,
) -> Any:
    """Declares a dataclass field as a run parameter.

    Args:
        default: The default, of the field's Python type.
        default_factory: For a dict or list default.
        form: The type the run form uses, when it differs from the field's: `str` for a
            count the KFP driver must read as a string, or "switch" for a bool shown as on/off.
        scope: `PIPELINE` (run form and components) or `COMPONENT` (components only).

    Returns:
        The `dataclasses.field`.
    """
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        metadata={"run_form": {"form": form, "scope": scope}},
    )


@dataclasses.dataclass(frozen=True)
class RunParameter:
    """One run parameter as KFP sees it.

    Attributes:
        name: The parameter (and field) name.
        form_type: Its run-form type: str, int, float, dict or list.
        default: The default, as the run form shows it.
        description: One paragraph, from the field's docstring.
        scope: `PIPELINE` or `COMPONENT`.
        owner: The dataclass declaring it.
    """

    name: str
    form_type: type
    default: Any
    description: str
    scope: str
    owner: type

    def to_form(self, value: Any) -> Any:
        """A value of the field's type in the run form's type (bool -> on/off, int -> "1")."""
        if isinstance(value, bool) and self.form_type is str:
            return ON if value else OFF
        if self.form_type is str and not isinstance(value, str):
            return str(value)
        return value


def _descriptions(cls: type) -> dict[str, str]:
    docstring = docstring_parser.parse_from_object(cls)
    return {p.arg_name: " ".join((p.description or "").split()) for p in docstring.params}


@functools.cache
def declared_parameters(cls: type) -> tuple[RunParameter, ...]:
    """The run parameters a dataclass declares, in field order.

    Raises:
        TypeError: A run parameter has no docstring, or a type KFP cannot show in a form.
    """
    descriptions = _descriptions(cls)
    declared = []
    for field in dataclasses.fields(cls):
        meta = field.metadata.get("run_form")
        if meta is None:
            continue
        form = meta["form"]
        # The annotation's name, as a module with `from __future__ import annotations` keeps it.
        hint = getattr(field.type, "__name__", field.type)
        form_type = str if form in (str, "switch") else _BY_NAME.get(hint, hint)
        if form_type not in _FORM_TYPES:
            raise TypeError(f"{cls.__name__}.{field.name}: run-form type {form_type!r}")
        if not descriptions.get(field.name):
            raise TypeError(f"{cls.__name__}.{field.name}: a run parameter needs a docstring")
        default = (
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default
        )
        parameter = RunParameter(
            field.name, form_type, default, descriptions[field.name], meta["scope"], cls
        )
        declared.append(dataclasses.replace(parameter, default=parameter.to_form(default)))
    return tuple(declared)


def parameters_of(
    configs: Iterable[type], scopes: Sequence[str] = (PIPELINE, COMPONENT)
) -> list[RunParameter]:
    """The run parameters of several dataclasses in `scopes`, in order, each name once.

    Raises:
        TypeError: Two dataclasses declare the same name.
    """
    seen: dict[str, RunParameter] = {}
    for parameter in itertools.chain.from_iterable(map(declared_parameters, configs)):
        if parameter.name in seen:
            raise TypeError(f"run parameter {parameter.name!r} is declared twice")
        seen[parameter.name] = parameter
    return [p for p in seen.values() if p.scope in scopes]


def from_run_form(cls: type[T], values: Mapping[str, Any]) -> T:
    """Builds (and so validates) `cls` from the run-form values among `values`."""
    names = {p.name for p in declared_parameters(cls)}
    return cls(**{name: value for name, value in values.items() if name in names})
