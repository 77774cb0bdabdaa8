"""Run parameters declared once, as dataclass fields, and read back from a run's values.

A run parameter's name, type, default and description live in one place: a field of a
configuration dataclass (`TrainConfig`, `LiveLogsConfig`, ...), described by the docstring
under it, as litgpt declares its arguments. KFP needs them again as explicit parameters of each
component and of the pipeline: `python scripts/generate.py` writes those from
these fields (a test fails when they differ), so the YAML reads like hand-written code, and the
Kubeflow run form, the CLI and the README table all come from the same fields. A component
builds, and so validates, the same dataclasses from its arguments with `from_run_form`:
`run_config` makes them pydantic dataclasses, whose fields declare their rules (pydantic
`Field` constraints, `Literal` choices, a validator where a rule is not declarative), and turns
pydantic's `ValidationError` into the project's one-line `UserInputError`. URIs and Kubernetes
names keep the project's parsers (`logs_location.py`, `kubernetes_syntax.py`), called
from validators: pydantic's URL types rewrite what they accept (a trailing "/", a lower-case
host) and know neither S3's nor Kubernetes' naming rules.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

import docstring_parser
import pydantic
from pydantic import BeforeValidator, Field

from kfp_lightning.components.common.errors import UserInputError, invalid

T = TypeVar("T")

PIPELINE = "pipeline"  # in the run form (the pipeline's parameters) and in component signatures
COMPONENT = "component"  # in component signatures only; the pipeline leaves the default
# Switch values in the run form: the Kubeflow UI treats a `false` default as missing and
# refuses to start the run (frontend/src/components/NewRunParametersV2.tsx), so on/off.
ON, OFF = "on", "off"
_SWITCHES = {ON: True, OFF: False, "true": True, "false": False}
_FORM_TYPES = (str, int, float, dict, list)
# Numbers typed into a text field are its text (validation=5000, gradient_clip_val=1.0); every
# default is checked too; an unknown keyword is a mistake, not something to drop.
_CONFIG = pydantic.ConfigDict(coerce_numbers_to_str=True, validate_default=True, extra="forbid")


def _switch(value: object) -> object:
    return _SWITCHES.get(value.strip().lower(), value) if isinstance(value, str) else value


Switch = Annotated[
    bool,
    Field(strict=True, description="one of on, off (or true, false)"),
    BeforeValidator(_switch),
]
"""An on/off run parameter: "on", "off", "true", "false" (any case) or a bool."""


def checked_by(check: Callable[[Any, str], Any]) -> BeforeValidator:
    """A validator (for `Annotated`) that hands the value and the field's name to `check`.

    Args:
        check: One of the project's checks, e.g. `check_secret_name`: returns the value to
            keep, or raises `UserInputError` with its own one-line message.
    """
    return BeforeValidator(lambda value, info: check(value, info.field_name))


def run_config(cls: type[T]) -> type[T]:
    """Makes `cls` a frozen pydantic dataclass whose bad values raise `UserInputError`.

    The one place a `ValidationError` becomes the project's message, `invalid <name>=<value>:
    expected <accepted>`, naming the value as it was given. `<accepted>` is the message of a
    `UserInputError` a validator raised, else the field's `Literal` choices, else its
    `Field(description=...)`, else pydantic's words ("a valid string").
    """
    cls = pydantic.dataclasses.dataclass(frozen=True, config=_CONFIG)(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    validate = cls.__init__

    @functools.wraps(validate)
    def init(self: T, *args: Any, **kwargs: Any) -> None:
        try:
            validate(self, *args, **kwargs)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            cause = first.get("ctx", {}).get("error")
            if isinstance(cause, UserInputError):
                raise cause from None
            loc = first["loc"][0] if first["loc"] else ""
            name = names[loc] if isinstance(loc, int) and loc < len(names) else loc
            field = cls.__pydantic_fields__.get(name)
            if field is None:
                raise
            given = {**dict(zip(names, args, strict=False)), **kwargs}
            accepted = field.description or first["msg"].removeprefix("Input should be ")
            if typing.get_origin(field.annotation) is Literal:
                accepted = f"one of {', '.join(typing.get_args(field.annotation))}"
            raise invalid(name, given.get(name, first["input"]), accepted) from None

    cls.__init__ = init
    return cls


def run_parameter(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    form: type | str | None = None,
    scope: str = PIPELINE,
) -> Any:
    """Declares a dataclass field as a run parameter.

    Args:
        default: The default, of the field's Python type.
        default_factory: For a dict or list default.
        form: The type the run form uses, when it differs from the field's: `str` for a
            count the KFP driver must read as a string, or "switch" for a bool shown as on/off
            (a `Switch` field).
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
        if self.form_type is not str or isinstance(value, str):
            return value
        return (ON if value else OFF) if isinstance(value, bool) else str(value)


@functools.cache
def declared_parameters(cls: type) -> tuple[RunParameter, ...]:
    """The run parameters a dataclass declares, in field order.

    Raises:
        TypeError: A run parameter has no docstring, or a type KFP cannot show in a form.
    """
    docstring = docstring_parser.parse_from_object(cls)
    descriptions = {p.arg_name: " ".join((p.description or "").split()) for p in docstring.params}
    hints = typing.get_type_hints(cls)  # without `Annotated`'s rules
    declared = []
    for field in dataclasses.fields(cls):
        meta = field.metadata.get("run_form")
        if meta is None:
            continue
        hint, origin = hints[field.name], typing.get_origin(hints[field.name])
        # The form type of a `Literal` is its choices' type; of `dict[str, str]`, dict.
        hint = type(typing.get_args(hint)[0]) if origin is Literal else origin or hint
        form_type = str if meta["form"] in (str, "switch") else hint
        if form_type not in _FORM_TYPES:
            raise TypeError(f"{cls.__name__}.{field.name}: run-form type {form_type!r}")
        if not descriptions.get(field.name):
            raise TypeError(f"{cls.__name__}.{field.name}: a run parameter needs a docstring")
        factory = field.default_factory
        default = field.default if factory is dataclasses.MISSING else factory()
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
