"""`python pipelines/mnist.py --check-cluster` against a real kube-apiserver (tests/apiserver/).

Each test starts from a cluster where a run would work: Kubeflow's CRDs, a profile-like
namespace with the object-store secret, the service account `default-editor` bound by the
shipped Role, a tainted GPU node and a CPU node (Node objects whose status is patched, as a
kubelet and NVIDIA's device plugin would report it), and KFP's `ml-pipeline` Deployment at
2.5.0. Then it removes or alters one prerequisite and expects the matching check to fail, with
its fix, and the exit status to say so. The authorizer, discovery and the objects are the real
server's; only the kubelets and controllers are absent. A few runs go through a subprocess, end
to end; the rest call the CLI's `main` in this process.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from kfp_lightning.components.common import training_pod
from kfp_lightning.components.launch_tensorboard.launcher import RBAC_MANIFEST
from kfp_lightning.pipelines import cli, preflight
from kfp_lightning.pipelines.preflight import Status, tolerates
from tests.apiserver.server import (
    KubeAPIServer,
    apply_documents,
    delete_crd,
    ensure_namespace,
    free_port,
)
from tests.conftest import REPO
from tests.fake_kubernetes import write_kubeconfig

SECRET = "mlpipeline-minio-artifact"
GPU_NODE, CPU_NODE = "gpu-node-1", "cpu-node-1"
GPU_LABELS = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
# The pipeline's default tolerations.
TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
KFP_IMAGE = "ghcr.io/kubeflow/kfp-api-server:{}"
NAMES = {
    "Tensorboard CRD",
    "PodDefault CRD",
    "object-store secret",
    "object store",
    "logs claim",
    "launcher RBAC",
    "training node",
    "quota",
    "KFP backend",
}


def secret_body(**keys: str) -> dict:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()}
    return {"metadata": {"name": SECRET}, "data": data}


def ml_pipeline(tag: str) -> dict:
    labels = {"app": "ml-pipeline"}
    container = {"name": preflight.KFP_CONTAINER, "image": KFP_IMAGE.format(tag)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ml-pipeline", "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def put_ml_pipeline(admin: client.ApiClient, namespace: str, tag: str) -> None:
    ensure_namespace(admin, namespace)
    apps = client.AppsV1Api(admin)
    apps.delete_collection_namespaced_deployment(namespace)
    apps.create_namespaced_deployment(namespace, ml_pipeline(tag))


def add_node(
    admin: client.ApiClient,
    name: str,
    gpus: int,
    labels: dict[str, str] | None = None,
    taints: list[dict] | None = None,
    unschedulable: bool = False,
) -> None:
    """A Node as a kubelet registers it, reports it ready with its device plugin's GPUs, and
    the node lifecycle controller then lifts the not-ready taint that admission put on it."""
    core = client.CoreV1Api(admin)
    spec: dict = {"taints": taints or []}
    if unschedulable:
        spec["unschedulable"] = True
    core.create_node({"metadata": {"name": name, "labels": labels or {}}, "spec": spec})
    resources = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
    core.patch_node_status(
        name, {"status": {"capacity": resources, "allocatable": resources, "conditions": [ready]}}
    )
    assert core.read_node(name).spec.taints[-1].key == "node.kubernetes.io/not-ready"
    core.patch_node(name, {"spec": {"taints": taints or []}})


def put_object_store(admin: client.ApiClient, name: str = "seaweedfs") -> None:
    """KFP's object-store Service with its S3 port (SeaweedFS 8333, MinIO 9000)."""
    ensure_namespace(admin, "kubeflow")
    core = client.CoreV1Api(admin)
    for service in core.list_namespaced_service("kubeflow").items:
        core.delete_namespaced_service(service.metadata.name, "kubeflow")
    port = 8333 if name == "seaweedfs" else 9000
    ports = [{"name": "http-s3", "port": port, "targetPort": port}]
    core.create_namespaced_service(
        "kubeflow",
        {"metadata": {"name": name}, "spec": {"ports": ports, "selector": {"app": name}}},
    )


def claim_body(name: str, mode: str) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"accessModes": [mode], "resources": {"requests": {"storage": "1Gi"}}},
    }


