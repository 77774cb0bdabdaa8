"""The TensorBoard launcher against a real kube-apiserver and etcd (tests/apiserver/).

What the hand-written server of tests/fake_kubernetes.py cannot prove: that Kubeflow's CRDs are
served as shipped, that the API server stores the launcher's objects exactly as sent (a
structural schema silently prunes unknown fields) and that the launcher notices when it does not,
that the shipped Role is all the pipeline's service account needs and that each of its rules is
needed (decided by the real RBAC authorizer, for a real service-account token), and that a
retry replaces (delete, then create) only an object that differs. The launcher runs as the
component runs it: `launch_tensorboard` with $KUBECONFIG and $POD_NAMESPACE set, as the service
account `default-editor`.
"""

from __future__ import annotations

import copy
import json
import secrets
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.common import images
from kfp_lightning.components.common.kubernetes import (
    ObjectNotEnsuredError,
    Patience,
    ensure_object,
)
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.launch_tensorboard.launcher import (
    LAUNCHER_PERMISSIONS,
    RBAC_MANIFEST,
    Launch,
    launch_from_run_form,
)
from kfp_lightning.components.launch_tensorboard.objects import (
    PODDEFAULT_API,
    TENSORBOARD_API,
    poddefault_label,
    poddefault_name,
    poddefault_object,
    tensorboard_object,
)
from tests.apiserver.server import (
    KUBEFLOW_CRDS,
    KubeAPIServer,
    apply_documents,
    delete_crd,
    ensure_namespace,
    install_crd,
    kubeflow_crd,
)
from tests.conftest import REPO

pytestmark = pytest.mark.apiserver

RUN_ID = "3f0c9a52-7d1e-4b8a-9c55-0e6f2d4b1a77"
NAME = f"kfp-run-{RUN_ID}"
S3_ROOT = "s3://mlpipeline/private/{namespace}/tensorboard"
ENDPOINT = "http://minio-service.kubeflow:9000"
SECRET = "mlpipeline-minio-artifact"
SERVICE_ACCOUNT = "default-editor"
FAST = Patience(attempts=2, backoff_seconds=0.05, poll_seconds=0.05, delete_timeout_seconds=5)


def rbac_documents() -> list[dict]:
    """The shipped Role and RoleBinding."""
    return list(yaml.safe_load_all((REPO / RBAC_MANIFEST).read_text()))


@pytest.fixture
def namespace(apiserver_admin: client.ApiClient, kubeflow_crds: None) -> str:
    """A new namespace of its own for each test, the CRDs installed."""
    name = f"launch-{secrets.token_hex(4)}"
    ensure_namespace(apiserver_admin, name)
    return name


def as_service_account(
    server: KubeAPIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, namespace: str
) -> str:
    """Points the standard configuration at `server` as the run's pod would see it.

    Returns:
        The service account's user name.
    """
    user = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", user, namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", namespace)
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    return user


def launch(directory: Path, **overrides: object) -> tuple[Launch, str]:
    """Runs the launcher with the component's defaults and `overrides`; returns its note."""
    params: dict = {
        "run_id": RUN_ID,
        "tensorboard_logs_root": S3_ROOT,
        "s3_endpoint": ENDPOINT,
        "s3_credentials_secret": SECRET,
        "kubeflow_base_url": "/",
        "wait_ready_seconds": 0,  # no controller here: it never becomes ready
        **overrides,
    }
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / "tensorboard.md"
    ui = directory / "ui.json"
    result = launch_from_run_form(markdown, ui, params["run_id"], params, patience=FAST)
    return result, markdown.read_text()


def read(admin: client.ApiClient, resource: tuple[str, str, str, str], ns: str, name: str) -> dict:
    group, version, plural, _ = resource
    return client.CustomObjectsApi(admin).get_namespaced_custom_object(
        group, version, ns, plural, name
    )


def listed(admin: client.ApiClient, resource: tuple[str, str, str, str], ns: str) -> list[dict]:
    group, version, plural, _ = resource
    api = client.CustomObjectsApi(admin)
    return api.list_namespaced_custom_object(group, version, ns, plural)["items"]


