"""The platform matrix: every supported release, built from its own manifests in a real API server.

For each row of `tests/platforms.py`, a fresh kube-apiserver (tests/apiserver/) is loaded
with that release's upstream files from ../shared/platforms/ and ../shared/schemas/: the
object-store Service(s) in `kubeflow`, KFP's `ml-pipeline` Deployment at the release's backend
version, and, for Kubeflow, a profile namespace whose `default-editor` is bound to the stock
`kubeflow-edit` role (aggregated from the stock roles as Kubernetes' aggregation controller
does), the Tensorboard and PodDefault CRDs and the release's Kubeflow Trainer (CRDs stripped
only of what the v1.20 server refuses, see tests/trainer_crds.py). Then `--check-cluster`
runs against it as a user would, each removed piece must fail by name, and the objects a run
creates are created by the real code and read back unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kfp_lightning.components.common.logs_location import KFP_OBJECT_STORES
from kfp_lightning.pipelines import cli, preflight
from scripts.generate import PLATFORMS_TABLE, platforms_table, with_section
from tests.apiserver.server import (
    KubeAPIServer,
    apply_documents,
    binary_path,
    ensure_namespace,
    install_crd,
    kubeflow_crd,
    missing_reason,
    running_apiserver,
)
from tests.conftest import REPO, SHARED
from tests.platforms import PLATFORMS, Platform

PLATFORM_FILES = SHARED / "platforms"
KFP_NAMESPACE = "kubeflow"
PROFILE = "kubeflow-user-example-com"
SECRET = "mlpipeline-minio-artifact"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@contextlib.contextmanager
def fresh_apiserver(directory: Path) -> Iterator[KubeAPIServer]:
    """A new API server, so no release's cluster-scoped objects meet another's."""
    import os

    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with running_apiserver(binary_path(), directory) as server:
        yield server


def documents(platform: Platform, kind: str) -> list[dict[str, Any]]:
    """Every object of `kind` in the release's files."""
    found = []
    for path in sorted((PLATFORM_FILES / platform.manifests).glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == kind]
    return found


