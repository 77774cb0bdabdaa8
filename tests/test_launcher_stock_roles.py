"""The launcher as a stock Kubeflow profile's `default-editor`, on a real kube-apiserver.

Each Kubeflow release's own role files (../shared/platforms/<release>/: kubeflow/manifests
`common/kubeflow-roles/base/cluster-roles.yaml` and the Tensorboards and Jupyter web apps'
`upstream/base/cluster-role.yaml`) are aggregated into `kubeflow-edit` as Kubernetes' aggregation
controller would (the union of the rules of every ClusterRole carrying a label its
`aggregationRule` selects, repeated until nested aggregations settle; no controller runs beside
this API server), and that role alone is bound to the run's service account, as the profile
controller binds it. Then a first run, a retry with the same run id, and a retry that finds its
objects changed must all work without a fallback: no patch, no update, no extra Role.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.launch_tensorboard.launcher import LAUNCHER_PERMISSIONS
from kfp_lightning.components.launch_tensorboard.objects import (
    PODDEFAULT_API,
    TENSORBOARD_API,
    poddefault_name,
)
from tests.apiserver.server import KubeAPIServer, ensure_namespace
from tests.conftest import SHARED
from tests.test_launcher_apiserver import (
    ENDPOINT,
    NAME,
    RUN_ID,
    SECRET,
    SERVICE_ACCOUNT,
    add_claim,
    as_service_account,
    launch,
    listed,
    read,
)

pytestmark = pytest.mark.apiserver

PLATFORMS = SHARED / "platforms"
# The Kubeflow releases whose profiles get stock roles (standalone KFP has no profiles).
RELEASES = ("kubeflow-1.10.2", "kubeflow-1.11.0", "kubeflow-26.03")
ROLE_FILES = (
    "common__kubeflow-roles__base__cluster-roles.yaml",
    "tensorboard__tensorboards-web-app__upstream__base__cluster-role.yaml",
    "jupyter__jupyter-web-app__upstream__base__cluster-role.yaml",
)


def cluster_roles(release: str) -> list[dict[str, Any]]:
    """The release's ClusterRoles a profile's roles are made of (not the web apps' own
    service-account roles, each called `cluster-role` before kustomize's prefix)."""
    roles = []
    for file_name in ROLE_FILES:
        for document in yaml.safe_load_all((PLATFORMS / release / file_name).read_text()):
            if document and document["kind"] == "ClusterRole":
                roles.append(document)
    return [r for r in roles if r["metadata"]["name"] != "cluster-role"]


def aggregated_rules(roles: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The rules of ClusterRole `name` once every aggregation has been applied."""
    roles = copy.deepcopy(roles)

    def selected(role: dict, selectors: list[dict]) -> bool:
        labels = role["metadata"].get("labels") or {}
        return any(
            all(labels.get(k) == v for k, v in s.get("matchLabels", {}).items()) for s in selectors
        )

    changed = True
    while changed:
        changed = False
        for role in roles:
            selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors") or []
            if not selectors:
                continue
            rules = list(role.get("rules") or [])
            for other in roles:
                if other is not role and selected(other, selectors):
                    rules += [r for r in other.get("rules") or [] if r not in rules]
            if rules != (role.get("rules") or []):
                role["rules"], changed = rules, True
    return next(r for r in roles if r["metadata"]["name"] == name)["rules"]


def allows(rules: list[dict[str, Any]], group: str, plural: str, verb: str) -> bool:
    return any(
        group in r.get("apiGroups", [])
        and plural in r.get("resources", [])
        and (verb in r["verbs"] or "*" in r["verbs"])
        for r in rules
    )


@pytest.fixture(params=RELEASES)
def stock_profile(
    request: pytest.FixtureRequest, apiserver_admin: client.ApiClient, kubeflow_crds: None
) -> str:
    """A namespace whose `default-editor` is bound to the release's `kubeflow-edit` only."""
    release = request.param
    rules = aggregated_rules(cluster_roles(release), "kubeflow-edit")
    rbac = client.RbacAuthorizationV1Api(apiserver_admin)
    role_name = f"stock-kubeflow-edit-{release.replace('.', '-')}"
    with contextlib.suppress(ApiException):  # one per release in the session's server
        rbac.create_cluster_role({"metadata": {"name": role_name}, "rules": rules})
    namespace = f"profile-{secrets.token_hex(4)}"
    ensure_namespace(apiserver_admin, namespace)
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "default-editor"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role_name,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}
            ],
        },
    )
    return namespace


@pytest.mark.parametrize("release", RELEASES)
def test_stock_kubeflow_edit_grants_what_the_launcher_uses_and_no_patch(release: str) -> None:
    rules = aggregated_rules(cluster_roles(release), "kubeflow-edit")
    for group, plural, verbs in LAUNCHER_PERMISSIONS:
        for verb in verbs:
            assert allows(rules, group, plural, verb), (release, group, plural, verb)
    # Why the launcher may not patch: the Tensorboards web app's role grants none.
    assert not allows(rules, "tensorboard.kubeflow.org", "tensorboards", "patch")
    assert not allows(rules, "tensorboard.kubeflow.org", "tensorboards", "update")


def test_first_run_retry_and_changed_objects_with_the_stock_role_only(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    stock_profile: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = stock_profile
    as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)

    first, markdown = launch(tmp_path / "first")
    assert (first.state, first.detail) == ("starting", "created"), markdown

    retry, markdown = launch(tmp_path / "retry")
    assert (retry.state, retry.detail) == ("starting", "unchanged"), markdown

    api = client.CustomObjectsApi(apiserver_admin)
    pd_name = poddefault_name(ENDPOINT, SECRET)
    group, version, plural, _ = PODDEFAULT_API
    api.patch_namespaced_custom_object(
        group, version, namespace, plural, pd_name, {"spec": {"desc": "edited by hand"}}
    )
    group, version, plural, _ = TENSORBOARD_API
    api.patch_namespaced_custom_object(
        group, version, namespace, plural, NAME, {"spec": {"logspath": "s3://else/logs"}}
    )

    changed, markdown = launch(tmp_path / "changed")
    assert (changed.state, changed.detail) == ("starting", "replaced"), markdown
    assert read(apiserver_admin, TENSORBOARD_API, namespace, NAME)["spec"]["logspath"] == (
        f"s3://mlpipeline/private/{namespace}/tensorboard/{RUN_ID}"
    )
    assert read(apiserver_admin, PODDEFAULT_API, namespace, pd_name)["spec"]["desc"] != (
        "edited by hand"
    )
    assert len(listed(apiserver_admin, TENSORBOARD_API, namespace)) == 1


def test_a_shared_claim_with_the_stock_role_only(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    stock_profile: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = stock_profile
    add_claim(apiserver_admin, namespace, "tb-logs", ["ReadWriteMany"], bound=["ReadWriteMany"])
    as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)

    result, markdown = launch(tmp_path / "out", tensorboard_logs_root="pvc://tb-logs/runs")

    assert (result.state, result.detail) == ("starting", "created"), markdown
    assert "Warning" not in markdown  # the claim was read: stock roles grant get on claims