def assert_stored_as_sent(stored: dict, sent: dict) -> None:
    """The server kept every field we sent: nothing pruned, nothing rewritten."""
    assert stored["spec"] == sent["spec"]
    assert stored["metadata"]["labels"] == sent["metadata"]["labels"]
    assert stored["metadata"].get("annotations", {}) == sent["metadata"].get("annotations", {})


# --- the CRDs -------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", KUBEFLOW_CRDS)
def test_kubeflow_crds_are_served_as_shipped(
    apiserver_admin: client.ApiClient, kubeflow_crds: None, file_name: str
) -> None:
    shipped = kubeflow_crd(file_name)
    name = shipped["metadata"]["name"]
    answer = client.ApiextensionsV1Api(apiserver_admin).read_custom_resource_definition(
        name, _preload_content=False
    )
    stored = json.loads(answer.data)
    # v1.20 accepted the manifest untouched: every version's schema is stored as written.
    for wanted, kept in zip(shipped["spec"]["versions"], stored["spec"]["versions"], strict=True):
        assert kept["schema"] == wanted["schema"]
        assert kept.get("subresources") == wanted.get("subresources")
    group, version = shipped["spec"]["group"], shipped["spec"]["versions"][0]["name"]
    resources = client.CustomObjectsApi(apiserver_admin).get_api_resources(group, version)
    assert shipped["spec"]["names"]["plural"] in [r.name for r in resources.resources]


def test_the_server_prunes_unknown_fields_and_rejects_missing_ones(
    apiserver_admin: client.ApiClient, namespace: str
) -> None:
    # Why "stored as sent" matters: a misspelt field is dropped without an error.
    group, version, plural, _ = TENSORBOARD_API
    api = client.CustomObjectsApi(apiserver_admin)
    body = tensorboard_object(
        namespace, RUN_ID, parse_logs_root("s3://tb-bucket/logs").child(RUN_ID)
    )
    body["spec"]["logsPath"] = "s3://tb-bucket/other"
    body["metadata"]["labels"]["extra"] = "kept"
    stored = api.create_namespaced_custom_object(group, version, namespace, plural, body)
    assert stored["spec"] == {"logspath": f"s3://tb-bucket/logs/{RUN_ID}"}
    assert stored["metadata"]["labels"]["extra"] == "kept"

    body["metadata"]["name"] = "no-logspath"
    body["spec"] = {"logsPath": "s3://tb-bucket/other"}
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(group, version, namespace, plural, body)
    assert refused.value.status == 422
    assert "spec.logspath: Required value" in json.loads(refused.value.body)["message"]


# --- the launcher with the shipped RBAC -----------------------------------------------------


def test_shipped_role_lets_the_launcher_create_then_a_retry_changes_nothing(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apply_documents(apiserver_admin, rbac_documents(), namespace)
    as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)

    first, markdown = launch(tmp_path / "first")

    assert (first.state, first.detail) == ("starting", "created"), markdown
    assert first.url == f"/tensorboard/{namespace}/{NAME}/"
    location = parse_logs_root(S3_ROOT, namespace).child(RUN_ID)
    sent_poddefault = poddefault_object(namespace, ENDPOINT, SECRET)
    sent_tensorboard = tensorboard_object(
        namespace, RUN_ID, location, sent_poddefault["metadata"]["name"]
    )
    poddefault = read(apiserver_admin, PODDEFAULT_API, namespace, poddefault_name(ENDPOINT, SECRET))
    tensorboard = read(apiserver_admin, TENSORBOARD_API, namespace, NAME)
    assert_stored_as_sent(poddefault, sent_poddefault)
    assert_stored_as_sent(tensorboard, sent_tensorboard)
    versions = (
        poddefault["metadata"]["resourceVersion"],
        tensorboard["metadata"]["resourceVersion"],
    )

    retry, markdown = launch(tmp_path / "retry")

    assert (retry.state, retry.detail) == ("starting", "unchanged"), markdown
    assert [o["metadata"]["name"] for o in listed(apiserver_admin, TENSORBOARD_API, namespace)] == [
        NAME
    ]
    assert len(listed(apiserver_admin, PODDEFAULT_API, namespace)) == 1
    after = (
        read(apiserver_admin, PODDEFAULT_API, namespace, poddefault_name(ENDPOINT, SECRET)),
        read(apiserver_admin, TENSORBOARD_API, namespace, NAME),
    )
    assert tuple(o["metadata"]["resourceVersion"] for o in after) == versions