def _matches(labels: Mapping[str, str], selector: Mapping[str, Any]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def aggregated(roles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ClusterRoles with each aggregated one's rules filled in, as Kubernetes' aggregation
    controller fills them (kubernetes/kubernetes, pkg/controller/clusterroleaggregation:
    the union of the rules of every ClusterRole matching one of its selectors). The API server
    alone runs no controller, so the test does this step; nested aggregation (kubeflow-view
    into kubeflow-edit) converges by repeating it."""
    roles = copy.deepcopy(roles)
    by_name = {r["metadata"]["name"]: r for r in roles}
    for _ in range(len(roles)):
        for role in roles:
            selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors") or []
            if not selectors:
                continue
            rules: list[dict[str, Any]] = []
            for other in by_name.values():
                labels = other["metadata"].get("labels") or {}
                if other is not role and any(_matches(labels, s) for s in selectors):
                    rules += [r for r in other.get("rules") or [] if r not in rules]
            role["rules"] = rules
    return roles


def stock_roles(platform: Platform) -> list[dict[str, Any]]:
    """The release's ClusterRoles that a profile's roles are made of.

    The web apps' own service-account roles (each named `cluster-role` before kustomize's
    name prefix) are left out: they are not a profile's, and share one name.
    """
    roles = [
        r for r in documents(platform, "ClusterRole") if r["metadata"]["name"] != "cluster-role"
    ]
    return aggregated(roles)


def secret() -> dict[str, Any]:
    """KFP's object-store secret, as the profile controller writes it (its `sync.py`)."""
    data = {
        k: base64.b64encode(v.encode()).decode()
        for k, v in (("accesskey", "a"), ("secretkey", "s"))
    }
    return {"metadata": {"name": SECRET}, "data": data}


def ml_pipeline(version: str) -> dict[str, Any]:
    labels = {"app": "ml-pipeline"}
    container = {
        "name": preflight.KFP_CONTAINER,
        "image": f"ghcr.io/kubeflow/kfp-api-server:{version}",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": preflight.KFP_DEPLOYMENT, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def add_gpu_nodes(admin: client.ApiClient) -> None:
    """Two ready GPU nodes as a kubelet and NVIDIA's device plugin report them (for --nodes 2)."""
    core = client.CoreV1Api(admin)
    resources = {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "1"}
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
    for name in ("gpu-1", "gpu-2"):
        core.create_node({"metadata": {"name": name}, "spec": {"taints": [GPU_TAINT]}})
        core.patch_node_status(
            name,
            {"status": {"capacity": resources, "allocatable": resources, "conditions": [ready]}},
        )
        core.patch_node(name, {"spec": {"taints": [GPU_TAINT]}})


@dataclasses.dataclass
class Cluster:
    """A loaded release: where runs run, and as whom."""

    platform: Platform
    server: KubeAPIServer
    admin: client.ApiClient
    namespace: str
    service_account: str


def load(platform: Platform, server: KubeAPIServer, admin: client.ApiClient) -> Cluster:
    """Loads `platform`'s manifests into `server` (see the module docstring)."""
    from tests.trainer_crds import install_trainer

    ensure_namespace(admin, KFP_NAMESPACE)
    apply_documents(admin, documents(platform, "Service"), KFP_NAMESPACE)
    client.AppsV1Api(admin).create_namespaced_deployment(
        KFP_NAMESPACE, ml_pipeline(platform.kfp_backend)
    )
    add_gpu_nodes(admin)
    core = client.CoreV1Api(admin)
    if platform.profiles:
        namespace, account = PROFILE, "default-editor"
        rbac = client.RbacAuthorizationV1Api(admin)
        for role in stock_roles(platform):
            rbac.create_cluster_role(role)
        ensure_namespace(admin, namespace)
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
        # The profile controller binds the profile's default-editor to kubeflow-edit
        # (kubeflow/kubeflow components/profile-controller/controllers/profile_controller.go).
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": account},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "kubeflow-edit",
                },
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            },
        )
        for file_name in (
            "tensorboard.kubeflow.org_tensorboards.yaml",
            "poddefaults.kubeflow.org.yaml",
        ):
            install_crd(admin, kubeflow_crd(file_name))
    else:
        # Standalone KFP runs every pipeline in its own namespace as pipeline-runner
        # (kubeflow/pipelines manifests/kustomize/base/pipeline/pipeline-runner-sa.yaml).
        namespace, account = KFP_NAMESPACE, "pipeline-runner"
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    core.create_namespaced_secret(namespace, secret())
    if platform.trainer:
        install_trainer(admin, platform.trainer_schemas)
        # Kubeflow aggregates trainjobs into kubeflow-edit through the Trainer's own roles,
        # which the shared manifests do not hold: the project's manifest grants the same.
        manifest = REPO / "manifests" / "trainjob-rbac.yaml"
        apply_documents(admin, list(yaml.safe_load_all(manifest.read_text())), namespace)
    return Cluster(platform, server, admin, namespace, account)


@pytest.fixture(scope="module", params=PLATFORMS, ids=lambda p: p.name)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    platform: Platform = request.param
    with (
        fresh_apiserver(tmp_path_factory.mktemp("apiserver")) as server,
        server.api_client() as admin,
    ):
        yield load(platform, server, admin)


