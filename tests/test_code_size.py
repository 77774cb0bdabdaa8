"""The product's size in lines of code, held under a ceiling that only comes down.

Lines of code are the lines that hold a Python token other than a comment: blank lines,
comments and docstrings (module, class and function) do not count, so a comment that says why
never costs anything. The product is the Python under `components/` and `pipelines/`.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("components", "pipelines")
# Lower it whenever the product shrinks; raising it needs a reason in the commit that does.
CEILING = 6386
NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}


def code_lines(source: str) -> int:
    """Lines of `source` holding code, neither comment, docstring nor blank."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in NOT_CODE:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def product_sizes() -> dict[str, int]:
    """Lines of code of each product file, by path relative to the project root."""
    return {
        str(path.relative_to(ROOT)): code_lines(path.read_text())
        for folder in PRODUCT
        for path in sorted((ROOT / folder).rglob("*.py"))
    }


def test_counts_code_only() -> None:
    source = '''"""Module docstring,
over two lines."""

# a comment
import os  # a trailing comment


def f(x):
    """One line."""
    return (
        x + 1
    )


class C:
    """Doc."""

    y = """not a docstring"""
'''
    # import, def, return ( / x + 1 / ), class, y = ...
    assert code_lines(source) == 7


def test_product_stays_under_its_ceiling() -> None:
    sizes = product_sizes()
    total = sum(sizes.values())
    largest = ", ".join(f"{p} {n}" for p, n in sorted(sizes.items(), key=lambda i: -i[1])[:5])
    assert total <= CEILING, (
        f"components/ and pipelines/ hold {total} lines of code, over the ceiling of {CEILING} "
        f"(largest: {largest}): remove duplication before adding code"
    )