def test_a_namespace_being_deleted_is_named_not_taken_for_rbac(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A profile deleted during a run: no controller runs here, so it stays Terminating, and
    # the NamespaceLifecycle plugin answers the writes 403, though the role allows them.
    apply_documents(apiserver_admin, rbac_documents(), namespace)
    as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)
    client.CoreV1Api(apiserver_admin).delete_namespace(namespace)

    result, markdown = launch(tmp_path / "out")

    assert result.state == "fallback"
    assert f"The namespace {namespace} is being deleted (HTTP 403: " in markdown
    assert "may not manage" not in markdown


def test_a_label_someone_else_added_is_no_difference(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apply_documents(apiserver_admin, rbac_documents(), namespace)
    as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)
    launch(tmp_path / "first")
    group, version, plural, _ = TENSORBOARD_API
    client.CustomObjectsApi(apiserver_admin).patch_namespaced_custom_object(
        group, version, namespace, plural, NAME, {"metadata": {"labels": {"owner": "someone"}}}
    )
    before = read(apiserver_admin, TENSORBOARD_API, namespace, NAME)["metadata"]

    retry, markdown = launch(tmp_path / "retry")

    assert (retry.state, retry.detail) == ("starting", "unchanged"), markdown
    after = read(apiserver_admin, TENSORBOARD_API, namespace, NAME)["metadata"]
    assert (after["uid"], after["resourceVersion"]) == (before["uid"], before["resourceVersion"])


def test_a_differing_object_is_deleted_and_created_again_without_patch(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shipped Role grants no patch or update: only create, get and delete.
    role = rbac_documents()[0]
    assert not {"patch", "update"} & {v for r in role["rules"] for v in r["verbs"]}
    apply_documents(apiserver_admin, rbac_documents(), namespace)
    as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)
    launch(tmp_path / "first")
    # An older format or a hand edit: another PodDefault selector, another logs path.
    api = client.CustomObjectsApi(apiserver_admin)
    pd_name = poddefault_name(ENDPOINT, SECRET)
    group, version, plural, _ = PODDEFAULT_API
    api.patch_namespaced_custom_object(
        group,
        version,
        namespace,
        plural,
        pd_name,
        {"spec": {"selector": {"matchLabels": {"kfp-lightning/s3-access": pd_name}}}},
    )
    group, version, plural, _ = TENSORBOARD_API
    api.patch_namespaced_custom_object(
        group, version, namespace, plural, NAME, {"spec": {"logspath": "s3://else/logs"}}
    )
    old_uids = {
        r[2]: read(apiserver_admin, r, namespace, n)["metadata"]["uid"]
        for r, n in ((PODDEFAULT_API, pd_name), (TENSORBOARD_API, NAME))
    }

    retry, markdown = launch(tmp_path / "retry")

    assert (retry.state, retry.detail) == ("starting", "replaced"), markdown
    assert "was replaced" in markdown
    location = parse_logs_root(S3_ROOT, namespace).child(RUN_ID)
    sent_poddefault = poddefault_object(namespace, ENDPOINT, SECRET)
    stored_poddefault = read(apiserver_admin, PODDEFAULT_API, namespace, pd_name)
    stored_tensorboard = read(apiserver_admin, TENSORBOARD_API, namespace, NAME)
    assert_stored_as_sent(stored_poddefault, sent_poddefault)
    assert_stored_as_sent(
        stored_tensorboard, tensorboard_object(namespace, RUN_ID, location, pd_name)
    )
    assert stored_poddefault["metadata"]["uid"] != old_uids["poddefaults"]
    assert stored_tensorboard["metadata"]["uid"] != old_uids["tensorboards"]


