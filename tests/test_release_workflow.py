"""The release workflow (.github/workflows/release.yml), checked without GitHub.

jactionlint checks it (actionlint's checks, the scripts through shellcheck, and the security
rules: pinned actions, token permissions, credentials). Its shell steps that decide what is
published run here as GitHub runs them (`bash -e -o pipefail`, the same environment variables),
so the tag check and the registry it logs in to are tested, not just read: both must come from
the package (pyproject.toml's version, components/common/images.py's registry), never be written in
the workflow.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from kfp_lightning.components.common import images

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
BIN = Path(sys.executable).parent


def _workflow() -> dict:
    # PyYAML reads the key `on` as the boolean True (YAML 1.1); GitHub reads it as "on".
    return yaml.load(WORKFLOW.read_text(), Loader=yaml.BaseLoader)


def _step(job: str, step_id: str) -> dict:
    (step,) = [s for s in _workflow()["jobs"][job]["steps"] if s.get("id") == step_id]
    return step


def _run_step(
    job: str, step_id: str, tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Runs a `run:` step with bash as GitHub does; returns the process and its outputs."""
    outputs = tmp_path / "github_output"
    outputs.write_text("")
    script = tmp_path / "step.sh"
    script.write_text(_step(job, step_id)["run"])
    environment = {
        key: value
        for key, value in os.environ.items()
        if key != images.REGISTRY_ENV and not key.startswith("GITHUB_")
    }
    # python and python3 are this environment's, where the package is installed.
    environment["PATH"] = f"{BIN}{os.pathsep}{environment['PATH']}"
    environment.update(GITHUB_OUTPUT=str(outputs), **env)
    process = subprocess.run(
        ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", str(script)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
    )
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    return process, values


def test_workflow_passes_jactionlint_and_shellcheck():
    linter = shutil.which("jactionlint", path=str(BIN)) or shutil.which("jactionlint")
    assert linter, "jactionlint is missing: install the test extra (make setup)"
    assert shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    result = subprocess.run(
        [linter, "--no-color", "--no-online", str(WORKFLOW)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The run: scripts were checked, not skipped for want of shellcheck.
    assert "shellcheck" not in result.stdout + result.stderr


def test_runs_on_version_tags_with_least_permissions():
    workflow = _workflow()
    assert workflow["on"] == {"push": {"tags": ["v*"]}}
    assert workflow["permissions"] == {}
    permissions = {name: job["permissions"] for name, job in workflow["jobs"].items()}
    assert permissions == {
        "version": {"contents": "read"},
        "images": {"contents": "read", "packages": "write"},
        "dist": {"contents": "read"},
        "release": {"contents": "write"},
    }
    # The release (the only job that may write to the repository) comes after every push.
    assert set(workflow["jobs"]["release"]["needs"]) == {"images", "dist"}
    assert workflow["jobs"]["images"]["needs"] == "version"


def test_every_action_is_pinned_to_a_commit_with_its_version():
    uses = re.findall(r"^\s*(?:- )?uses: (\S+)(.*)$", WORKFLOW.read_text(), re.MULTILINE)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r" # v\d+\.\d+\.\d+", comment), f"{action}: no version comment"


@pytest.mark.parametrize("tag", [f"v{VERSION}", f"v{VERSION}.1", VERSION, f"v{VERSION}-rc1"])
def test_tag_must_equal_the_package_version(tmp_path, tag):
    process, outputs = _run_step("version", "version", tmp_path, GITHUB_REF_NAME=tag)
    if tag == f"v{VERSION}":
        assert process.returncode == 0, process.stderr
        assert outputs == {"version": VERSION}
    else:
        assert process.returncode == 1
        assert process.stdout.strip() == (
            f"::error::tag {tag} does not match the package version {VERSION} "
            f"(pyproject.toml): a release of it is tagged v{VERSION}"
        )
        assert outputs == {}


def test_registry_comes_from_components_images(tmp_path):
    owner = images.DEFAULT_REGISTRY.split("/")[1]
    process, outputs = _run_step(
        "images", "registry", tmp_path, GITHUB_REPOSITORY_OWNER=owner.upper()
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert outputs == {
        "registry": images.DEFAULT_REGISTRY,
        "host": images.DEFAULT_REGISTRY.split("/")[0],
    }
    # The GITHUB_TOKEN of another owner's repository cannot push there: caught before the build.
    process, outputs = _run_step(
        "images", "registry", tmp_path, GITHUB_REPOSITORY_OWNER="someone-else"
    )
    assert process.returncode == 1
    assert f"not to {images.DEFAULT_REGISTRY}" in process.stdout
    assert outputs == {}


def test_workflow_writes_no_registry_or_version_of_its_own():
    text = WORKFLOW.read_text()
    host = images.DEFAULT_REGISTRY.split("/")[0]
    assert images.DEFAULT_REGISTRY not in text
    assert VERSION not in text
    # The one mention of the registry's host is the check for ghcr.io's token rule.
    assert text.count(host) == text.count(f"$host == {host}") == 1
    assert images.REGISTRY_ENV not in text
    builds = [
        step["run"]
        for step in _workflow()["jobs"]["images"]["steps"]
        if "images/build.py" in step.get("run", "")
    ]
    assert len(builds) == 1
    assert "--push" in builds[0]
    assert "--image-registry" not in builds[0]
    assert "--image " not in builds[0]
