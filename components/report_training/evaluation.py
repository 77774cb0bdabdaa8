"""Reads the training step's `evaluation` artifact: its `evaluation.json`, checked by the schema.

The format is components/common/evaluation.py's, shared with the writer. A file that does not
match is one line naming the file, the field and what was expected (the first problem, and how
many more there are), so a broken artifact never becomes a half-drawn page.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.evaluation import FILE_NAME, FORMAT, Evaluation


def _field_path(location: tuple[int | str, ...]) -> str:
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)
    return path.lstrip(".") or "the file"


def describe(error: ValidationError) -> str:
    """The first problem pydantic found, on one line: `<field path>: <what was expected>`."""
    first = error.errors(include_url=False)[0]
    text, value = first["msg"], first["input"]
    if first["type"] != "inconsistent":  # those messages name their field and value already
        text = f"{_field_path(first['loc'])}: {text}"
        # The value of a field, if short (a missing field's input is its parent object).
        if first["loc"] and not isinstance(value, dict | list) and len(repr(value)) < 40:
            text += f", found {value!r}"
    more = error.error_count() - 1
    return " ".join(text.split()) + (f" (and {more} more)" if more else "")


def read_evaluation(evaluation_dir: str | Path) -> Evaluation:
    """Reads the `evaluation.json` of an evaluation artifact.

    Args:
        evaluation_dir: The artifact directory.

    Returns:
        The evaluation.

    Raises:
        UserInputError: The file is missing, is not JSON, or does not match the format; the
            one-line message says which field is wrong.
    """
    path = Path(evaluation_dir) / FILE_NAME
    accepted = f"a directory holding {FILE_NAME} in format {FORMAT}"
    if not path.is_file():
        raise invalid("evaluation", str(evaluation_dir), f"{accepted} (there is no {FILE_NAME})")
    try:
        return Evaluation.model_validate_json(path.read_bytes())
    except ValidationError as err:
        raise invalid("evaluation", str(path), f"{accepted} ({describe(err)})") from None