def check_cluster(
    cluster: Cluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, dict[str, str]]:
    """`--check-cluster` as the user who installed the platform; exit status and each line."""
    kubeconfig = cluster.server.write_kubeconfig(
        tmp_path / "kubeconfig", "admin", cluster.namespace
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    status = cli.main(["--check-cluster", "--service-account", cluster.service_account, *args])
    lines = capsys.readouterr().out.splitlines()
    results = {}
    for line in lines[1:-1]:
        mark, _, rest = line.partition(" ")
        name, _, detail = rest.partition(": ")
        results[name] = f"{mark} {detail}"
    return status, results


@pytest.mark.apiserver
def test_the_preflight_passes_with_default_parameters(
    cluster: Cluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, results = check_cluster(cluster, tmp_path, monkeypatch, capsys)

    assert status == 0, results
    assert all(line.startswith("✓") for line in results.values()), results
    store = cluster.platform.object_stores[0]
    assert f"Service {KFP_NAMESPACE}/{store} " in results["object store"], results
    (expected,) = [s.endpoint for s in KFP_OBJECT_STORES if s.service == store]
    assert f"resolves to {expected}:" in results["object store"]
    if cluster.platform.trainer:
        status, results = check_cluster(cluster, tmp_path, monkeypatch, capsys, "--nodes", "2")
        assert status == 0, results
        assert all(line.startswith("✓") for line in results.values()), results


@pytest.mark.apiserver
def test_auto_resolves_to_a_service_of_the_release(cluster: Cluster) -> None:
    found = preflight.find_object_store(cluster.admin)

    assert found is not None
    assert found.service == cluster.platform.object_stores[0]
    assert found in KFP_OBJECT_STORES
    names = {s["metadata"]["name"] for s in documents(cluster.platform, "Service")}
    assert set(cluster.platform.object_stores) <= names


@pytest.mark.apiserver
def test_without_its_object_store_the_preflight_fails_naming_it(
    cluster: Cluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    core = client.CoreV1Api(cluster.admin)
    removed = [
        core.read_namespaced_service(name, KFP_NAMESPACE) for name in cluster.platform.object_stores
    ]
    for service in removed:
        core.delete_namespaced_service(service.metadata.name, KFP_NAMESPACE)
    try:
        status, results = check_cluster(cluster, tmp_path, monkeypatch, capsys)
    finally:
        for service in removed:
            body = cluster.admin.sanitize_for_serialization(service)
            body["metadata"] = {"name": service.metadata.name}
            body["spec"].pop("clusterIP", None)
            body["spec"].pop("clusterIPs", None)
            core.create_namespaced_service(KFP_NAMESPACE, body)

    assert status == 1
    failed = [name for name, line in results.items() if line.startswith("✗")]
    assert failed == ["object store"], results
    assert (
        "KFP's object store: no Service kubeflow/seaweedfs (port 8333)" in results["object store"]
    )


def test_the_readme_table_is_generated_from_the_matrix() -> None:
    readme = (REPO / "README.md").read_text()
    assert with_section(readme, *PLATFORMS_TABLE, platforms_table()) == readme, (
        "README.md's platforms table is stale: run `python scripts/generate.py`"
    )


def test_every_release_in_the_shared_manifests_is_a_row() -> None:
    # A release added to the shared manifests without a row would not be tested.
    folders = {p.name for p in PLATFORM_FILES.iterdir() if p.is_dir()}
    assert folders == {p.manifests for p in PLATFORMS}
    for platform in PLATFORMS:
        assert (PLATFORM_FILES / platform.manifests).is_dir()
        if platform.trainer:
            assert (SHARED / "schemas" / platform.trainer_schemas).is_dir()


def _service_account_kubeconfig(cluster: Cluster, tmp_path: Path) -> Path:
    user = f"system:serviceaccount:{cluster.namespace}:{cluster.service_account}"
    return cluster.server.write_kubeconfig(tmp_path / "sa-kubeconfig", user, cluster.namespace)


@pytest.mark.apiserver
def test_every_object_a_run_creates_is_stored_as_sent(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the run's own service account, with the release's stock roles only."""
    from kfp_lightning.components.common.kubernetes import Patience, differences
    from kfp_lightning.components.common.logs_location import LiveLogsConfig
    from kfp_lightning.components.launch_tensorboard.fallback import ui_metadata
    from kfp_lightning.components.launch_tensorboard.launcher import (
        LauncherConfig,
        start_live_tensorboard,
    )
    from kfp_lightning.components.train_on_nodes import trainjob
    from tests.test_viewer_metadata import controller_pod, frontend_viewer

    store = next(s for s in KFP_OBJECT_STORES if s.service == cluster.platform.object_stores[0])
    monkeypatch.setenv("KUBECONFIG", str(_service_account_kubeconfig(cluster, tmp_path)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", cluster.namespace)
    logs = LiveLogsConfig(s3_endpoint=store.endpoint)  # what `auto` resolves to in its pods
    run_id = "0f1e2d3c-4b5a-6978-8a9b-aabbccddeeff"
    fast = Patience(attempts=2, backoff_seconds=0.01, poll_seconds=0.01)

    # The live TensorBoard: a Tensorboard and a PodDefault where Kubeflow serves them, each
    # read back unchanged by the launcher (else its note would say which field was lost).
    launch = start_live_tensorboard(
        tmp_path / "note.md",
        tmp_path / "ui.json",
        run_id,
        logs,
        LauncherConfig(wait_ready_seconds=0),
        fast,
    )
    custom = client.CustomObjectsApi(cluster.admin)
    if cluster.platform.profiles:
        assert launch.state == "starting", (tmp_path / "note.md").read_text()
        tensorboard = custom.get_namespaced_custom_object(
            "tensorboard.kubeflow.org", "v1alpha1", cluster.namespace, "tensorboards", launch.name
        )
        assert tensorboard["spec"]["logspath"].endswith(f"/{run_id}")
    else:
        assert launch.state == "fallback"  # standalone KFP: no Tensorboard CRD

    # The run page's viewer: the Pod its controller makes from our pod template is valid and
    # stored with nothing pruned.
    location = logs.run_location(run_id, cluster.namespace)
    viewer = frontend_viewer(
        json.dumps(ui_metadata(location, store.endpoint, SECRET)), cluster.namespace
    )
    pod = controller_pod(viewer)
    core = client.CoreV1Api(cluster.admin)
    with contextlib.suppress(client.exceptions.ApiException):
        core.create_namespaced_service_account(cluster.namespace, {"metadata": {"name": "default"}})
    stored = json.loads(
        core.create_namespaced_pod(cluster.namespace, pod, _preload_content=False).data
    )
    assert differences(pod, stored) == []

    # Several nodes: the TrainJob in this Trainer's form, created as the run's account.
    if cluster.platform.trainer:
        with cluster.server.api_client(
            f"system:serviceaccount:{cluster.namespace}:{cluster.service_account}"
        ) as account:
            form = trainjob.trainjob_form(account)
            spec = trainjob.NodeSpec(
                image="registry.example.com/ml/kfp-lightning-trainer:0",
                nodes=2,
                processes_per_node=1,
                gpus_per_node=1,
                arguments=["--location", location.uri],
                module="kfp_lightning.components.train_mnist.distributed",
                s3_secret=SECRET,
                node_selector={"pool": "gpu"},
                tolerations=[GPU_TAINT | {"operator": "Equal"}],
                service_account=cluster.service_account,
                image_pull_secrets=("registry-credentials",),
            )
            wanted = trainjob.trainjob_object(cluster.namespace, run_id, spec, form, task="t-1")
            created = client.CustomObjectsApi(account).create_namespaced_custom_object(
                "trainer.kubeflow.org", "v1alpha1", cluster.namespace, "trainjobs", wanted
            )
        assert differences(wanted, created) == []
        expected = "runtimePatches" if cluster.platform.trainer >= "2.2" else "podTemplateOverrides"
        assert expected in created["spec"]


def _removals(cluster: Cluster) -> list[tuple[str, str, Any, Any]]:
    """(check that must fail, what is removed, remove, restore) for the pieces of a release."""
    core = client.CoreV1Api(cluster.admin)
    rbac = client.RbacAuthorizationV1Api(cluster.admin)
    custom = client.CustomObjectsApi(cluster.admin)
    ns = cluster.namespace
    found = [
        (
            "object-store secret",
            f"secret {SECRET}",
            lambda: core.delete_namespaced_secret(SECRET, ns),
            lambda: core.create_namespaced_secret(ns, secret()),
        )
    ]
    if cluster.platform.profiles:
        binding = rbac.read_namespaced_role_binding(cluster.service_account, ns)
        body = cluster.admin.sanitize_for_serialization(binding)
        body["metadata"] = {"name": cluster.service_account}
        found.append(
            (
                "launcher RBAC",
                "the profile's binding to kubeflow-edit",
                lambda: rbac.delete_namespaced_role_binding(cluster.service_account, ns),
                lambda: rbac.create_namespaced_role_binding(ns, body),
            )
        )
    if cluster.platform.trainer:
        group, version, plural = "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes"
        runtime = custom.get_cluster_custom_object(group, version, plural, "torch-distributed")
        runtime["metadata"] = {"name": "torch-distributed"}
        found.append(
            (
                "training runtime",
                "the torch-distributed runtime",
                lambda: custom.delete_cluster_custom_object(
                    group, version, plural, "torch-distributed"
                ),
                lambda: custom.create_cluster_custom_object(group, version, plural, runtime),
            )
        )
    return found


@pytest.mark.apiserver
def test_each_removed_piece_fails_by_name(
    cluster: Cluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nodes = ("--nodes", "2") if cluster.platform.trainer else ()
    for check, piece, remove, restore in _removals(cluster):
        remove()
        try:
            status, results = check_cluster(cluster, tmp_path, monkeypatch, capsys, *nodes)
        finally:
            restore()
        failed = [name for name, line in results.items() if line.startswith("✗")]
        assert (status, failed) == (1, [check]), (piece, results)
    status, results = check_cluster(cluster, tmp_path, monkeypatch, capsys, *nodes)
    assert status == 0, results
