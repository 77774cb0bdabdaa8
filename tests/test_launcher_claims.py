"""A pvc:// logs root: the launcher reads the claim's access modes on a real kube-apiserver.

The TensorBoard pod is created while the download runs, before training mounts the claim; a
claim that attaches to one node at a time (ReadWriteOnce, ReadWriteOncePod) could be taken to
the TensorBoard's node first, and training would wait on a Multi-Attach error until its
deadline. So such a claim gets no TensorBoard, and the note says why and what to do. The claims
here are real PersistentVolumeClaim objects, pending (only `spec.accessModes`) or bound (the
volume's modes in `status.accessModes`, set through the status subresource as the PV controller
would).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from kubernetes import client

from kfp_lightning.components.launch_tensorboard.launcher import shares_across_nodes
from kfp_lightning.components.launch_tensorboard.objects import TENSORBOARD_API
from tests.apiserver.server import KubeAPIServer, apply_documents, ensure_namespace
from tests.test_launcher_apiserver import (
    NAME,
    RUN_ID,
    add_claim,
    as_service_account,
    launch,
    listed,
    rbac_documents,
)

ROOT = "pvc://tb-logs/runs"


@pytest.mark.parametrize(
    ("modes", "shared"),
    [
        (["ReadWriteMany"], True),
        (["ReadOnlyMany"], True),
        (["ReadWriteOnce", "ReadOnlyMany"], True),
        (["ReadWriteOnce"], False),
        (["ReadWriteOncePod"], False),  # Kubernetes 1.22+; the v1.20 server refuses it
        ([], False),
    ],
)
def test_shares_across_nodes(modes: list[str], shared: bool) -> None:
    assert shares_across_nodes(modes) is shared
    assert shares_across_nodes(tuple(modes)) is shared


@pytest.fixture
def profile(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    kubeflow_crds: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """A namespace with the shipped Role, the launcher configured as its service account."""
    namespace = f"claims-{secrets.token_hex(4)}"
    ensure_namespace(apiserver_admin, namespace)
    apply_documents(apiserver_admin, rbac_documents(), namespace)
    as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)
    return namespace


@pytest.mark.apiserver
@pytest.mark.parametrize(
    ("requested", "bound", "shown"),
    [
        (["ReadWriteOnce"], None, "ReadWriteOnce"),  # pending: what it asks for
        (["ReadWriteOnce"], ["ReadWriteOnce"], "ReadWriteOnce"),
        (["ReadWriteMany"], ["ReadWriteOnce"], "ReadWriteOnce"),  # the volume's modes win
    ],
    ids=["rwo-pending", "rwo-bound", "bound-to-rwo-volume"],
)
def test_a_single_node_claim_gets_no_tensorboard_and_a_note(
    apiserver_admin: client.ApiClient,
    profile: str,
    tmp_path: Path,
    requested: list[str],
    bound: list[str] | None,
    shown: str,
) -> None:
    add_claim(apiserver_admin, profile, "tb-logs", requested, bound)

    result, markdown = launch(tmp_path / "out", tensorboard_logs_root=ROOT)

    assert (result.state, result.detail) == ("single-node-claim", shown)
    assert listed(apiserver_admin, TENSORBOARD_API, profile) == []
    assert f"the claim `tb-logs` in namespace `{profile}`, whose access mode is {shown}" in (
        markdown
    )
    assert "Multi-Attach" in markdown
    assert "a claim whose access mode is ReadWriteMany" in markdown
    assert "an s3:// `tensorboard_logs_root`" in markdown
    assert "After training has ended" in markdown
    assert f"kubectl -n {profile} port-forward service/kfp-lightning-tensorboard" in markdown
    assert (tmp_path / "out" / "ui.json").exists()  # "Start Tensorboard" after training


@pytest.mark.apiserver
@pytest.mark.parametrize(
    ("requested", "bound"),
    [
        (["ReadWriteMany"], None),
        (["ReadWriteMany"], ["ReadWriteMany"]),
        (["ReadOnlyMany"], ["ReadOnlyMany", "ReadWriteOnce"]),
        (["ReadWriteOnce"], ["ReadWriteOnce", "ReadWriteMany"]),
    ],
    ids=["rwx-pending", "rwx-bound", "rox-bound", "bound-to-rwx-volume"],
)
def test_a_shared_claim_gets_its_tensorboard(
    apiserver_admin: client.ApiClient,
    profile: str,
    tmp_path: Path,
    requested: list[str],
    bound: list[str] | None,
) -> None:
    add_claim(apiserver_admin, profile, "tb-logs", requested, bound)

    result, markdown = launch(tmp_path / "out", tensorboard_logs_root=ROOT)

    assert (result.state, result.detail) == ("starting", "created"), markdown
    [tensorboard] = listed(apiserver_admin, TENSORBOARD_API, profile)
    assert tensorboard["spec"]["logspath"] == f"{ROOT}/{RUN_ID}"
    assert "Warning" not in markdown


@pytest.mark.apiserver
def test_a_claim_that_cannot_be_read_is_said_and_the_launch_goes_on(
    apiserver_admin: client.ApiClient, profile: str, tmp_path: Path
) -> None:
    result, markdown = launch(tmp_path / "out", tensorboard_logs_root=ROOT)  # no such claim

    assert (result.state, result.detail) == ("starting", "created"), markdown
    assert listed(apiserver_admin, TENSORBOARD_API, profile)[0]["metadata"]["name"] == NAME
    assert "**Warning:** The claim `tb-logs` could not be read (HTTP 404" in markdown
    assert "use a ReadWriteMany claim or an s3:// logs root" in markdown
