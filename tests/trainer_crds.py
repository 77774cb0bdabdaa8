"""Kubeflow Trainer's CRDs and `torch-distributed` runtime (../shared/schemas/kubeflow-trainer-
v<version>/, v2.0.0 to v2.3.0), as shipped and as the test API server can serve them.

The test API server is Kubernetes v1.20, older than these CRDs: it refuses them as shipped
(measured: `default: ""` on name fields, and list-map keys without defaults). The copy it gets
has every `x-kubernetes-validations` (CEL rules, which v1.20 cannot run anyway),
`x-kubernetes-list-type`, `x-kubernetes-list-map-keys` and `x-kubernetes-map-type`, and every
`default: ""`, removed; the rest of the structural schema (types, required fields, enums,
patterns, and the fields it knows, so pruning) is enforced by the server as in a real cluster.
Our objects are also validated client-side against the untouched schema
(tests/test_trainjob_objects.py).

One Trainer at a time: installing another version replaces the CRDs (and so deletes every
object of their kinds), and waits until the server publishes the new TrainJob schema in its
OpenAPI document, which it rebuilds some time after the CRD changes.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.apiserver.server import delete_crd, install_crd

SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "schemas"
DEFAULT_VERSION = "kubeflow-trainer-v2.1.0"
VERSIONS = tuple(f"kubeflow-trainer-v2.{minor}.0" for minor in range(4))
TRAINER_SCHEMAS = SCHEMAS / DEFAULT_VERSION
TRAINJOB_CRD = "trainer.kubeflow.org_trainjobs.yaml"
RUNTIME_CRD = "trainer.kubeflow.org_clustertrainingruntimes.yaml"
TORCH_DISTRIBUTED = "torch_distributed.yaml"
STRIPPED_KEYS = frozenset(
    {
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
    }
)
# Marks which version's CRD the test server holds, so a test asking for another replaces it.
VERSION_ANNOTATION = "kfp-lightning.test/trainer-schemas"
PUBLISH_TIMEOUT_SECONDS = 120


def version_dir(version: str | Path = DEFAULT_VERSION) -> Path:
    """The folder of one Trainer version: a path, or a folder name of ../shared/schemas."""
    path = Path(version)
    return path if path.is_absolute() else SCHEMAS / path


def shipped(file_name: str, version: str | Path = DEFAULT_VERSION) -> dict[str, Any]:
    """A manifest from the shared Trainer schemas of `version`, as shipped."""
    return yaml.safe_load((version_dir(version) / file_name).read_text())


def stripped_for_old_servers(crd: dict[str, Any]) -> dict[str, Any]:
    """`crd` without what a v1.20 API server refuses (see the module docstring)."""

    def strip(node: object) -> object:
        if isinstance(node, dict):
            return {
                key: strip(value)
                for key, value in node.items()
                if key not in STRIPPED_KEYS and not (key == "default" and value == "")
            }
        if isinstance(node, list):
            return [strip(value) for value in node]
        return node

    return strip(copy.deepcopy(crd))  # type: ignore[return-value]


def closed(schema: object) -> object:
    """`schema` with `additionalProperties: false` wherever it lists properties, so a misspelt
    field fails validation (the API server would silently prune it)."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [closed(v) for v in schema]
    return schema


def object_schema(file_name: str, version: str | Path = DEFAULT_VERSION) -> dict[str, Any]:
    """The served version's openAPIV3Schema of a shipped CRD, closed to unknown fields."""
    (served,) = shipped(file_name, version)["spec"]["versions"]
    return closed(served["schema"]["openAPIV3Schema"])  # type: ignore[return-value]


def _installed_version(admin: client.ApiClient, name: str) -> str | None:
    """The VERSION_ANNOTATION of the installed CRD `name`; "" when unmarked, None when absent."""
    try:
        answer = client.ApiextensionsV1Api(admin).read_custom_resource_definition(
            name, _preload_content=False
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    annotations = json.loads(answer.data)["metadata"].get("annotations") or {}
    return annotations.get(VERSION_ANNOTATION, "")


def _published_spec_fields(admin: client.ApiClient) -> set[str]:
    """The TrainJob spec fields the server's OpenAPI v2 document lists now."""
    answer = admin.call_api(
        "/openapi/v2",
        "GET",
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    for schema in json.loads(answer.data).get("definitions", {}).values():
        kinds = schema.get("x-kubernetes-group-version-kind") or []
        if any(k.get("kind") == "TrainJob" for k in kinds):
            return set(schema.get("properties", {}).get("spec", {}).get("properties", {}))
    return set()


def install_trainer(admin: client.ApiClient, version: str | Path = DEFAULT_VERSION) -> None:
    """Installs one Trainer version: its stripped CRDs (replacing another version's) and its
    `torch-distributed` runtime as shipped, and waits until the server publishes its schema.

    Args:
        admin: An admin client.
        version: A folder of ../shared/schemas (`kubeflow-trainer-v2.2.0`) or a path to one.
    """
    folder = version_dir(version)
    for file_name in (TRAINJOB_CRD, RUNTIME_CRD):
        crd = stripped_for_old_servers(shipped(file_name, folder))
        crd["metadata"].setdefault("annotations", {})[VERSION_ANNOTATION] = folder.name
        installed = _installed_version(admin, crd["metadata"]["name"])
        if installed is not None and installed != folder.name:
            delete_crd(admin, crd["metadata"]["name"])
        install_crd(admin, crd)
    wanted = set(
        shipped(TRAINJOB_CRD, folder)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"
        ]["spec"]["properties"]
    )
    deadline = time.monotonic() + PUBLISH_TIMEOUT_SECONDS
    while _published_spec_fields(admin) != wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"TrainJob schema of {folder.name} not published in OpenAPI v2")
        time.sleep(0.5)
    runtime = shipped(TORCH_DISTRIBUTED, folder)
    group, api_version = runtime["apiVersion"].split("/")
    api = client.CustomObjectsApi(admin)
    try:
        api.create_cluster_custom_object(group, api_version, "clustertrainingruntimes", runtime)
    except ApiException as err:
        if err.status != 409:
            raise
        name = runtime["metadata"]["name"]
        current = api.get_cluster_custom_object(group, api_version, "clustertrainingruntimes", name)
        if current["spec"] != runtime["spec"]:  # a test changed it: put the shipped one back
            runtime["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            api.replace_cluster_custom_object(
                group, api_version, "clustertrainingruntimes", name, runtime
            )


def uninstall_trainer_crd(
    admin: client.ApiClient, file_name: str, version: str | Path = DEFAULT_VERSION
) -> None:
    """Deletes one of the CRDs (and so every object of its kind)."""
    crd = shipped(file_name, version)
    delete_crd(admin, crd["metadata"]["name"])