# --- the web apps' PodDefault convention ------------------------------------------------------


def test_the_web_apps_would_offer_and_apply_our_poddefault(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apply_documents(apiserver_admin, rbac_documents(), namespace)
    as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)
    launch(tmp_path / "out")
    [poddefault] = listed(apiserver_admin, PODDEFAULT_API, namespace)
    tensorboard = read(apiserver_admin, TENSORBOARD_API, namespace, NAME)

    # The Notebook and Tensorboards web apps (kubeflow/notebooks, notebooks-v1,
    # components/crud-web-apps/{jupyter/backend/apps/common,tensorboards/backend/app}/routes/
    # get.py) list a PodDefault under the first key of its selector's matchLabels; choosing it
    # labels the pod (or Tensorboard) with that key and "true" (jupyter .../form.py,
    # set_notebook_configurations; tensorboards .../utils.py, get_tensorboard_configurations).
    offered = next(iter(poddefault["spec"]["selector"]["matchLabels"]))
    chosen_labels = {offered: "true"}
    selector = poddefault["spec"]["selector"]["matchLabels"]
    assert selector == chosen_labels  # a pod the web apps label is selected, and only by that
    assert offered == poddefault_label(poddefault["metadata"]["name"])
    # Our own Tensorboard carries the very label the web apps would give it.
    assert tensorboard["metadata"]["labels"][offered] == "true"


# --- what the server stores ------------------------------------------------------------------


def test_a_pruned_field_is_an_error_naming_the_object_and_field(
    apiserver_admin: client.ApiClient, namespace: str
) -> None:
    api = client.CustomObjectsApi(apiserver_admin)
    wanted = tensorboard_object(namespace, RUN_ID, parse_logs_root("s3://tb-bucket/logs"))
    wanted["spec"]["logsPath"] = "s3://tb-bucket/misspelt"  # not in the CRD's schema

    with pytest.raises(ObjectNotEnsuredError) as error:
        ensure_object(api, TENSORBOARD_API, wanted, FAST)

    assert str(error.value) == (
        f"the API server stored Tensorboard {namespace}/{NAME} without `spec.logsPath` as sent "
        "(pruned or rewritten: its CRD's schema does not know the field, or a webhook changed it)"
    )


@pytest.fixture
def tensorboard_crd_without_logspath(apiserver_admin: client.ApiClient, kubeflow_crds: None):
    """The Tensorboard CRD replaced by one whose spec knows another field; restored after."""
    crd = kubeflow_crd("tensorboard.kubeflow.org_tensorboards.yaml")
    name = crd["metadata"]["name"]
    delete_crd(apiserver_admin, name)
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"] = {"logsPath": {"type": "string"}}
        spec.pop("required", None)
    install_crd(apiserver_admin, crd)
    yield
    delete_crd(apiserver_admin, name)  # the kubeflow_crds fixture installs the shipped one again


def test_the_launcher_falls_back_when_the_server_prunes_a_field(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    tensorboard_crd_without_logspath: None,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apply_documents(apiserver_admin, rbac_documents(), namespace)
    as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)

    result, markdown = launch(tmp_path / "out")

    assert result.state == "fallback"
    assert f"Tensorboard {namespace}/{NAME} without `spec.logspath` as sent" in markdown
    assert f"kubectl apply -n {namespace} -f -" in markdown


# --- narrower roles: the task succeeds, and its note names the RBAC cause --------------------


def narrowed(documents: list[dict], rules: list[dict]) -> list[dict]:
    """The shipped Role and RoleBinding, the Role granting only `rules`."""
    role, binding = copy.deepcopy(documents)
    role["rules"] = rules
    return [role, binding]


def rule(group: str, plural: str, *verbs: str) -> dict:
    return {"apiGroups": [group], "resources": [plural], "verbs": list(verbs)}


