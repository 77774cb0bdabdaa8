"""Kubeflow Trainer v2.1.0's CRDs (../shared/schemas/kubeflow-trainer-v2.1.0/), as shipped and
as the test API server can serve them.

The test API server is Kubernetes v1.20, older than these CRDs: it refuses them as shipped
(measured: `default: ""` on name fields, and list-map keys without defaults). The copy it gets
has every `x-kubernetes-validations` (CEL rules, which v1.20 cannot run anyway),
`x-kubernetes-list-type`, `x-kubernetes-list-map-keys` and `x-kubernetes-map-type`, and every
`default: ""`, removed; the rest of the structural schema (types, required fields, enums,
patterns) is enforced by the server as in a real cluster. Our objects are also validated
client-side against the untouched schema (tests/test_trainjob_objects.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.apiserver.server import delete_crd, install_crd

TRAINER_SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "schemas"
TRAINER_SCHEMAS = TRAINER_SCHEMAS / "kubeflow-trainer-v2.1.0"
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


def shipped(file_name: str) -> dict[str, Any]:
    """A manifest from the shared Trainer schemas, as shipped."""
    return yaml.safe_load((TRAINER_SCHEMAS / file_name).read_text())


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


def object_schema(file_name: str) -> dict[str, Any]:
    """The served version's openAPIV3Schema of a shipped CRD, closed to unknown fields."""
    (version,) = shipped(file_name)["spec"]["versions"]
    return closed(version["schema"]["openAPIV3Schema"])  # type: ignore[return-value]


def install_trainer(admin: client.ApiClient) -> None:
    """Installs the stripped CRDs (when missing) and the `torch-distributed` runtime as shipped."""
    for file_name in (TRAINJOB_CRD, RUNTIME_CRD):
        install_crd(admin, stripped_for_old_servers(shipped(file_name)))
    runtime = shipped(TORCH_DISTRIBUTED)
    group, version = runtime["apiVersion"].split("/")
    api = client.CustomObjectsApi(admin)
    try:
        api.create_cluster_custom_object(group, version, "clustertrainingruntimes", runtime)
    except ApiException as err:
        if err.status != 409:
            raise
        name = runtime["metadata"]["name"]
        current = api.get_cluster_custom_object(group, version, "clustertrainingruntimes", name)
        if current["spec"] != runtime["spec"]:  # a test changed it: put the shipped one back
            runtime["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            api.replace_cluster_custom_object(
                group, version, "clustertrainingruntimes", name, runtime
            )


def uninstall_trainer_crd(admin: client.ApiClient, file_name: str) -> None:
    """Deletes one of the CRDs (and so every object of its kind)."""
    crd = shipped(file_name)
    delete_crd(admin, crd["metadata"]["name"])
