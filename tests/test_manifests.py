"""Every Kubernetes object the project ships or generates, against the real schemas.

Custom objects (Tensorboard, PodDefault) are checked against the CRDs' openAPIV3Schema in
`../shared/schemas/`, closed to unknown fields (the API server would silently prune them);
core objects (Deployment, Service, Role, RoleBinding) against the official Kubernetes schemas
with kubernetes-validate, offline. The shipped RBAC is checked against the permissions the
launcher declares (`LAUNCHER_PERMISSIONS`; the real API server's tests prove each is needed).
"""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kfp_lightning.components.common import images
from kfp_lightning.components.common.kubernetes_syntax import (
    is_dns1123_label,
    is_label_key,
    is_label_value,
)
from kfp_lightning.components.common.logs_location import parse_logs_root
from kfp_lightning.components.launch_tensorboard import fallback
from kfp_lightning.components.launch_tensorboard.fallback import viewer_pod_template
from kfp_lightning.components.launch_tensorboard.launcher import LAUNCHER_PERMISSIONS
from kfp_lightning.components.launch_tensorboard.objects import (
    poddefault_object,
    tensorboard_object,
)
from tests.conftest import REPO, SHARED
from tests.fake_kubernetes import CustomResource

SCHEMAS = SHARED / "schemas"
MANIFESTS = REPO / "manifests"
KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()
NAMESPACE = "team-a"
RUN_ID = "3f0c9a52-7d1e-4b8a-9c55-0e6f2d4b1a77"
S3_LOCATION = parse_logs_root("s3://mlpipeline/private/team-a/tensorboard").child(RUN_ID)
PVC_LOCATION = parse_logs_root("pvc://tb-logs/runs").child(RUN_ID)


def crd_schema(kind: str) -> dict:
    """The CRD's schema with `additionalProperties: false` wherever it lists properties."""

    def close(node: object) -> object:
        if isinstance(node, dict):
            node = {k: close(v) for k, v in node.items()}
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
        elif isinstance(node, list):
            node = [close(v) for v in node]
        return node

    crds = [CustomResource.from_crd(p) for p in SCHEMAS.glob("*.yaml")]
    return close(next(c.schema for c in crds if c.kind == kind))


def shipped_documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}:{doc['kind']}", doc)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]


def rendered_fallback(location: object) -> list[dict]:
    objects = fallback.fallback_objects(location, fallback.DEFAULT_S3_ENDPOINT, "my-secret")
    return list(yaml.safe_load_all(fallback.render_manifest(objects)))


@pytest.fixture(autouse=True)
def default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)


# --- custom objects against the CRDs --------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "obj"),
    [
        ("Tensorboard", tensorboard_object(NAMESPACE, RUN_ID, S3_LOCATION, "kfp-lightning-s3-x")),
        ("Tensorboard", tensorboard_object(NAMESPACE, RUN_ID, PVC_LOCATION)),
        ("Tensorboard", tensorboard_object(NAMESPACE, "Odd_Run/Id " * 20, PVC_LOCATION)),
        ("PodDefault", poddefault_object(NAMESPACE, "https://s3.example.com", "my-secret")),
    ],
    ids=["tensorboard-s3", "tensorboard-pvc", "tensorboard-odd-run-id", "poddefault"],
)
def test_generated_custom_objects_match_their_crd(kind: str, obj: dict) -> None:
    jsonschema.Draft7Validator(crd_schema(kind)).validate(obj)
    # Metadata the API server checks beyond the schema: the name and the labels' syntax.
    meta = obj["metadata"]
    assert is_dns1123_label(meta["name"])
    assert all(is_label_key(k) and is_label_value(v) for k, v in meta["labels"].items())


def test_crd_check_catches_misspelled_and_missing_fields() -> None:
    tensorboard = tensorboard_object(NAMESPACE, RUN_ID, S3_LOCATION)
    tensorboard["spec"] = {"logsPath": tensorboard["spec"]["logspath"]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(crd_schema("Tensorboard")).validate(tensorboard)
    poddefault = poddefault_object(NAMESPACE, "http://minio:9000", "my-secret")
    del poddefault["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(crd_schema("PodDefault")).validate(poddefault)


# --- core objects against the official schemas -------------------------------------------


@pytest.mark.parametrize(
    "doc", [doc for _, doc in shipped_documents()], ids=[name for name, _ in shipped_documents()]
)
def test_shipped_manifests_are_valid_kubernetes_objects(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("location", [S3_LOCATION, PVC_LOCATION], ids=["s3", "pvc"])
def test_rendered_fallback_is_valid_and_cluster_internal(location: object) -> None:
    deployment, service = rendered_fallback(location)
    for doc in (deployment, service):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == images.image_ref(images.TOOLS)
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


@pytest.mark.parametrize("location", [S3_LOCATION, PVC_LOCATION], ids=["s3", "pvc"])
def test_viewer_pod_template_is_a_valid_pod_template(location: object) -> None:
    # The run page's viewer (fallback.py); its controller fills in the container's name and
    # image, as a PodTemplate object needs them here.
    template = viewer_pod_template(location, fallback.DEFAULT_S3_ENDPOINT, "my-secret")
    template["spec"]["containers"][0].update(name="tensorboard", image="tools")
    document = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "viewer"}}
    kubernetes_validate.validate(
        {**document, "template": template}, KUBERNETES_VERSION, strict=True
    )


def test_shipped_clusterip_manifest_is_the_generated_one() -> None:
    shipped = (MANIFESTS / "tensorboard-clusterip.yaml").read_text()
    assert shipped == fallback.shipped_manifest(), (
        "regenerate: python -m kfp_lightning.components.launch_tensorboard.fallback "
        "> manifests/tensorboard-clusterip.yaml"
    )
    deployment = next(yaml.safe_load_all(shipped))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    root = fallback.DEFAULT_LOGS_ROOT.replace("{namespace}", "$(POD_NAMESPACE)")
    assert container["args"][0] == f"--logdir={root}"
    # $(POD_NAMESPACE) is expanded by Kubernetes only from the container's own env.
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in (container["env"])


def test_no_service_is_exposed_outside_the_cluster() -> None:
    services = [doc for _, doc in shipped_documents() if doc["kind"] == "Service"]
    services += [doc for doc in rendered_fallback(PVC_LOCATION) if doc["kind"] == "Service"]
    assert services
    for service in services:
        assert service["spec"]["type"] == "ClusterIP"
        assert all("nodePort" not in port for port in service["spec"]["ports"])


# --- RBAC ---------------------------------------------------------------------------------


def test_role_grants_exactly_what_the_launcher_uses() -> None:
    # That the launcher needs each of these, and nothing else, is proven against the real RBAC
    # authorizer (tests/test_launcher_apiserver.py); here: the Role says what the code declares.
    used = {
        (group, plural, verb) for group, plural, verbs in LAUNCHER_PERMISSIONS for verb in verbs
    }
    assert not {verb for _, _, verb in used} & {"patch", "update"}  # not in Kubeflow's roles

    role, binding = yaml.safe_load_all((MANIFESTS / "tensorboard-launcher-rbac.yaml").read_text())
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == used
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    # Kubeflow Pipelines runs a profile's pipelines as default-editor.
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor"}]
