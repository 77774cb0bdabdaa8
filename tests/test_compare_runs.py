"""`--compare-runs`: one Kubeflow TensorBoard over every run's logs, on a real API server."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from kubernetes import client

from kfp_lightning.components.common.errors import RunError, UserInputError
from kfp_lightning.components.common.kubernetes import Patience
from kfp_lightning.components.launch_tensorboard.objects import (
    PODDEFAULT_API,
    PODDEFAULT_LABEL_PREFIX,
    TENSORBOARD_API,
)
from kfp_lightning.pipelines.compare import ALL_RUNS_NAME, open_runs_tensorboard
from kfp_lightning.pipelines.parameters import validate_parameters
from tests.apiserver.server import KubeAPIServer, ensure_namespace
from tests.conftest import REPO
from tests.test_preflight import put_object_store

pytestmark = pytest.mark.apiserver

NAMESPACE = "team-a"
FAST = Patience(attempts=2, backoff_seconds=0.05, poll_seconds=0.05)


def values(**overrides: object) -> dict:
    return validate_parameters(overrides)


def read(admin: client.ApiClient, resource: tuple[str, str, str, str], name: str) -> dict:
    group, version, plural, _ = resource
    return client.CustomObjectsApi(admin).get_namespaced_custom_object(
        group, version, NAMESPACE, plural, name
    )


def test_one_tensorboard_over_the_whole_root(
    kube_apiserver: KubeAPIServer, apiserver_admin, kubeflow_crds, tmp_path, monkeypatch
):
    ensure_namespace(apiserver_admin, NAMESPACE)
    put_object_store(apiserver_admin)  # what `s3_endpoint=auto` finds, asking the API server
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setenv(
        "KUBECONFIG",
        str(kube_apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)),
    )
    out = io.StringIO()
    link = open_runs_tensorboard(
        values(kubeflow_base_url="https://kubeflow.example.com"), None, 0, out, FAST
    )
    assert link == f"https://kubeflow.example.com/tensorboard/{NAMESPACE}/{ALL_RUNS_NAME}/"
    tensorboard = read(apiserver_admin, TENSORBOARD_API, ALL_RUNS_NAME)
    # The root of every run, the profile's namespace in place of {namespace}.
    assert tensorboard["spec"]["logspath"] == f"s3://mlpipeline/private/{NAMESPACE}/tensorboard"
    labels = tensorboard["metadata"]["labels"]
    (poddefault,) = [
        key.removeprefix(PODDEFAULT_LABEL_PREFIX)
        for key, value in labels.items()
        if key.startswith(PODDEFAULT_LABEL_PREFIX) and value == "true"
    ]
    env = read(apiserver_admin, PODDEFAULT_API, poddefault)["spec"]["env"]
    assert {"name": "S3_ENDPOINT", "value": "http://seaweedfs.kubeflow:8333"} in env
    assert "(created, starting" in out.getvalue()

    # Asked again (another root, say): the same object, brought in line.
    open_runs_tensorboard(values(tensorboard_logs_root="s3://other/logs"), None, 0, out, FAST)
    assert "(replaced, starting" in out.getvalue()
    tensorboard = read(apiserver_admin, TENSORBOARD_API, ALL_RUNS_NAME)
    assert tensorboard["spec"]["logspath"] == "s3://other/logs"


def test_a_user_without_rights_gets_one_line(
    kube_apiserver: KubeAPIServer, apiserver_admin, kubeflow_crds, tmp_path, monkeypatch
):
    ensure_namespace(apiserver_admin, NAMESPACE)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "kc", user="bob", namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    endpoint = {"s3_endpoint": "http://seaweedfs.kubeflow:9000"}
    with pytest.raises(RunError) as raised:
        open_runs_tensorboard(values(**endpoint), None, 0, io.StringIO(), FAST)
    message = str(raised.value)
    assert "\n" not in message
    assert "user may not create or update poddefaults.kubeflow.org" in message
    assert "HTTP 403" in message
    # Through the CLI: one line, exit status 1.
    process = subprocess.run(
        [
            *(sys.executable, str(REPO / "pipelines" / "mnist.py"), "--compare-runs"),
            *("--s3-endpoint", endpoint["s3_endpoint"]),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    assert process.returncode == 1
    (line,) = process.stderr.strip().splitlines()
    assert line.startswith("error: your kubeconfig's user may not create or update")


def test_a_local_root_is_refused_before_any_request():
    with pytest.raises(UserInputError, match="invalid tensorboard_logs_root='/tmp/runs'"):
        open_runs_tensorboard(values(tensorboard_logs_root="/tmp/runs"), None, 0, io.StringIO())


def test_auto_unreadable_by_the_user_is_one_line_naming_the_parameter(
    kube_apiserver: KubeAPIServer, apiserver_admin, kubeflow_crds, tmp_path, monkeypatch
):
    ensure_namespace(apiserver_admin, NAMESPACE)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "kc", user="bob", namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(UserInputError) as raised:
        open_runs_tensorboard(values(), None, 0, io.StringIO(), FAST)
    message = str(raised.value)
    assert message.startswith("invalid s3_endpoint='auto': expected http(s)://host[:port]")
    assert "not readable with these credentials (HTTP 403" in message
