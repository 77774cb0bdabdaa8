"""`--compare-runs`: one Kubeflow TensorBoard over every run's logs, on a real API server."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import subprocess
import sys

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.common.errors import RunError, UserInputError
from kfp_lightning.components.common.kubernetes import Patience
from kfp_lightning.components.launch_tensorboard.launcher import LAUNCHER_PERMISSIONS
from kfp_lightning.components.launch_tensorboard.objects import (
    PODDEFAULT_API,
    PODDEFAULT_LABEL_PREFIX,
    TENSORBOARD_API,
)
from kfp_lightning.pipelines.compare import ALL_RUNS_NAME, open_runs_tensorboard
from kfp_lightning.pipelines.parameters import validate_parameters
from tests.apiserver.server import ADMIN, KubeAPIServer, ensure_namespace
from tests.conftest import REPO
from tests.test_preflight import claim_body, put_object_store, secret_body

pytestmark = pytest.mark.apiserver

NAMESPACE = "team-a"
FAST = Patience(attempts=2, backoff_seconds=0.05, poll_seconds=0.05)


def values(**overrides: object) -> dict:
    return validate_parameters(overrides)


def launcher_user(server: KubeAPIServer, admin: client.ApiClient, name: str, anywhere: bool) -> str:
    """A service account of NAMESPACE with the launcher's rights and no others: in NAMESPACE
    (a Role, as a profile grants), or in every namespace (a ClusterRole); returns its user."""
    user = f"system:serviceaccount:{NAMESPACE}:{name}"
    server.token(user)  # creates the ServiceAccount
    rules = [
        {"apiGroups": [group], "resources": [plural], "verbs": list(verbs)}
        for group, plural, verbs in LAUNCHER_PERMISSIONS
    ]
    kind = "ClusterRole" if anywhere else "Role"
    role = {"metadata": {"name": name}, "rules": rules}
    binding = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
    }
    rbac = client.RbacAuthorizationV1Api(admin)
    with contextlib.suppress(ApiException):  # one per session's server
        if anywhere:
            rbac.create_cluster_role(role)
            rbac.create_cluster_role_binding(binding)
        else:
            rbac.create_namespaced_role(NAMESPACE, role)
            rbac.create_namespaced_role_binding(NAMESPACE, binding)
    return user


def put_secret(admin: client.ApiClient) -> None:
    """The object store's keys in NAMESPACE, as Kubeflow puts them in every profile's."""
    with contextlib.suppress(ApiException):  # one per session's server
        client.CoreV1Api(admin).create_namespaced_secret(
            NAMESPACE, secret_body(accesskey="minio", secretkey="minio123")
        )


def read(admin: client.ApiClient, resource: tuple[str, str, str, str], name: str) -> dict:
    group, version, plural, _ = resource
    return client.CustomObjectsApi(admin).get_namespaced_custom_object(
        group, version, NAMESPACE, plural, name
    )


def endpoint_given_to(api, tensorboard: dict) -> str:
    """The S3_ENDPOINT of the one PodDefault the Tensorboard's labels select."""
    labels = tensorboard["metadata"]["labels"]
    (poddefault,) = [
        key.removeprefix(PODDEFAULT_LABEL_PREFIX)
        for key, value in labels.items()
        if key.startswith(PODDEFAULT_LABEL_PREFIX) and value == "true"
    ]
    env = read(api, PODDEFAULT_API, poddefault)["spec"]["env"]
    return next(e["value"] for e in env if e["name"] == "S3_ENDPOINT")


def test_one_tensorboard_over_the_whole_root(
    kube_apiserver: KubeAPIServer, apiserver_admin, kubeflow_crds, tmp_path, monkeypatch
):
    ensure_namespace(apiserver_admin, NAMESPACE)
    put_object_store(apiserver_admin)  # what `s3_endpoint=auto` finds, asking the API server
    put_secret(apiserver_admin)
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
    assert endpoint_given_to(apiserver_admin, tensorboard) == "http://seaweedfs.kubeflow:8333"
    assert "(created, starting" in out.getvalue()

    # Asked again (another root, say): the same object, brought in line. Waiting for it to be
    # ready (no controller runs here), it says so before the wait rather than after.
    out = io.StringIO()
    open_runs_tensorboard(values(tensorboard_logs_root="s3://other/logs"), None, 1, out, FAST)
    waiting, result = out.getvalue().splitlines()
    assert waiting == (
        f"Tensorboard {NAMESPACE}/{ALL_RUNS_NAME} replaced; waiting up to 1 s for it to be ready"
    )
    assert "(replaced, starting: not ready after 1 s)" in result
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


