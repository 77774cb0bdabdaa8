"""`--check-cluster --nodes N`: the Kubeflow Trainer checks, against a real kube-apiserver.

Starts from the ready cluster of tests/test_preflight.py (its `cluster` fixture) plus Kubeflow
Trainer (its CRDs as the test server serves them, the `torch-distributed` runtime as shipped)
and the shipped `manifests/trainjob-rbac.yaml`; then removes or alters one prerequisite at a
time and expects the matching check to fail with its fix.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from kfp_lightning.components.train_on_nodes.trainjob import RBAC_MANIFEST, RUNTIME, RUNTIME_API
from kfp_lightning.pipelines import cli
from tests.apiserver.server import KubeAPIServer, apply_documents
from tests.conftest import REPO
from tests.test_preflight import GPU_LABELS, GPU_TAINT, NAMES, add_node
from tests.test_preflight import cluster as ready_cluster  # noqa: F401 (a fixture)
from tests.trainer_crds import (
    TORCH_DISTRIBUTED,
    TRAINJOB_CRD,
    install_trainer,
    shipped,
    uninstall_trainer_crd,
)

pytestmark = pytest.mark.apiserver

TRAINER_NAMES = {"TrainJob CRD", "training runtime", "TrainJob RBAC", "TrainJob"}


@pytest.fixture
def cluster(ready_cluster: str, apiserver_admin: client.ApiClient) -> str:  # noqa: F811
    """A cluster where a run on several nodes would work; returns the run's namespace."""
    add_node(apiserver_admin, "gpu-node-2", 1, GPU_LABELS, [GPU_TAINT])  # room for --nodes 2
    install_trainer(apiserver_admin)
    documents = list(yaml.safe_load_all((REPO / RBAC_MANIFEST).read_text()))
    apply_documents(apiserver_admin, documents, ready_cluster)
    return ready_cluster


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, str]]:
    """Runs `--check-cluster` in this process; returns the exit status and each check's line."""
    status = cli.main(["--check-cluster", *args])
    lines = capsys.readouterr().out.splitlines()
    results = {}
    for line in lines[1:-1]:
        mark, _, rest = line.partition(" ")
        name, _, detail = rest.partition(": ")
        results[name] = f"{mark} {detail}"
    return status, results


