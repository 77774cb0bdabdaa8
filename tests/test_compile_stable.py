"""The same source compiles to the same bytes, in every process: GitOps diffs and caches by
content see a change only where there is one."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from kfp_lightning.pipelines.cli import stable_header
from tests.conftest import REPO

UNSORTED = (
    "# PIPELINE DEFINITION\n"
    "#    expected_md5: dict [Default: {'b': '2', 'a': '1'}]\n"
    "#    tolerations: list [Default: [{'operator': 'Exists', 'key': 'k'}]]\n"
    "#    mirror: str [Default: '{not a dict}']\n"
    "components:\n"
    "  x: {b: 1, a: 2}\n"
)


def test_the_header_defaults_are_sorted_and_nothing_else_changes() -> None:
    stable = stable_header(UNSORTED)
    assert "#    expected_md5: dict [Default: {'a': '1', 'b': '2'}]" in stable
    assert "#    tolerations: list [Default: [{'key': 'k', 'operator': 'Exists'}]]" in stable
    # A string default is left as written, and so is the YAML body.
    assert "#    mirror: str [Default: '{not a dict}']" in stable
    assert stable.endswith("components:\n  x: {b: 1, a: 2}\n")
    assert stable_header(stable) == stable


@pytest.mark.parametrize(
    "options",
    [(), ("--nodes", "2"), ("--logs-pvc", "tb-logs", "--preset", "fast")],
    ids=["default", "nodes", "pvc-fast"],
)
def test_compiles_in_separate_processes_are_byte_identical(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    digests = set()
    for seed in ("0", "1", "2"):
        output = tmp_path / f"pipeline-{seed}.yaml"
        subprocess.run(
            [sys.executable, "pipelines/mnist.py", "--compile", "--output", str(output), *options],
            cwd=REPO,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
            timeout=120,
        )
        digests.add(hashlib.sha256(output.read_bytes()).hexdigest())
    assert len(digests) == 1