@pytest.mark.parametrize("reads_secrets", [True, False], ids=["admin", "no-secrets"])
def test_a_namespace_that_does_not_exist_is_named_as_such(
    kube_apiserver: KubeAPIServer,
    apiserver_admin,
    kubeflow_crds,
    tmp_path,
    monkeypatch,
    reads_secrets: bool,
):
    # Not taken for a CRD the cluster lacks (both are served here): found by the secret's read,
    # or, for one who may write the objects anywhere but read no secret, by the first write.
    user = ADMIN
    if not reads_secrets:
        user = launcher_user(kube_apiserver, apiserver_admin, "compare-anywhere", anywhere=True)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "kc", user=user, namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    endpoint = {"s3_endpoint": "http://seaweedfs.kubeflow:8333"}
    # A pvc:// root's claim, found missing, is looked for in a namespace that is missing too.
    claim = {"tensorboard_logs_root": "pvc://logs/tensorboard"}
    for given in [endpoint, claim] if reads_secrets else [endpoint]:
        with pytest.raises(RunError) as raised:
            open_runs_tensorboard(values(**given), "no-such-team", 0, io.StringIO(), FAST)
        assert str(raised.value) == (
            "namespace no-such-team does not exist: pass --namespace with a Kubeflow profile's "
            "namespace (where runs run)"
        )


def test_a_namespace_being_deleted_is_named_not_taken_for_rbac(
    kube_apiserver: KubeAPIServer, apiserver_admin, kubeflow_crds, tmp_path, monkeypatch
):
    # Reads still work there; the first write is refused 403 (NamespaceLifecycle), even to an
    # admin. No controller runs here, so it stays Terminating.
    namespace = f"dying-{secrets.token_hex(4)}"
    ensure_namespace(apiserver_admin, namespace)
    client.CoreV1Api(apiserver_admin).create_namespaced_secret(
        namespace, secret_body(accesskey="minio", secretkey="minio123")
    )
    client.CoreV1Api(apiserver_admin).delete_namespace(namespace)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kube_apiserver.write_kubeconfig(tmp_path / "kc")))
    endpoint = {"s3_endpoint": "http://seaweedfs.kubeflow:8333"}
    with pytest.raises(RunError) as raised:
        open_runs_tensorboard(values(**endpoint), namespace, 0, io.StringIO(), FAST)
    assert str(raised.value) == (
        f"namespace {namespace} is being deleted: pass --namespace with a Kubeflow profile's "
        "namespace (where runs run)"
    )


@pytest.mark.parametrize(
    ("secret", "keys", "refusal"),
    [
        (
            "keys",
            None,
            "no secret keys in namespace team-a, which the TensorBoard pod reads the object "
            "store's keys from: pass --s3-credentials-secret with a secret that has accesskey "
            "and secretkey",
        ),
        (
            "partial",
            {"accesskey": "minio"},
            "secret team-a/partial has no value for secretkey, which the TensorBoard pod reads the "
            "object store's keys from: give it accesskey and secretkey, or pass "
            "--s3-credentials-secret with a secret that has both",
        ),
    ],
    ids=["missing", "without-secretkey"],
)
def test_a_secret_the_tensorboard_cannot_use_is_refused_before_anything_is_created(
    kube_apiserver: KubeAPIServer,
    apiserver_admin,
    kubeflow_crds,
    tmp_path,
    monkeypatch,
    secret: str,
    keys: dict | None,
    refusal: str,
):
    # Its pod would wait for the secret forever, or never start (CreateContainerConfigError),
    # and the command would end well.
    ensure_namespace(apiserver_admin, NAMESPACE)
    core = client.CoreV1Api(apiserver_admin)
    with contextlib.suppress(ApiException):
        core.delete_namespaced_secret(secret, NAMESPACE)
    if keys is not None:
        body = {**secret_body(**keys), "metadata": {"name": secret}}
        core.create_namespaced_secret(NAMESPACE, body)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "kc", namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    given = {"s3_endpoint": "http://seaweedfs.kubeflow:8333", "s3_credentials_secret": secret}
    custom = client.CustomObjectsApi(apiserver_admin)
    group, version, plural, _ = PODDEFAULT_API
    before = custom.list_namespaced_custom_object(group, version, NAMESPACE, plural)["items"]
    with pytest.raises(RunError) as raised:
        open_runs_tensorboard(values(**given), None, 0, io.StringIO(), FAST)
    assert str(raised.value) == refusal
    after = custom.list_namespaced_custom_object(group, version, NAMESPACE, plural)["items"]
    assert after == before


def test_a_local_root_is_refused_before_any_request():
    with pytest.raises(UserInputError, match="invalid tensorboard_logs_root='/tmp/runs'"):
        open_runs_tensorboard(values(tensorboard_logs_root="/tmp/runs"), None, 0, io.StringIO())