def test_one_node_needs_no_trainer_and_several_pass_on_a_ready_cluster(
    cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, results = check(capsys)
    assert (status, set(results)) == (0, NAMES)

    status, results = check(capsys, "--nodes", "2")

    assert status == 0, results
    assert set(results) == NAMES | TRAINER_NAMES
    assert all(line.startswith("✓") for line in results.values()), results
    assert results["TrainJob CRD"] == "✓ trainjobs.trainer.kubeflow.org/v1alpha1 is served"
    assert results["training runtime"].startswith(f"✓ ClusterTrainingRuntime {RUNTIME} exists")
    assert results["TrainJob RBAC"] == f"✓ {cluster}/default-editor may create/get/delete trainjobs"
    assert results["TrainJob"] == (
        "✓ the run's TrainJob, submitted as a dry run, would be stored as sent (2 nodes, 1 "
        "process(es) each)"
    )


def test_a_namespace_that_does_not_exist_is_named_as_such(
    cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not taken for a TrainJob CRD the cluster lacks, nor for missing rights.
    status, results = check(capsys, "--nodes", "2", "--namespace", "no-such-team")

    assert status == 1
    assert results["TrainJob CRD"].startswith("✓")
    missing = (
        "✗ namespace no-such-team does not exist. Fix: pass --namespace with a Kubeflow "
        "profile's namespace (where runs run)"
    )
    assert results["TrainJob"] == results["TrainJob RBAC"] == missing


def test_a_namespace_being_deleted_fails_each_check_made_in_it(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its reads and reviews still work; its writes (the dry run) are refused with a 403.
    client.CoreV1Api(apiserver_admin).delete_namespace(cluster)
    status, results = check(capsys, "--nodes", "2")

    assert status == 1
    deleted = (
        f"✗ namespace {cluster} is being deleted. Fix: pass --namespace with a Kubeflow "
        "profile's namespace (where runs run)"
    )
    for name in ("object-store secret", "launcher RBAC", "TrainJob RBAC", "TrainJob"):
        assert results[name] == deleted


@pytest.mark.parametrize("version", ["kubeflow-trainer-v2.2.0", "kubeflow-trainer-v2.0.0"])
def test_the_dry_run_follows_the_trainer_the_cluster_runs(
    cluster: str,
    apiserver_admin: client.ApiClient,
    capsys: pytest.CaptureFixture[str],
    version: str,
) -> None:
    install_trainer(apiserver_admin, version)
    try:
        status, results = check(capsys, "--nodes", "2")
    finally:
        install_trainer(apiserver_admin)

    if version.endswith("v2.2.0"):  # runtimePatches: the job goes there, unchanged
        assert status == 0, results
        assert results["TrainJob"].startswith("✓ the run's TrainJob, submitted as a dry run")
    else:  # podSpecOverrides cannot carry the pods' annotations and pull secrets
        assert status == 1
        failed = [name for name, line in results.items() if line.startswith("✗")]
        assert failed == ["TrainJob"], results
        assert "TrainJob" in results["TrainJob"]
        assert "podTemplateOverrides" in results["TrainJob"]
        assert "Fix: install Kubeflow Trainer v2.1 or newer" in results["TrainJob"]


def test_a_missing_trainjob_crd_fails(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    uninstall_trainer_crd(apiserver_admin, TRAINJOB_CRD)
    try:
        status, results = check(capsys, "--nodes", "2")
    finally:
        install_trainer(apiserver_admin)

    assert status == 1
    assert results["TrainJob CRD"].startswith(
        "✗ the cluster serves no trainjobs.trainer.kubeflow.org/v1alpha1. Fix: install Kubeflow "
        "Trainer v2"
    )
    assert results["TrainJob"] == (
        "? not submitted: the TrainJob CRD is not served. To check: see its line first"
    )
    others = {n: r for n, r in results.items() if n not in ("TrainJob CRD", "TrainJob")}
    assert all(r.startswith("✓") for r in others.values()), results


def test_the_training_runtime(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    group, version, plural, _ = RUNTIME_API
    api = client.CustomObjectsApi(apiserver_admin)
    try:
        api.delete_cluster_custom_object(group, version, plural, RUNTIME)
        status, results = check(capsys, "--nodes", "2")
        assert status == 1
        assert results["training runtime"].startswith(
            f"✗ no ClusterTrainingRuntime {RUNTIME}. Fix: install it: kubectl apply --server-side"
        )

        broken = copy.deepcopy(shipped(TORCH_DISTRIBUTED))
        del broken["spec"]["mlPolicy"]["torch"]
        broken["spec"]["template"]["spec"]["replicatedJobs"][0]["name"] = "trainer"
        api.create_cluster_custom_object(group, version, plural, broken)
        status, results = check(capsys, "--nodes", "2")
        assert status == 1
        assert results["training runtime"].startswith(
            f"✗ ClusterTrainingRuntime {RUNTIME} has no 'node' job with a 'node' container and "
            "no torch policy"
        )
    finally:
        install_trainer(apiserver_admin)


def test_trainjob_rbac(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    rbac = client.RbacAuthorizationV1Api(apiserver_admin)
    role_name = "kfp-lightning-trainjob-launcher"
    role = rbac.read_namespaced_role(role_name, cluster)
    role.rules[0].verbs = ["create", "get"]
    rbac.replace_namespaced_role(role_name, cluster, role)

    status, results = check(capsys, "--nodes", "2")

    assert status == 1
    assert results["TrainJob RBAC"] == (
        f"✗ {cluster}/default-editor may not delete trainjobs.trainer.kubeflow.org (the training "
        f"step cannot run the nodes). Fix: kubectl apply -n {cluster} -f {RBAC_MANIFEST}"
    )

    rbac.delete_namespaced_role_binding(role_name, cluster)
    status, results = check(capsys, "--nodes", "2")
    assert status == 1
    assert results["TrainJob RBAC"].startswith(
        f"✗ {cluster}/default-editor may not create/get/delete trainjobs.trainer.kubeflow.org"
    )


def test_a_service_account_that_does_not_exist_is_the_cause_of_each_of_its_lines(
    cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not "create a rolebinding" for it, nor a dry run that passes.
    status, results = check(capsys, "--nodes", "2", "--service-account", "runner")
    assert status == 1
    missing = f"✗ no service account {cluster}/runner: the run's pods cannot be created. Fix: "
    for name in ("launcher RBAC", "TrainJob RBAC", "TrainJob"):
        assert results[name].startswith(missing), results[name]


def test_a_user_who_may_not_create_trainjobs_is_told_so_not_the_pipelines_account(
    cluster: str,
    kube_apiserver: KubeAPIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # alice is granted nothing; the dry run's refusal is hers, not the service account's.
    monkeypatch.setenv(
        "KUBECONFIG", str(kube_apiserver.write_kubeconfig(tmp_path / "alice", "alice", cluster))
    )
    status, results = check(capsys, "--nodes", "2")
    assert status == 0
    assert results["TrainJob"] == (
        f"? these credentials may not create trainjobs in {cluster}, so it was not submitted as "
        "a dry run. To check: run --check-cluster as someone who may create trainjobs in the "
        "namespace"
    )


def test_a_namespace_being_deleted_is_the_dry_runs_fix_for_one_who_may_not_read_it(
    cluster: str,
    apiserver_admin: client.ApiClient,
    kube_apiserver: KubeAPIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # bob administers the namespace and may create trainjobs there, but may not read it:
    # only the dry run's refusal tells, and its fix is the namespace, not Trainer's release.
    rbac = client.RbacAuthorizationV1Api(apiserver_admin)
    for kind, role in (("ClusterRole", "admin"), ("Role", "kfp-lightning-trainjob-launcher")):
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role}
        bob = {"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"}
        binding = {"metadata": {"name": f"bob-{role}"}, "roleRef": ref, "subjects": [bob]}
        rbac.create_namespaced_role_binding(cluster, binding)
    client.CoreV1Api(apiserver_admin).delete_namespace(cluster)
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "bob", "bob", cluster)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    status, results = check(capsys, "--nodes", "2")

    assert status == 1
    assert results["TrainJob"].startswith(f"✗ namespace {cluster} is being deleted (HTTP 403: ")
    assert results["TrainJob"].endswith(
        "Fix: pass --namespace with a Kubeflow profile's namespace (where runs run)"
    )