@pytest.fixture
def cluster(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    kubeflow_crds: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """A cluster where a run would work; returns the run's namespace (the kubeconfig's too)."""
    namespace = f"team-{secrets.token_hex(4)}"
    ensure_namespace(apiserver_admin, namespace)
    core = client.CoreV1Api(apiserver_admin)
    core.create_namespaced_secret(namespace, secret_body(accesskey="minio", secretkey="minio123"))
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "default-editor"}})
    apply_documents(
        apiserver_admin, list(yaml.safe_load_all((REPO / RBAC_MANIFEST).read_text())), namespace
    )
    core.delete_collection_node()
    add_node(apiserver_admin, GPU_NODE, 1, GPU_LABELS, [GPU_TAINT])
    add_node(apiserver_admin, CPU_NODE, 0, {"pool": "cpu"})
    put_object_store(apiserver_admin)
    for claim, mode in (("tb-logs", "ReadWriteMany"), ("logs", "ReadWriteMany")):
        core.create_namespaced_persistent_volume_claim(namespace, claim_body(claim, mode))
    put_ml_pipeline(apiserver_admin, "kubeflow", "2.5.0")
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "kubeconfig", "admin", namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    return namespace


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, str]]:
    """Runs `--check-cluster` in this process; returns the exit status and each check's line."""
    status = cli.main(["--check-cluster", *args])
    lines = capsys.readouterr().out.splitlines()
    results = {}
    for line in lines[1:-1]:
        mark, _, rest = line.partition(" ")
        name, _, detail = rest.partition(": ")
        results[name] = f"{mark} {detail}"
    trainer = {"TrainJob CRD", "training runtime", "TrainJob RBAC", "TrainJob"}
    assert set(results) == NAMES | (trainer if "--nodes" in args else set()), lines
    return status, results


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    return subprocess.run(
        [sys.executable, "pipelines/mnist.py", "--check-cluster", *args],
        cwd=REPO,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- end to end, in a subprocess --------------------------------------------------------


@pytest.mark.apiserver
def test_a_ready_cluster_passes_every_check(cluster: str) -> None:
    done = run_cli()  # the namespace comes from the kubeconfig's context

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Kubernetes v1.20.2 at https://127.0.0.1:")
    assert f"namespace {cluster}, service account default-editor" in lines[0]
    assert [line[0] for line in lines[1:-1]] == ["✓"] * len(NAMES), done.stdout
    assert f"{cluster}/{SECRET} has accesskey and secretkey" in done.stdout
    assert (
        f"1 node(s) with at least 1 allocatable nvidia.com/gpu reachable: {GPU_NODE}" in done.stdout
    )
    assert "2.5.0 (ghcr.io/kubeflow/kfp-api-server:2.5.0)" in done.stdout
    assert lines[-1] == f"No check failed: a run in {cluster} should work."
    assert done.stderr == ""


@pytest.mark.apiserver
def test_a_too_old_backend_fails(cluster: str, apiserver_admin: client.ApiClient) -> None:
    put_ml_pipeline(apiserver_admin, "kubeflow", "2.4.1")

    done = run_cli("--namespace", cluster)

    assert done.returncode == 1, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if "KFP backend" in x)
    assert line.startswith("✗ KFP backend: 2.4.1 (ghcr.io/kubeflow/kfp-api-server:2.4.1)")
    assert "Fix: upgrade Kubeflow Pipelines to 2.5.0 or newer" in line
    assert done.stdout.splitlines()[-1] == "1 of 9 checks failed."