def test_auto_unreadable_by_a_profile_user_assumes_the_newest_object_store(
    kube_apiserver: KubeAPIServer, apiserver_admin, kubeflow_crds, tmp_path, monkeypatch
):
    """A profile's owners and contributors may use their namespace, not read Services in
    `kubeflow`: `auto` then means the newest KFP's store, said in one warning line."""
    ensure_namespace(apiserver_admin, NAMESPACE)
    put_object_store(apiserver_admin, "minio-service")  # there, but this user cannot see it
    user = launcher_user(kube_apiserver, apiserver_admin, "compare-user", anywhere=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "kc", user=user, namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    out = io.StringIO()
    open_runs_tensorboard(values(), None, 0, out, FAST)
    warning, unchecked, link = out.getvalue().splitlines()
    assert warning == (
        "warning: s3_endpoint=auto: KFP's object-store Services are not readable with these "
        "credentials; assuming http://seaweedfs.kubeflow:8333 (--s3-endpoint sets it)"
    )
    # Nor may it read secrets: the one it names is not checked, and it says so.
    assert unchecked == (
        f"warning: secret {NAMESPACE}/mlpipeline-minio-artifact, which the TensorBoard pod reads "
        "the object store's keys from, is not readable with these credentials: not checked"
    )
    assert link.startswith("TensorBoard over every run in s3://mlpipeline/private/team-a/")
    tensorboard = read(apiserver_admin, TENSORBOARD_API, ALL_RUNS_NAME)
    assert endpoint_given_to(apiserver_admin, tensorboard) == "http://seaweedfs.kubeflow:8333"


def test_auto_with_no_object_store_service_is_one_line_naming_the_parameter(
    kube_apiserver: KubeAPIServer, apiserver_admin, kubeflow_crds, tmp_path, monkeypatch
):
    ensure_namespace(apiserver_admin, NAMESPACE)
    put_object_store(apiserver_admin)
    client.CoreV1Api(apiserver_admin).delete_namespaced_service("seaweedfs", "kubeflow")
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setenv(
        "KUBECONFIG",
        str(kube_apiserver.write_kubeconfig(tmp_path / "kc", namespace=NAMESPACE)),
    )
    # A fact of the cluster, not a bad value: exit 1, saying what to pass instead.
    with pytest.raises(RunError) as raised:
        open_runs_tensorboard(values(), None, 0, io.StringIO(), FAST)
    message = str(raised.value)
    assert message.startswith("s3_endpoint=auto looks for seaweedfs.kubeflow:8333, ")
    assert message.endswith(
        "none of these Services exists with its port: pass --s3-endpoint "
        "http(s)://host[:port] of the S3 API the run logs to"
    )


def test_a_single_node_claim_is_refused_before_anything_is_created(
    kube_apiserver: KubeAPIServer, apiserver_admin, kubeflow_crds, tmp_path, monkeypatch
):
    """A Tensorboard that never ends, on a ReadWriteOnce claim, pins the claim to its node:
    every later training pod scheduled elsewhere waits on a Multi-Attach error. The per-run
    launcher starts none on such a claim (launcher.py, `shares_across_nodes`); nor does this."""
    ensure_namespace(apiserver_admin, NAMESPACE)
    group, version, plural, _ = TENSORBOARD_API
    custom = client.CustomObjectsApi(apiserver_admin)
    with contextlib.suppress(ApiException):  # left by an earlier test of the session
        custom.delete_namespaced_custom_object(group, version, NAMESPACE, plural, ALL_RUNS_NAME)
    core = client.CoreV1Api(apiserver_admin)
    with contextlib.suppress(ApiException):
        core.create_namespaced_persistent_volume_claim(
            NAMESPACE, claim_body("rwo", "ReadWriteOnce")
        )
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setenv(
        "KUBECONFIG",
        str(kube_apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)),
    )
    # And one that does not exist (or not in this namespace) is said to be missing.
    refusals = {
        "pvc://rwo/tensorboard": "claim team-a/rwo of tensorboard_logs_root is ReadWriteOnce: a "
        "TensorBoard that never ends would hold it on one node and keep training pods on other "
        "nodes waiting on a Multi-Attach error; use a claim several nodes can mount "
        "(ReadWriteMany) or an s3:// root",
        "pvc://gone/tensorboard": "claim team-a/gone of tensorboard_logs_root does not exist: "
        "pass the --namespace it is in, or a claim of this namespace",
    }
    for root, refusal in refusals.items():
        with pytest.raises(RunError) as raised:
            open_runs_tensorboard(values(tensorboard_logs_root=root), None, 0, io.StringIO(), FAST)
        assert str(raised.value) == refusal
        with pytest.raises(ApiException) as missing:
            custom.get_namespaced_custom_object(group, version, NAMESPACE, plural, ALL_RUNS_NAME)
        assert missing.value.status == 404

    # A claim several nodes can mount gets its Tensorboard.
    with contextlib.suppress(ApiException):
        core.create_namespaced_persistent_volume_claim(
            NAMESPACE, claim_body("rwx", "ReadWriteMany")
        )
    open_runs_tensorboard(
        values(tensorboard_logs_root="pvc://rwx/tensorboard"), None, 0, io.StringIO(), FAST
    )
    assert read(apiserver_admin, TENSORBOARD_API, ALL_RUNS_NAME)["spec"]["logspath"] == (
        "pvc://rwx/tensorboard"
    )
