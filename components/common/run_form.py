"""Run parameters declared once, as dataclass fields, and every KFP signature derived from them.

A run parameter's name, type, default and description live in one place: a field of a
configuration dataclass (`TrainConfig`, `LiveLogsConfig`, ...), described by the docstring
under it, as litgpt declares its arguments. KFP needs them again as explicit parameters of
each component and of the pipeline, and ships a lightweight component's source as text, so
`with_run_parameters` writes that text: it turns a template function whose signature ends in
`**parameters` into one with an explicit, typed, defaulted and documented parameter per field,
whose body starts by collecting them into the `parameters` dict. The generated source is what
KFP compiles into the YAML and runs in the pod, so the YAML reads like hand-written code, and
the Kubeflow run form, the CLI and the README table all come from the same fields.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import linecache
import textwrap
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
_ABSENT = object()


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
    hints = inspect.get_annotations(cls, eval_str=True)
    declared = []
    for field in dataclasses.fields(cls):
        meta = field.metadata.get("run_form")
        if meta is None:
            continue
        form = meta["form"]
        form_type = str if form in (str, "switch") else hints[field.name]
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
    configs: Iterable[type],
    scopes: Sequence[str] = (PIPELINE, COMPONENT),
    exclude: Iterable[str] = (),
) -> list[RunParameter]:
    """The run parameters of several dataclasses, in order, each name once.

    Raises:
        TypeError: Two dataclasses declare the same name.
    """
    seen: dict[str, RunParameter] = {}
    for parameter in itertools.chain.from_iterable(map(declared_parameters, configs)):
        if parameter.name in seen:
            raise TypeError(f"run parameter {parameter.name!r} is declared twice")
        seen[parameter.name] = parameter
    skip = set(exclude)
    return [p for p in seen.values() if p.scope in scopes and p.name not in skip]


def from_run_form(cls: type[T], values: Mapping[str, Any]) -> T:
    """Builds (and so validates) `cls` from the run-form values among `values`."""
    names = {p.name for p in declared_parameters(cls)}
    return cls(**{name: value for name, value in values.items() if name in names})


def _argument(parameter: RunParameter, defaults: Mapping[str, Any]) -> str:
    default = defaults.get(parameter.name, parameter.default)
    return f"{parameter.name}: {parameter.form_type.__name__} = {default!r}"


def _doc_entry(parameter: RunParameter, indent: str) -> str:
    # 96: the docstring is indented once more inside the function, to 100 columns in all.
    return textwrap.fill(
        f"{parameter.name}: {parameter.description}",
        width=96,
        initial_indent=indent,
        subsequent_indent=indent + "    ",
        break_on_hyphens=False,
    )


def generate_source(
    template: Callable[..., Any],
    parameters: Sequence[RunParameter],
    defaults: Mapping[str, Any] | None = None,
) -> str:
    """The source of `template` with `**parameters` spelled out (see the module docstring).

    The template's docstring must have an `Args:` section; the parameters' entries are added
    at its end, before any entry whose description starts with "Output.".

    Args:
        template: A function whose last parameter is `**parameters`.
        parameters: The run parameters to spell out, in order.
        defaults: Run-form defaults that replace the declared ones (a preset's values).

    Returns:
        Python source defining a function of the same name.
    """
    source = textwrap.dedent(inspect.getsource(template))
    tree = ast.parse(source)
    function = tree.body[0]
    if not isinstance(function, ast.FunctionDef) or function.args.kwarg is None:
        raise TypeError(f"{template.__name__}: a template function ends with **parameters")
    lines = source.splitlines()
    fixed = [ast.get_source_segment(source, arg) for arg in function.args.args]
    fixed_defaults = [ast.get_source_segment(source, d) for d in function.args.defaults]
    fixed = [
        f"{arg} = {default}" if default is not None else arg
        for arg, default in itertools.zip_longest(
            fixed, [None] * (len(fixed) - len(fixed_defaults)) + fixed_defaults
        )
    ]
    generated = [_argument(p, defaults or {}) for p in parameters]
    returns = f" -> {ast.get_source_segment(source, function.returns)}" if function.returns else ""
    signature = "\n".join(f"    {arg}," for arg in fixed + generated)

    docstring = inspect.getdoc(template) or ""
    doc_lines = docstring.splitlines()
    entries = [_doc_entry(p, "    ") for p in parameters]
    args_at = doc_lines.index("Args:")
    end = args_at + 1
    while end < len(doc_lines) and (doc_lines[end].startswith(" ") or not doc_lines[end]):
        if doc_lines[end].strip().split(": ", 1)[-1].startswith("Output."):
            break
        end += 1
    while doc_lines[end - 1] == "":
        end -= 1
    doc_lines[end:end] = entries
    doc = textwrap.indent("\n".join(doc_lines), "    ").strip()

    body_start = function.body[1].lineno if len(function.body) > 1 else None
    body = "\n".join(lines[body_start - 1 :]) if body_start else "    pass"
    collect = ", ".join(f"{p.name}={p.name}" for p in parameters)
    return (
        f"def {function.name}(\n{signature}\n){returns}:\n"
        f'    """{doc}\n    """\n'
        f"    {function.args.kwarg.arg} = dict({collect})\n"
        f"{body}\n"
    )


def with_run_parameters(
    *configs: type,
    scopes: Sequence[str] = (PIPELINE, COMPONENT),
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    namespace: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: the template with the run parameters of `configs` spelled out.

    Args:
        *configs: Dataclasses declaring run parameters.
        scopes: Which parameters: `PIPELINE` and `COMPONENT` for a component, only
            `PIPELINE` for the pipeline (the run form).
        exclude: Names to leave out (parameters a component does not use).
        defaults: Run-form defaults that replace the declared ones.
        namespace: Extra names the generated function sees (a template defined inside
            another function loses its closure).

    Returns:
        The decorator. The function it returns has the template's globals (a copy of them
        plus `namespace`, when given), and its source is registered with `linecache`, so
        `inspect.getsource` (which KFP uses to ship it) returns the generated text.
    """

    def decorate(template: Callable[..., T]) -> Callable[..., T]:
        parameters = parameters_of(configs, scopes, exclude)
        source = generate_source(template, parameters, defaults)
        filename = f"<run parameters of {template.__module__}.{template.__qualname__}>"
        # mtime None: linecache.checkcache keeps an entry that has no file on disk.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        # The module's own globals, so the function sees what the template saw; a copy only
        # when extra names are added.
        scope = {**template.__globals__, **namespace} if namespace else template.__globals__
        before = scope.get(template.__name__, _ABSENT)
        # dont_inherit: this module's `from __future__ import annotations` must not turn the
        # generated annotations into strings, which KFP does not resolve.
        exec(compile(source, filename, "exec", dont_inherit=True), scope)
        function = scope[template.__name__]
        # Defining it bound the name in those globals: put back what was there.
        if before is _ABSENT:
            del scope[template.__name__]
        else:
            scope[template.__name__] = before
        function.run_parameters = parameters
        return function

    return decorate
