"""What a compiled pipeline exposes: no credentials, no run parameter spliced into a shell
command, no NodePort or LoadBalancer anywhere, and credentials kept out of the task logs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kfp_lightning.pipelines.cli import compile_pipeline

REPO = Path(__file__).resolve().parents[1]
# Shapes of secrets that must never be in a compiled pipeline or the shipped manifests.
SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    # A value on the same line as a credential-like key (names of secret keys are fine).
    re.compile(r"(?i)(password|secret_?access_?key|token)[ \t]*[:=][ \t]*['\"]?[A-Za-z0-9/+]{12,}"),
    re.compile(r"minio123"),  # KFP's well-known default MinIO password
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


@pytest.fixture(scope="module")
def compiled_text(tmp_path_factory) -> str:
    return compile_pipeline(tmp_path_factory.mktemp("yaml") / "p.yaml").read_text()


def test_no_credentials_in_the_compiled_pipeline_or_manifests(compiled_text):
    texts = {"pipeline": compiled_text}
    texts |= {str(p): p.read_text() for p in (REPO / "manifests").glob("*.yaml")}
    for name, text in texts.items():
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), (name, pattern.pattern)
    # Credentials reach pods only by reference to the namespace's secret.
    assert "secretAsEnv" in compiled_text
    assert "mlpipeline-minio-artifact" in compiled_text


def test_run_parameters_never_reach_a_shell_command(compiled_text):
    pipeline_doc, _ = yaml.safe_load_all(compiled_text)
    for name, executor in pipeline_doc["deploymentSpec"]["executors"].items():
        command = executor["container"]["command"]
        assert command[:2] == ["sh", "-ec"], name
        # The shell script and the shipped source are constants; every value travels in the
        # executor input (the single "{{$}}" argument), which the script passes as "$@".
        assert "{{$" not in command[2], name
        assert "{{$" not in command[3], name
        assert [a for a in executor["container"]["args"] if "{{$" in a] == ["{{$}}"], name


def test_the_patterns_catch_a_leak():
    leaked = (
        "env:\n- name: AWS_SECRET_ACCESS_KEY\n  value: minio123\npassword: hunter2hunter2hunter2"
    )
    assert sum(bool(p.search(leaked)) for p in SECRET_PATTERNS) == 2


def test_no_node_port_or_load_balancer():
    for path in REPO.glob("manifests/*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "Service":
                assert document["spec"].get("type", "ClusterIP") == "ClusterIP", path