@pytest.mark.parametrize(
    ("rules", "refused"),
    [
        (  # no poddefaults at all
            [rule("tensorboard.kubeflow.org", "tensorboards", "create", "get", "delete")],
            'cannot create resource "poddefaults" in API group "kubeflow.org"',
        ),
        (  # may read Tensorboards, not create them
            [
                rule("kubeflow.org", "poddefaults", "create", "get", "delete"),
                rule("tensorboard.kubeflow.org", "tensorboards", "get"),
            ],
            'cannot create resource "tensorboards" in API group "tensorboard.kubeflow.org"',
        ),
    ],
    ids=["no-poddefaults", "no-create-tensorboards"],
)
def test_a_narrower_role_falls_back_naming_the_rbac_cause(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rules: list[dict],
    refused: str,
) -> None:
    apply_documents(apiserver_admin, narrowed(rbac_documents(), rules), namespace)
    user = as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)

    result, markdown = launch(tmp_path / "out")

    assert result.state == "fallback"
    assert f'User "{user}" {refused}' in markdown
    assert RBAC_MANIFEST in markdown
    assert f"kubectl apply -n {namespace} -f -" in markdown
    assert listed(apiserver_admin, TENSORBOARD_API, namespace) == []


@pytest.mark.parametrize(
    ("group", "plural", "verb"),
    [(group, plural, verb) for group, plural, verbs in LAUNCHER_PERMISSIONS for verb in verbs],
)
def test_every_permission_of_the_shipped_role_is_needed(
    kube_apiserver: KubeAPIServer,
    apiserver_admin: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    group: str,
    plural: str,
    verb: str,
) -> None:
    # Objects that differ and a pvc:// root make the launcher use every permission it has;
    # without any one of them, the note names it.
    role, binding = rbac_documents()
    for granted in role["rules"]:
        if granted["apiGroups"] == [group] and granted["resources"] == [plural]:
            granted["verbs"] = [v for v in granted["verbs"] if v != verb]
    role["rules"] = [r for r in role["rules"] if r["verbs"]]
    apply_documents(apiserver_admin, [role, binding], namespace)
    user = as_service_account(kube_apiserver, tmp_path, monkeypatch, namespace)
    add_claim(apiserver_admin, namespace, "tb-logs", ["ReadWriteMany"])
    location = parse_logs_root("pvc://tb-logs/runs").child(RUN_ID)
    stale_poddefault = poddefault_object(namespace, ENDPOINT, SECRET)
    stale_poddefault["spec"]["env"] = []
    stale_tensorboard = tensorboard_object(namespace, RUN_ID, location)
    stale_tensorboard["spec"]["logspath"] = "pvc://tb-logs/elsewhere"
    api = client.CustomObjectsApi(apiserver_admin)
    for resource, body in (
        (PODDEFAULT_API, stale_poddefault),
        (TENSORBOARD_API, stale_tensorboard),
    ):
        api.create_namespaced_custom_object(resource[0], resource[1], namespace, resource[2], body)

    if plural == "poddefaults":
        result, markdown = launch(tmp_path / "out")  # s3:// writes the PodDefault
    else:
        result, markdown = launch(tmp_path / "out", tensorboard_logs_root="pvc://tb-logs/runs")

    refusal = f'User "{user}" cannot {verb} resource "{plural}"'
    assert refusal in markdown
    if plural == "persistentvolumeclaims":  # the claim is only checked: the run goes on
        assert (result.state, result.detail) == ("starting", "replaced"), markdown
    else:
        assert result.state == "fallback", markdown


def add_claim(
    admin: client.ApiClient,
    namespace: str,
    name: str,
    modes: list[str],
    bound: list[str] | None = None,
) -> None:
    """A PersistentVolumeClaim asking for `modes`; `bound`: the volume's modes in its status."""
    core = client.CoreV1Api(admin)
    body = {
        "metadata": {"name": name},
        "spec": {"accessModes": modes, "resources": {"requests": {"storage": "1Gi"}}},
    }
    core.create_namespaced_persistent_volume_claim(namespace, body)
    if bound is not None:
        status = {
            "status": {"phase": "Bound", "accessModes": bound, "capacity": {"storage": "1Gi"}}
        }
        core.patch_namespaced_persistent_volume_claim_status(name, namespace, status)