def test_no_api_server_answering_is_one_line(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{closed}"}}],
                "users": [{"name": "u", "user": {"token": "t0k3n"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )

    done = run_cli(env={"KUBECONFIG": str(kubeconfig)})

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"error: no Kubernetes API server answers at https://127.0.0.1:{closed}: "
        "[Errno 111] Connection refused (5 attempts)\n"
    )


@pytest.mark.apiserver
def test_a_server_whose_certificate_the_kubeconfig_does_not_trust_is_one_line(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    # A server answers, but not with a certificate the (here: absent) CA vouches for.
    host = kube_apiserver.configuration(kube_apiserver.token("admin")).host
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", host)

    done = run_cli(env={"KUBECONFIG": str(kubeconfig)})

    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: TLS with the server at {host} failed (")
    assert "CERTIFICATE_VERIFY_FAILED" in line
    assert line.endswith("): check the certificate-authority of the kubeconfig's cluster")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespace", "Team_A"], "error: invalid namespace='Team_A': expected a Kubernetes"),
        (["--gpus", "17"], "error: invalid gpus="),
        (["--service-account", "Bad Name"], "error: invalid service_account='Bad Name'"),
        (["--tolerations", "{}"], "error: invalid tolerations='{}': expected a JSON list"),
    ],
    ids=["namespace", "gpus", "service-account", "tolerations"],
)
def test_a_bad_argument_is_one_line_and_status_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    # No server needed: nothing may be asked of a cluster before the arguments are valid.
    done = run_cli(*args, env={"KUBECONFIG": str(tmp_path / "missing")})

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(message), done.stderr
    assert done.stderr.count("\n") == 1


def test_no_kubeconfig_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    with pytest.raises(SystemExit) as exited:
        cli.main(["--check-cluster"])

    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no Kubernetes API configured: not running in a pod")
    assert err.endswith(f"and no kubeconfig at {tmp_path / 'missing'} (no such file)\n")
    assert err.count("\n") == 1


# --- each check, failing and passing -------------------------------------------------------


@pytest.mark.apiserver
def test_a_missing_poddefault_crd_fails(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    delete_crd(apiserver_admin, "poddefaults.kubeflow.org")

    status, results = check(capsys)

    assert status == 1
    assert results["PodDefault CRD"].startswith(
        "✗ the cluster serves no poddefaults.kubeflow.org/v1alpha1. Fix: install"
    )
    assert all(r.startswith("✓") for n, r in results.items() if n != "PodDefault CRD"), results
    # A pvc:// logs root needs no PodDefault.
    status, results = check(capsys, "--tensorboard-logs-root", "pvc://logs/tb")
    assert status == 0
    assert results["PodDefault CRD"] == "✓ not needed for logs at pvc://logs/tb"


@pytest.mark.apiserver
def test_no_tensorboard_crd_is_standalone_kfp_not_a_failure(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    # Standalone Kubeflow Pipelines serves neither CRD: the step's kubectl commands show the
    # logs (its single-user run page has no namespace for the Start Tensorboard viewer).
    delete_crd(apiserver_admin, "tensorboards.tensorboard.kubeflow.org")
    delete_crd(apiserver_admin, "poddefaults.kubeflow.org")

    status, results = check(capsys)

    assert status == 0, results
    assert results["Tensorboard CRD"].startswith(
        "✓ tensorboards.tensorboard.kubeflow.org/v1alpha1 is not served (standalone Kubeflow "
        "Pipelines)"
    )
    assert "kubectl port-forward commands show the logs" in results["Tensorboard CRD"]
    assert results["PodDefault CRD"] == "✓ not needed without Kubeflow's Tensorboard"
    assert results["launcher RBAC"] == "✓ nothing to create: Kubeflow's Tensorboard is not served"
    # The run's pods need their account all the same.
    status, results = check(capsys, "--service-account", "nope-sa")
    assert status == 1
    assert results["launcher RBAC"].startswith(
        f"✗ no service account {cluster}/nope-sa: the run's pods cannot be created. Fix: "
    )
    assert results["launcher RBAC"].endswith("(pipeline-runner in standalone Kubeflow Pipelines)")


@pytest.mark.apiserver
def test_the_object_store_the_run_would_use(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    status, results = check(capsys)
    assert status == 0
    assert results["object store"] == (
        "✓ s3_endpoint=auto resolves to http://seaweedfs.kubeflow:8333: Service "
        "kubeflow/seaweedfs (SeaweedFS, KFP 2.15 and newer)"
    )
    # Kubeflow 1.10: MinIO only.
    put_object_store(apiserver_admin, "minio-service")
    status, results = check(capsys)
    assert status == 0
    assert "resolves to http://minio-service.kubeflow:9000" in results["object store"]
    # An explicit in-cluster endpoint must name a Service that exists, with that port.
    status, results = check(capsys, "--s3-endpoint", "http://minio-service.kubeflow:9000")
    assert (status, results["object store"][0]) == (0, "✓")
    # A Service that exists, on a port it does not serve, named in full or as `<svc>.<ns>`
    # (which pods reach through their DNS search path), fails.
    for endpoint in (
        "http://minio-service.kubeflow.svc:8333",
        "http://minio-service.kubeflow:8333",
    ):
        status, results = check(capsys, "--s3-endpoint", endpoint)
        assert status == 1
        assert results["object store"].startswith(
            f"✗ s3_endpoint={endpoint}: no Service kubeflow/minio-service (port 8333) in this "
            "cluster. Fix: "
        )
    status, results = check(capsys, "--s3-endpoint", "https://s3.example.com")
    assert status == 0
    assert results["object store"].startswith("? https://s3.example.com is not a Service of this")
    # Two labels name a Service (`<svc>.<ns>`) or a host outside the cluster: pods try both.
    status, results = check(capsys, "--s3-endpoint", "http://minio.lan:9000")
    assert status == 0
    assert results["object store"].startswith(
        "? s3_endpoint=http://minio.lan:9000: no Service lan/minio (port 9000) in this cluster; "
        "as a host outside it, not checked from here"
    )
    # No object store at all: the default fails, naming it.
    client.CoreV1Api(apiserver_admin).delete_namespaced_service("minio-service", "kubeflow")
    status, results = check(capsys)
    assert status == 1
    assert results["object store"].startswith(
        "✗ KFP's object store: no Service kubeflow/seaweedfs (port 8333) or Service "
        "kubeflow/minio-service (port 9000) in this cluster. Fix: "
    )
    # A claim needs no object store.
    status, results = check(capsys, "--logs-pvc", "tb-logs")
    assert results["object store"] == "✓ not needed for logs at pvc://tb-logs/tensorboard"


@pytest.mark.apiserver
def test_a_logs_claim_one_node_can_mount_is_refused(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    core = client.CoreV1Api(apiserver_admin)
    status, results = check(capsys, "--logs-pvc", "tb-logs")
    assert status == 0
    assert results["logs claim"] == f"✓ claim {cluster}/tb-logs is ReadWriteMany"

    core.create_namespaced_persistent_volume_claim(cluster, claim_body("rwo", "ReadWriteOnce"))
    status, results = check(capsys, "--logs-pvc", "rwo")
    assert status == 1
    assert results["logs claim"].startswith(
        f"✗ claim {cluster}/rwo is ReadWriteOnce: training and the TensorBoard pod may land on "
        "different nodes"
    )
    assert "Fix: use a ReadWriteMany claim" in results["logs claim"]

    status, results = check(capsys, "--logs-pvc", "missing")
    assert status == 1
    assert results["logs claim"].startswith(f"✗ no PersistentVolumeClaim {cluster}/missing")

    # --logs-pvc with an s3:// root: the training pod mounts the claim all the same, and
    # would never be scheduled without it; only the TensorBoard pod's need for RWX is gone.
    s3_root = ("--tensorboard-logs-root", f"s3://mlpipeline/private/{cluster}/tensorboard")
    status, results = check(capsys, "--logs-pvc", "missing", *s3_root)
    assert status == 1
    assert results["logs claim"].startswith(f"✗ no PersistentVolumeClaim {cluster}/missing")
    status, results = check(capsys, "--logs-pvc", "rwo", *s3_root)
    assert (status, results["logs claim"]) == (0, f"✓ claim {cluster}/rwo is ReadWriteOnce")


@pytest.mark.apiserver
def test_a_namespace_that_does_not_exist_is_named_as_such(
    cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not "create the secret" (or the claim, the service account, the Role) there, which
    # would fail for the same reason.
    missing = (
        "✗ namespace no-such-team does not exist. Fix: pass --namespace with a Kubeflow "
        "profile's namespace (where runs run)"
    )
    status, results = check(capsys, "--namespace", "no-such-team")
    assert status == 1
    assert results["object-store secret"] == results["launcher RBAC"] == missing
    status, results = check(capsys, "--namespace", "no-such-team", "--logs-pvc", "tb-logs")
    assert (status, results["logs claim"], results["launcher RBAC"]) == (1, missing, missing)
    status, results = check(capsys, "--namespace", "no-such-team", "--nodes", "2")
    assert results["TrainJob RBAC"] == missing


@pytest.mark.apiserver
def test_the_object_store_secret(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    core = client.CoreV1Api(apiserver_admin)
    core.replace_namespaced_secret(SECRET, cluster, secret_body(accesskey="minio"))

    status, results = check(capsys)
    assert status == 1
    assert results["object-store secret"].startswith(
        f"✗ secret {cluster}/{SECRET} has no value for secretkey. Fix: recreate it with both keys: "
    )
    # Empty is no value either: the pods would get an empty key.
    core.replace_namespaced_secret(SECRET, cluster, secret_body(accesskey="a", secretkey=""))
    status, results = check(capsys)
    assert "has no value for secretkey" in results["object-store secret"]

    core.delete_namespaced_secret(SECRET, cluster)
    status, results = check(capsys)
    assert status == 1
    assert results["object-store secret"].startswith(f"✗ no secret {SECRET} in namespace {cluster}")
    assert f"kubectl -n {cluster} create secret generic {SECRET}" in results["object-store secret"]

    # Another secret by parameter, or logs on a claim, which needs none.
    core.create_namespaced_secret(
        cluster, {**secret_body(accesskey="a", secretkey="b"), "metadata": {"name": "other"}}
    )
    status, results = check(capsys, "--s3-credentials-secret", "other")
    assert (status, results["object-store secret"][0]) == (0, "✓")
    status, results = check(capsys, "--logs-pvc", "tb-logs")
    assert status == 0
    assert results["object-store secret"] == "✓ not needed for logs at pvc://tb-logs/tensorboard"


@pytest.mark.apiserver
def test_launcher_rbac(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    rbac = client.RbacAuthorizationV1Api(apiserver_admin)
    role_name = "kfp-lightning-tensorboard-launcher"
    role = rbac.read_namespaced_role(role_name, cluster)
    role.rules = [r for r in role.rules if r.api_groups != ["kubeflow.org"]]
    for r in role.rules:
        r.verbs = ["create", "get"]
    rbac.replace_namespaced_role(role_name, cluster, role)

    status, results = check(capsys)
    assert status == 1
    line = results["launcher RBAC"]
    assert line.startswith(
        f"✗ {cluster}/default-editor may not delete tensorboards.tensorboard.kubeflow.org, "
        "create/get/delete poddefaults.kubeflow.org (the live TensorBoard step falls back"
    ), line
    assert line.endswith(f"Fix: kubectl apply -n {cluster} -f {RBAC_MANIFEST}")

    rbac.delete_namespaced_role_binding(role_name, cluster)
    status, results = check(capsys)
    assert status == 1
    assert results["launcher RBAC"].startswith(
        f"✗ {cluster}/default-editor may not create/get/delete "
        "tensorboards.tensorboard.kubeflow.org, create/get/delete poddefaults.kubeflow.org"
    )

    # Another account, bound by the command the fix gives.
    apply_documents(
        apiserver_admin, list(yaml.safe_load_all((REPO / RBAC_MANIFEST).read_text())), cluster
    )
    status, results = check(capsys, "--service-account", "pipeline-runner")
    assert status == 1
    assert results["launcher RBAC"].startswith(f"✗ no service account {cluster}/pipeline-runner")
    client.CoreV1Api(apiserver_admin).create_namespaced_service_account(
        cluster, {"metadata": {"name": "pipeline-runner"}}
    )
    status, results = check(capsys, "--service-account", "pipeline-runner")
    assert status == 1
    assert f"--serviceaccount={cluster}:pipeline-runner" in results["launcher RBAC"]
    rbac.create_namespaced_role_binding(
        cluster,
        {
            "metadata": {"name": "runner"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": "pipeline-runner"}],
        },
    )
    status, results = check(capsys, "--service-account", "pipeline-runner")
    assert (status, results["launcher RBAC"][0]) == (0, "✓")


@pytest.mark.apiserver
def test_a_user_who_may_not_ask_gets_unknowns_not_failures(
    cluster: str,
    kube_apiserver: KubeAPIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # alice is authenticated and granted nothing: discovery works, the rest is unknown.
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "alice", "alice", cluster)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    status, results = check(capsys)

    assert status == 0
    assert results["Tensorboard CRD"].startswith("✓")
    for name in ("object-store secret", "launcher RBAC", "training node", "KFP backend"):
        assert results[name].startswith("? "), results[name]
    # The server's own words, in the wording every refusal uses.
    assert 'HTTP 403: nodes is forbidden: User "alice" cannot list' in results["training node"]


@pytest.mark.apiserver
def test_gpu_nodes(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    # The GPU node's taint, not tolerated.
    status, results = check(capsys, "--tolerations", "[]")
    assert status == 1
    assert results["training node"].startswith(
        "✗ nodes with at least 1 allocatable nvidia.com/gpu exist, but none can take the "
        f"training pod ({GPU_NODE}: taint nvidia.com/gpu=present:NoSchedule not tolerated). "
        "Fix: add tolerations for those taints"
    )
    # A node selector its labels do not match; then one they do.
    status, results = check(
        capsys, "--node-selector", '{"cloud.google.com/gke-accelerator": "a100"}'
    )
    assert status == 1
    assert (
        f"{GPU_NODE}: label cloud.google.com/gke-accelerator=a100 missing (has nvidia-l4)"
        in results["training node"]
    )
    status, results = check(capsys, "--node-selector", json.dumps(GPU_LABELS))
    assert (status, results["training node"][0]) == (0, "✓")

    # No GPU node now: unknown for a GPU run, since an autoscaled pool may be scaled to zero;
    # a CPU run (gpus=0) still finds a node.
    client.CoreV1Api(apiserver_admin).delete_node(GPU_NODE)
    status, results = check(capsys)
    assert status == 0
    assert results["training node"].startswith(
        "? no node has 1 allocatable nvidia.com/gpu now (most on one node: 0, of 1 nodes). To "
        "check: make sure a cluster autoscaler adds nodes with 1 GPU(s) (a pool scaled to zero"
    )
    status, results = check(capsys, "--gpus", "0")
    assert status == 0
    assert results["training node"] == f"✓ 1 node(s) reachable, no GPU needed (gpus=0): {CPU_NODE}"


@pytest.fixture
def core(cluster: str, apiserver_admin: client.ApiClient) -> client.CoreV1Api:
    """The ready cluster's core API, its nodes removed: each test adds its own."""
    core = client.CoreV1Api(apiserver_admin)
    core.delete_collection_node()
    return core


@pytest.mark.apiserver
def test_gpu_node_taints_the_scheduler_honours(
    core: client.CoreV1Api, apiserver_admin: client.ApiClient
) -> None:
    tolerations = TOLERATE_GPU
    # PreferNoSchedule keeps no pod away; NoExecute does; a cordoned node is unschedulable.
    add_node(apiserver_admin, "prefer", 1, taints=[{"key": "spot", "effect": "PreferNoSchedule"}])
    result = preflight.check_gpu_nodes(apiserver_admin, 1, {}, tolerations)
    assert (result.status, result.detail) == (
        Status.PASSED,
        "1 node(s) with at least 1 allocatable nvidia.com/gpu reachable: prefer",
    )
    core.delete_node("prefer")
    add_node(apiserver_admin, "evicting", 1, taints=[{"key": "maint", "effect": "NoExecute"}])
    add_node(apiserver_admin, "cordoned", 1, unschedulable=True)
    result = preflight.check_gpu_nodes(apiserver_admin, 1, {}, tolerations)
    assert result.status is Status.FAILED
    assert (
        "cordoned: not ready or not schedulable (node.kubernetes.io/unschedulable:NoSchedule)"
        in (result.detail)
    )
    assert "evicting: taint maint:NoExecute not tolerated" in result.detail
    everything = [{"operator": "Exists"}]
    result = preflight.check_gpu_nodes(apiserver_admin, 1, {}, everything)
    assert result.status is Status.PASSED
    assert result.detail.endswith("reachable: cordoned, evicting")


@pytest.mark.apiserver
def test_quotas_and_limit_ranges_that_would_refuse_the_training_pod(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    core = client.CoreV1Api(apiserver_admin)
    status, results = check(capsys)
    assert results["quota"] == f"✓ no ResourceQuota or LimitRange in {cluster}"
    # A profile's resourceQuotaSpec, as the profile controller makes it; the quota controller
    # does not run here, so `used` is set by hand.
    hard = {"requests.nvidia.com/gpu": "2", "limits.memory": "40Gi", "cpu": "8"}
    quota = {"metadata": {"name": "kf-resource-quota"}, "spec": {"hard": hard}}
    core.create_namespaced_resource_quota(cluster, quota)
    used = {"requests.nvidia.com/gpu": "1", "limits.memory": "0", "cpu": "0"}
    core.patch_namespaced_resource_quota_status(
        "kf-resource-quota", cluster, {"status": {"hard": hard, "used": used}}
    )
    status, results = check(capsys)
    assert (status, results["quota"][0]) == (0, "✓")
    status, results = check(capsys, "--gpus", "2")
    assert status == 1
    assert results["quota"].startswith(
        "✗ the training pod would be refused: quota kf-resource-quota: requests.nvidia.com/gpu "
        "1 of 2 used, 1 x 2 more needed. Fix: ask the namespace's admin to raise the quota"
    )
    # Several nodes take one pod each: 3 x 16Gi of memory limits is more than 40Gi.
    status, results = check(capsys, "--nodes", "3", "--gpus", "0")
    assert (
        "quota kf-resource-quota: limits.memory 0 of 40Gi used, 3 x 16Gi more needed"
        in (results["quota"])
    )
    # A CPU limit no LimitRange defaults; a container maximum under the pod's memory limit.
    core.create_namespaced_resource_quota(
        cluster, {"metadata": {"name": "cpu-limits"}, "spec": {"hard": {"limits.cpu": "64"}}}
    )
    limits = [{"type": "Container", "max": {"memory": "8Gi"}}]
    core.create_namespaced_limit_range(
        cluster, {"metadata": {"name": "caps"}, "spec": {"limits": limits}}
    )
    status, results = check(capsys)
    assert status == 1
    assert "quota cpu-limits needs limits.cpu, which the pod does not set" in results["quota"]
    assert "a LimitRange caps a container's memory limit at 8Gi, not 16Gi" in results["quota"]


# Each: quotas' `hard`s (with scopes), LimitRange items; the real admission plugins decide.
ADMISSION_CASES = {
    "gpu-quota": ([{"requests.nvidia.com/gpu": "0"}], []),
    "count-pods": ([{"count/pods": "0"}], []),
    "limits-cpu-no-default": ([{"limits.cpu": "64"}], []),
    "limits-cpu-default-over-quota": (
        [{"limits.cpu": "2"}],
        [{"type": "Container", "default": {"cpu": "4"}}],
    ),
    "best-effort-scope": ([{"pods": "0", "scopes": ["BestEffort"]}], []),
    "not-terminating-scope": ([{"pods": "0", "scopes": ["NotTerminating"]}], []),
    "terminating-scope": ([{"pods": "0", "scopes": ["Terminating"]}], []),
    "not-best-effort-scope": ([{"pods": "0", "scopes": ["NotBestEffort"]}], []),
    "ratio-memory": ([], [{"type": "Container", "maxLimitRequestRatio": {"memory": "2"}}]),
    "ratio-cpu": ([], [{"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}}]),
    "pod-max-memory": ([], [{"type": "Pod", "max": {"memory": "8Gi"}}]),
    "pod-max-cpu": ([], [{"type": "Pod", "max": {"cpu": "1"}}]),
    "container-min-cpu": ([], [{"type": "Container", "min": {"cpu": "4"}}]),
    "container-default-cpu": ([], [{"type": "Container", "default": {"cpu": "1"}}]),
    "container-max-cpu": ([], [{"type": "Container", "max": {"cpu": "1"}}]),
    "roomy": (
        [{"cpu": "64", "memory": "64Gi", "limits.memory": "64Gi", "limits.cpu": "64"}],
        [{"type": "Container", "default": {"cpu": "4"}, "max": {"memory": "32Gi"}}],
    ),
}


@pytest.mark.apiserver
@pytest.mark.parametrize("case", ADMISSION_CASES)
def test_the_quota_line_agrees_with_the_api_servers_admission(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    quotas, limits = ADMISSION_CASES[case]
    core = client.CoreV1Api(apiserver_admin)
    for i, hard in enumerate(quotas):
        spec = {"hard": {k: v for k, v in hard.items() if k != "scopes"}}
        spec["scopes"] = hard.get("scopes")
        core.create_namespaced_resource_quota(
            cluster, {"metadata": {"name": f"q{i}"}, "spec": spec}
        )
        # No quota controller runs here: its status, as it would write it for an empty namespace.
        status = {"hard": spec["hard"], "used": dict.fromkeys(spec["hard"], "0")}
        core.patch_namespaced_resource_quota_status(f"q{i}", cluster, {"status": status})
    if limits:
        body = {"metadata": {"name": "limits"}, "spec": {"limits": limits}}
        core.create_namespaced_limit_range(cluster, body)
    # The truth: the training pod as the pipeline makes it (a deadline; the pod's resources
    # with one GPU), created as a dry run, through the ResourceQuota and LimitRanger plugins.
    container = {"name": "main", "image": "trainer", "resources": training_pod.resources(1)}
    spec = {"containers": [container], "activeDeadlineSeconds": 3600}
    spec |= {"serviceAccountName": "default-editor", "automountServiceAccountToken": False}
    pod = {"metadata": {"name": "training"}, "spec": spec}

    status, results = check(capsys)
    mark = "✓" if admitted(core, cluster, pod) else "✗"
    assert results["quota"][0] == mark, (case, results["quota"])


def admitted(core: client.CoreV1Api, namespace: str, pod: dict) -> bool:
    """Whether the API server would admit `pod` (a dry run: nothing is stored)."""
    try:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    except client.ApiException as err:
        if err.status not in (403, 422):  # refused by admission, or invalid once defaulted
            raise
        return False
    return True


@pytest.mark.apiserver
def test_the_taint_fix_keeps_the_tolerations_given(
    core: client.CoreV1Api, apiserver_admin: client.ApiClient
) -> None:
    # --tolerations replaces the whole list: a fix that named only the new taint would drop
    # the GPU toleration, and the node would refuse the pod again.
    dedicated = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
    add_node(apiserver_admin, "pool", 1, taints=[GPU_TAINT, dedicated])
    result = preflight.check_gpu_nodes(apiserver_admin, 1, {}, TOLERATE_GPU)
    assert result.status is Status.FAILED
    assert f"(now {json.dumps(TOLERATE_GPU)}): --tolerations '[..., " in result.fix
    followed = [*TOLERATE_GPU, {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    assert preflight.check_gpu_nodes(apiserver_admin, 1, {}, followed).status is Status.PASSED


@pytest.mark.apiserver
def test_a_node_too_small_or_of_another_arch_cannot_take_the_pod(
    core: client.CoreV1Api, apiserver_admin: client.ApiClient
) -> None:
    add_node(apiserver_admin, "small", 1)
    small = {"cpu": "1", "memory": "2Gi", "pods": "110", "nvidia.com/gpu": "1"}
    core.patch_node_status("small", {"status": {"allocatable": small}})
    add_node(apiserver_admin, "grace", 1, {"kubernetes.io/arch": "arm64"})
    result = preflight.check_gpu_nodes(apiserver_admin, 1, {}, TOLERATE_GPU)
    assert result.status is Status.FAILED
    assert "grace: arch arm64" in result.detail
    assert "small: allocatable cpu 1 < 2 requested, allocatable memory 2Gi < 4Gi requested" in (
        result.detail
    )
    assert "use nodes with at least 2 CPUs and 4Gi of memory allocatable" in result.fix
    assert "use amd64 nodes: the images are built for linux/amd64 only" in result.fix
    add_node(apiserver_admin, "x86", 1, {"kubernetes.io/arch": "amd64"})
    # The scheduler may still pick the arm64 node: the pod must name its architecture.
    result = preflight.check_gpu_nodes(apiserver_admin, 1, {}, TOLERATE_GPU)
    assert result.status is Status.FAILED
    assert result.detail.endswith(
        "reachable: x86; but also grace, of another architecture, where the images cannot run"
    )
    assert result.fix == 'add "kubernetes.io/arch": "amd64" to --node-selector'
    pinned = {"kubernetes.io/arch": "amd64"}
    result = preflight.check_gpu_nodes(apiserver_admin, 1, pinned, TOLERATE_GPU)
    assert result.status is Status.PASSED
    assert result.detail.endswith("reachable: x86")


@pytest.mark.apiserver
def test_no_node_at_all_is_unknown_for_a_cpu_run_too(core: client.CoreV1Api) -> None:
    result = preflight.check_gpu_nodes(core.api_client, 0, {}, TOLERATE_GPU)
    assert (result.status, result.detail) == (Status.UNKNOWN, "no node at all now")
    assert result.fix == "make sure a cluster autoscaler adds nodes"


@pytest.mark.apiserver
def test_gpu_nodes_with_room_for_every_training_pod(
    core: client.CoreV1Api, apiserver_admin: client.ApiClient
) -> None:
    tolerations = TOLERATE_GPU
    add_node(apiserver_admin, "one-gpu", 1)
    add_node(apiserver_admin, "two-gpus", 2)
    dedicated = {"key": "dedicated", "value": "other", "effect": "NoSchedule"}
    add_node(apiserver_admin, "elsewhere", 4, taints=[dedicated])
    # Pods of one GPU: one node takes one, the other two. Of two GPUs: only the second fits.
    for gpus, pods, room in [(1, 3, None), (1, 4, 3), (2, 1, None), (2, 2, 1)]:
        result = preflight.check_gpu_nodes(apiserver_admin, gpus, {}, tolerations, pods)
        if room is None:
            assert result.status is Status.PASSED, result.detail
            # What was asked for, which a node with more GPUs offers too.
            assert result.detail.startswith(f"{3 - gpus} node(s) with at least {gpus} allocatable")
        else:  # unknown: a cluster autoscaler may add nodes once the pods wait
            assert result.status is Status.UNKNOWN
            assert result.detail.endswith(
                f"; room for {room} of the {pods} training pods (2 cpu, 4Gi memory, {gpus} "
                "nvidia.com/gpu each) on the nodes there now"
            )
            assert result.fix.endswith(f"or train on at most {room} with --nodes")
    # The node whose taint they do not tolerate counts once they do.
    everything = [{"operator": "Exists"}]
    assert preflight.check_gpu_nodes(apiserver_admin, 1, {}, everything, 7).status is (
        Status.PASSED
    )
    assert preflight.check_gpu_nodes(apiserver_admin, 1, {}, everything, 8).status is (
        Status.UNKNOWN
    )
    # CPU pods share a node, as far as its CPUs and memory go: 8 CPUs hold 4 pods of 2.
    assert preflight.check_gpu_nodes(apiserver_admin, 0, {}, tolerations, 8).status is (
        Status.PASSED
    )
    result = preflight.check_gpu_nodes(apiserver_admin, 0, {}, tolerations, 9)
    assert result.status is Status.UNKNOWN
    assert "room for 8 of the 9 training pods (2 cpu, 4Gi memory each)" in result.detail
    # GPUs to spare, CPUs for one pod only.
    core.patch_node_status("two-gpus", {"status": {"allocatable": {"cpu": "3"}}})
    result = preflight.check_gpu_nodes(apiserver_admin, 1, {}, tolerations, 3)
    assert result.status is Status.UNKNOWN
    assert "room for 2 of the 3 training pods" in result.detail


@pytest.mark.apiserver
@pytest.mark.parametrize(
    ("condition", "effect"),
    [
        ("not-ready", "NoSchedule"),
        ("not-ready", "NoExecute"),
        ("unreachable", "NoExecute"),
        ("memory-pressure", "NoSchedule"),
        ("disk-pressure", "NoSchedule"),
        ("pid-pressure", "NoSchedule"),
        ("network-unavailable", "NoSchedule"),
        ("uninitialized", "NoSchedule"),  # the cloud controller's
        ("shutdown", "NoSchedule"),
    ],
)
def test_a_node_in_a_bad_condition_is_never_advised_to_be_tolerated(
    core: client.CoreV1Api, apiserver_admin: client.ApiClient, condition: str, effect: str
) -> None:
    cloud = condition in ("uninitialized", "shutdown")
    taint = {"key": f"node.{'cloudprovider.' if cloud else ''}kubernetes.io/{condition}"}
    taint["effect"] = effect
    add_node(apiserver_admin, "sick", 1, taints=[taint])

    result = preflight.check_gpu_nodes(apiserver_admin, 1, {}, TOLERATE_GPU)

    assert result.status is Status.FAILED
    assert f"sick: not ready or not schedulable ({taint['key']}:{effect})" in result.detail
    assert "toleration" not in result.fix.replace("must not tolerate", "")
    assert "--tolerations" not in result.fix
    assert "ready and schedulable again" in result.fix


@pytest.mark.apiserver
def test_kfp_backend_version(
    cluster: str, apiserver_admin: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.AppsV1Api(apiserver_admin).delete_namespaced_deployment("ml-pipeline", "kubeflow")
    status, results = check(capsys)
    assert status == 0  # unknown is not a failure
    assert results["KFP backend"] == (
        "? no deployment kubeflow/ml-pipeline: version unknown (not a failure). To check: pass "
        "the namespace Kubeflow Pipelines runs in with --kfp-namespace"
    )
    put_ml_pipeline(apiserver_admin, "kfp-standalone", "2.17.0")
    status, results = check(capsys, "--kfp-namespace", "kfp-standalone")
    assert (status, results["KFP backend"][0]) == (0, "✓")
    assert "2.17.0" in results["KFP backend"]
    put_ml_pipeline(apiserver_admin, "kfp-standalone", "latest")
    status, results = check(capsys, "--kfp-namespace", "kfp-standalone")
    assert status == 0
    assert results["KFP backend"].startswith("? image ghcr.io/kubeflow/kfp-api-server:latest has")


# --- the rules, without a server -------------------------------------------------------------


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        (
            {"key": "k", "operator": "Exists", "effect": "NoSchedule"},
            GPU_TAINT | {"key": "k"},
            True,
        ),
        ({"key": "nvidia.com/gpu", "operator": "Exists"}, GPU_TAINT, True),
        ({"operator": "Exists"}, GPU_TAINT, True),
        ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, GPU_TAINT, True),
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "other"}, GPU_TAINT, False),
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, GPU_TAINT, False),
        ({"key": "other", "operator": "Exists"}, GPU_TAINT, False),
    ],
)
def test_tolerations_match_taints_as_kubernetes_does(
    toleration: dict, taint: dict, expected: bool
) -> None:
    assert tolerates(toleration, taint) is expected


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("ghcr.io/kubeflow/kfp-api-server:2.5.0", (2, 5, 0)),
        ("gcr.io/ml-pipeline/api-server:2.0.5", (2, 0, 5)),
        ("registry.local:5000/kfp-api-server:v2.14.3@sha256:" + "0" * 64, (2, 14, 3)),
        ("registry.local:5000/kfp-api-server", None),
        ("ghcr.io/kubeflow/kfp-api-server:latest", None),
    ],
)
def test_backend_version_from_the_image_tag(image: str, version: tuple | None) -> None:
    assert preflight.image_version(image) == version


def test_a_file_that_is_no_kubeconfig_is_one_line_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_kubeconfig = tmp_path / "hostname"
    not_a_kubeconfig.write_text("build-host\n")
    monkeypatch.setenv("KUBECONFIG", str(not_a_kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    with pytest.raises(SystemExit) as exited:
        cli.main(["--check-cluster"])

    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert f"and {not_a_kubeconfig} is not a usable kubeconfig (" in err
    assert err.count("\n") == 1


class _DropsOpenAPI(http.server.BaseHTTPRequestHandler):
    """An API server whose OpenAPI documents never arrive: the connection drops on each read.

    It answers /version, serves trainjobs in discovery (so the TrainJob dry run goes ahead) and
    404 to everything else, so every check before the dry run gets an answer.
    """

    def do_GET(self) -> None:
        if self.path.startswith("/openapi/"):
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if self.path.rstrip("/") == "/version":
            keys = ("major", "minor", "gitVersion", "gitCommit", "gitTreeState", "buildDate")
            body = {**dict.fromkeys(keys, "1"), "goVersion": "go", "compiler": "gc"}
            body |= {"platform": "linux/amd64", "gitVersion": "v1.31.0"}
        elif "/serviceaccounts/" in self.path:
            body = {"kind": "ServiceAccount", "metadata": {"name": self.path.split("/")[-1]}}
        elif self.path == "/apis/trainer.kubeflow.org/v1alpha1":
            resource = {"name": "trainjobs", "kind": "TrainJob", "namespaced": True}
            body = {"kind": "APIResourceList", "groupVersion": "trainer.kubeflow.org/v1alpha1"}
            body["resources"] = [{**resource, "singularName": "", "verbs": ["create"]}]
        else:
            body = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
        payload = json.dumps(body).encode()
        self.send_response(404 if body.get("code") == 404 else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET  # noqa: N815 - http.server dispatches on the method name

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_api_that_stops_answering_midway_is_one_line(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropsOpenAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", host)
    try:
        done = run_cli("--nodes", "2", env={"KUBECONFIG": str(kubeconfig)})
    finally:
        server.shutdown()
        server.server_close()

    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith(f"Kubernetes v1.31.0 at {host}, namespace default")
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: the Kubernetes API server at {host} stopped answering: ")
    assert "openapi" in line
