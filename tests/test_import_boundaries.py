"""Component folders are boundaries: each imports only `components/common/` and itself.

A component's folder is what its image runs and what its README describes; an import from a
sibling folder would tie two components' code together unseen, and one from `pipelines/` would
make a component depend on the pipeline that uses it. Every import counts, including those
inside functions (the ones that run only in the pod).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = "kfp_lightning"
COMMON = "common"


def _module_name(root: Path, path: Path) -> str:
    # components/ and pipelines/ install as kfp_lightning.components and kfp_lightning.pipelines.
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every import in `path`, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if len(base.split(".")) >= 3:
                yield node.lineno, base
            else:  # `from kfp_lightning.components import images`: the name is the module
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"


def _unit(module: str) -> str | None:
    """The component folder (or top-level module) below kfp_lightning.components, else None."""
    parts = module.split(".")
    if parts[:2] != [PACKAGE, "components"] or len(parts) < 3:
        return None
    return parts[2]


def boundary_violations(root: Path) -> tuple[list[str], dict[str, set[str]]]:
    """The imports that break the rule, as `path:line: ...`, and the folders' import graph.

    Args:
        root: The repository root, holding components/ and pipelines/.
    """
    violations: list[str] = []
    graph: dict[str, set[str]] = {}
    for top in ("components", "pipelines"):
        for path in sorted((root / top).rglob("*.py")):
            module = _module_name(root, path)
            own = _unit(module)
            where = path.relative_to(root).as_posix()
            for line, target in sorted(set(_imports(path, module))):
                if top == "pipelines" or not target.startswith(PACKAGE + "."):
                    continue
                if target.split(".")[1] == "pipelines":
                    violations.append(
                        f"{where}:{line}: imports {target} (a component never imports pipelines/)"
                    )
                    continue
                unit = _unit(target)
                if unit is None or unit == own:
                    continue
                graph.setdefault(own or "", set()).add(unit)
                if unit != COMMON or own is None:
                    allowed = f"{own}/ and {COMMON}/" if own != COMMON else f"{COMMON}/"
                    violations.append(f"{where}:{line}: imports {target} (outside {allowed})")
    return violations, graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle of `graph` found by a depth-first search, each as the folders along it."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            visit(target, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def test_component_folders_import_only_common_and_themselves() -> None:
    violations, _ = boundary_violations(REPO)
    assert not violations, "imports across component boundaries:\n" + "\n".join(violations)


def test_component_folders_have_no_import_cycles() -> None:
    _, graph = boundary_violations(REPO)
    assert not cycles(graph), cycles(graph)


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A repository whose every kind of import the rule must catch breaks it once."""
    _write(tmp_path, "components/common/errors.py", "")
    _write(tmp_path, "components/common/dataset.py", "from . import errors\n")
    _write(tmp_path, "components/helpers.py", "")
    _write(
        tmp_path,
        "components/train/train.py",
        "from kfp_lightning.components.common import errors\n"
        "from . import model\n"
        "def later():\n"
        "    from kfp_lightning.components.download.fetch import load\n",
    )
    _write(tmp_path, "components/train/model.py", "from kfp_lightning.components import helpers\n")
    _write(
        tmp_path,
        "components/download/fetch.py",
        "import kfp_lightning.pipelines.mnist\nfrom ..train import model\n",
    )
    _write(tmp_path, "pipelines/mnist.py", "from kfp_lightning.components.train import train\n")
    return tmp_path


def test_the_rule_catches_every_kind_of_import(tree: Path) -> None:
    violations, graph = boundary_violations(tree)
    assert [v.split(" (")[0] for v in violations] == [
        "components/download/fetch.py:1: imports kfp_lightning.pipelines.mnist",
        "components/download/fetch.py:2: imports kfp_lightning.components.train",
        "components/train/model.py:1: imports kfp_lightning.components.helpers",
        "components/train/train.py:4: imports kfp_lightning.components.download.fetch",
    ]
    assert cycles(graph) == [["download", "train", "download"]]
