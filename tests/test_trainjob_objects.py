"""The run's TrainJob against Kubeflow Trainer v2.1.0 to v2.3.0: each CRD as shipped, and runtime.

Validated client-side against the untouched openAPIV3Schema of each version (closed to unknown
fields, which the API server would silently prune), in the form that version serves (v2.1
`spec.podTemplateOverrides`, v2.2+ `spec.runtimePatches`), and against what the Trainer's
admission webhook and controller require of a TrainJob on the `torch-distributed` runtime
(kubeflow/trainer v2.1.0 and v2.2.0: pkg/runtime/framework/plugins/torch/torch.go and
jobset/jobset.go, `Validate`). The API server tests (test_trainjob_apiserver.py,
test_trainjob_versions.py) then store it in a real kube-apiserver.
"""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest
import yaml

from kfp_lightning.components.common.kubernetes import differences
from kfp_lightning.components.common.kubernetes_syntax import is_label_key, is_label_value
from kfp_lightning.components.common.run_layout import entry_arguments
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.distributed import MODULE
from kfp_lightning.components.train_on_nodes.nodes import ENTRY_MODULE
from kfp_lightning.components.train_on_nodes.trainjob import (
    COMPLETE,
    FAILED,
    NODE,
    PATCH_MANAGER,
    RBAC_MANIFEST,
    RESERVED_ENV,
    RUNTIME,
    RUNTIME_API,
    RUNTIME_PATCHES,
    SUSPENDED,
    TEMPLATE_OVERRIDES,
    TRAINJOB_API,
    JobState,
    NodeSpec,
    job_state,
    trainjob_name,
    trainjob_object,
)
from kfp_lightning.pipelines.preflight import TRAINJOB_VERBS
from tests.conftest import REPO
from tests.trainer_crds import (
    RUNTIME_CRD,
    TORCH_DISTRIBUTED,
    TRAINJOB_CRD,
    object_schema,
    shipped,
)

RUN_ID = "3f0c9a52-7d1e-4b8a-9c55-0e6f2d4b1a77"
NAMESPACE = "team-a"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# The CRD's rule for metadata.name (x-kubernetes-validations on the object).
RFC1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# The webhook's rule for a runtime patch's manager (v2.2.0 jobset.go, `Validate`: apimachinery's
# IsDomainPrefixedPath): a DNS-1123 subdomain, "/", then HTTP path characters.
DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
DOMAIN_PREFIXED_PATH = re.compile(DNS1123_SUBDOMAIN + r"/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+")
# Each Trainer version's schemas folder, and the form its TrainJob serves.
FORM_OF = {
    "kubeflow-trainer-v2.1.0": TEMPLATE_OVERRIDES,
    "kubeflow-trainer-v2.2.0": RUNTIME_PATCHES,
    "kubeflow-trainer-v2.3.0": RUNTIME_PATCHES,
}
FORM = TEMPLATE_OVERRIDES  # where one form is enough


def pod_patch(job: dict) -> dict:
    """The node pod template patch of a job, in either form."""
    spec = job["spec"]
    if TEMPLATE_OVERRIDES in spec:
        (override,) = spec[TEMPLATE_OVERRIDES]
        assert override["targetJobs"] == [{"name": NODE}]
        return {k: v for k, v in override.items() if k != "targetJobs"}
    (patch,) = spec[RUNTIME_PATCHES]
    assert patch["manager"] == PATCH_MANAGER
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == NODE
    return replicated["template"]["spec"]["template"]


def node_spec(**changes: object) -> NodeSpec:
    arguments = entry_arguments(
        f"s3://mlpipeline/private/{NAMESPACE}/tensorboard/{RUN_ID}",
        2,
        TrainConfig(),
        "http://minio-service.kubeflow:9000",
        "my run",
        10,
    )
    spec = NodeSpec(
        image="registry.example.com/ml/kfp-lightning-trainer:0.1.0",
        nodes=2,
        processes_per_node=1,
        gpus_per_node=1,
        arguments=arguments,
        module=ENTRY_MODULE,
        s3_secret="mlpipeline-minio-artifact",
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=[GPU_TOLERATION],
        service_account="default-editor",
        image_pull_secrets=("regcred",),
    )
    return NodeSpec(**{**spec.__dict__, **changes})


SPECS = {
    "s3-gpu": node_spec(),
    "pvc": node_spec(s3_secret=None, logs_pvc="tb-logs"),
    "cpu-4-nodes": node_spec(nodes=4, gpus_per_node=0, node_selector={}, tolerations=()),
    "2-gpus-per-node": node_spec(gpus_per_node=2, processes_per_node=2),
    "no-identity": node_spec(service_account=None, image_pull_secrets=()),
}


@pytest.mark.parametrize("version", FORM_OF)
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_trainjob_matches_the_shipped_crd(spec: NodeSpec, version: str) -> None:
    job = trainjob_object(NAMESPACE, RUN_ID, spec, FORM_OF[version])

    jsonschema.Draft7Validator(object_schema(TRAINJOB_CRD, version)).validate(job)
    group, version, _, kind = TRAINJOB_API
    assert (job["apiVersion"], job["kind"]) == (f"{group}/{version}", kind)
    name = job["metadata"]["name"]
    assert RFC1035_LABEL.fullmatch(name)
    assert len(name) <= 63
    # The nodes' pod hostnames, "<name>-node-0-<index>" (jobset.go, IdentifyPodNetwork).
    assert len(f"{name}-{NODE}-0-{spec.nodes - 1}") <= 63
    for labels in (job["metadata"]["labels"], pod_patch(job)["metadata"]["labels"]):
        assert all(is_label_key(k) and is_label_value(v) for k, v in labels.items())


@pytest.mark.parametrize("version", FORM_OF)
def test_each_version_knows_only_its_own_form(version: str) -> None:
    """The other form is what the server would prune: the form must follow the cluster."""
    validator = jsonschema.Draft7Validator(object_schema(TRAINJOB_CRD, version))
    for form in (TEMPLATE_OVERRIDES, RUNTIME_PATCHES):
        job = trainjob_object(NAMESPACE, RUN_ID, node_spec(), form)
        assert validator.is_valid(job) == (form == FORM_OF[version]), form


def test_trainer_v2_0_knows_neither_form() -> None:
    validator = jsonschema.Draft7Validator(object_schema(TRAINJOB_CRD, "kubeflow-trainer-v2.0.0"))
    for form in (TEMPLATE_OVERRIDES, RUNTIME_PATCHES):
        assert not validator.is_valid(trainjob_object(NAMESPACE, RUN_ID, node_spec(), form))
    # What v2.0 has instead cannot carry the pod's annotations nor its pull secrets.
    overrides = shipped(TRAINJOB_CRD, "kubeflow-trainer-v2.0.0")["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]["properties"]["spec"]["properties"]["podSpecOverrides"]["items"]["properties"]
    assert "metadata" not in overrides
    assert "imagePullSecrets" not in overrides


def test_both_forms_carry_the_same_pod_settings() -> None:
    overrides = trainjob_object(NAMESPACE, RUN_ID, node_spec(), TEMPLATE_OVERRIDES)
    patches = trainjob_object(NAMESPACE, RUN_ID, node_spec(), RUNTIME_PATCHES)
    assert pod_patch(overrides) == pod_patch(patches)
    assert {k: v for k, v in overrides["spec"].items() if k != TEMPLATE_OVERRIDES} == {
        k: v for k, v in patches["spec"].items() if k != RUNTIME_PATCHES
    }
    assert DOMAIN_PREFIXED_PATH.fullmatch(PATCH_MANAGER)
    with pytest.raises(ValueError, match="invalid form='podSpecOverrides'"):
        trainjob_object(NAMESPACE, RUN_ID, node_spec(), "podSpecOverrides")


def test_stored_differences_name_every_pruned_or_changed_field() -> None:
    sent = trainjob_object(NAMESPACE, RUN_ID, node_spec(), RUNTIME_PATCHES)
    stored = copy.deepcopy(sent)
    stored["metadata"]["uid"] = "x"  # added by the server: not a difference
    stored["spec"]["runtimePatches"][0]["time"] = "2026-01-01T00:00:00Z"  # the webhook's
    assert differences(sent, stored) == []
    del stored["spec"]["runtimePatches"]
    stored["spec"]["trainer"]["numNodes"] = 3
    stored["spec"]["trainer"]["args"] = stored["spec"]["trainer"]["args"][:-1]
    assert differences(sent, stored) == [
        "spec.trainer.args",
        "spec.trainer.numNodes",
        "spec.runtimePatches",
    ]


def test_the_crd_check_catches_misspelt_and_mistyped_fields() -> None:
    validator = jsonschema.Draft7Validator(object_schema(TRAINJOB_CRD))
    job = trainjob_object(NAMESPACE, RUN_ID, node_spec(), FORM)
    misspelt = copy.deepcopy(job)
    misspelt["spec"]["trainer"]["numNode"] = misspelt["spec"]["trainer"].pop("numNodes")
    mistyped = copy.deepcopy(job)
    mistyped["spec"]["trainer"]["numNodes"] = "two"
    no_runtime = copy.deepcopy(job)
    del no_runtime["spec"]["runtimeRef"]
    for broken in (misspelt, mistyped, no_runtime):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)


def test_the_shipped_runtime_matches_its_crd() -> None:
    jsonschema.Draft7Validator(object_schema(RUNTIME_CRD)).validate(shipped(TORCH_DISTRIBUTED))


@pytest.mark.parametrize("version", FORM_OF)
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_trainjob_suits_the_torch_distributed_runtime(spec: NodeSpec, version: str) -> None:
    runtime = shipped(TORCH_DISTRIBUTED, version)
    job = trainjob_object(NAMESPACE, RUN_ID, spec, FORM_OF[version])
    trainer = job["spec"]["trainer"]

    group, version, _, kind = RUNTIME_API
    assert (runtime["apiVersion"], runtime["kind"]) == (f"{group}/{version}", kind)
    assert job["spec"]["runtimeRef"] == {"apiGroup": group, "kind": kind, "name": RUNTIME}
    assert runtime["metadata"]["name"] == RUNTIME
    assert "torch" in runtime["spec"]["mlPolicy"]
    # The plugin puts trainer.image/command/args/env in the `node` container of the Job whose
    # ancestor label is "trainer" (jobset/builder.go, Trainer), and PET_* beside them.
    jobs = {j["name"]: j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    node_job = jobs[NODE]
    assert node_job["template"]["metadata"]["labels"] == {
        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
    }
    containers = [c["name"] for c in node_job["template"]["spec"]["template"]["spec"]["containers"]]
    assert containers == [NODE]
    # What the webhook refuses (torch.go and jobset.go, Validate).
    assert not {e["name"] for e in trainer["env"]} & RESERVED_ENV
    assert isinstance(trainer["numProcPerNode"], int)
    assert trainer["numProcPerNode"] >= 1
    for container in pod_patch(job)["spec"]["containers"]:
        assert container["name"] in containers
        assert "env" not in container  # refused for the `node` container
        # v2.2's ContainerPatch has only name, env, volumeMounts and securityContext.
        assert set(container) <= {"name", "volumeMounts"}
    # The command is torchrun running our entry point; GPUs per node are the processes' devices.
    assert trainer["command"] == ["torchrun", "--module", MODULE]
    assert trainer["numNodes"] == spec.nodes
    limits = trainer["resourcesPerNode"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(spec.gpus_per_node) if spec.gpus_per_node else None)
    assert trainer["numProcPerNode"] == max(spec.gpus_per_node, 1)


@pytest.mark.parametrize("form", [TEMPLATE_OVERRIDES, RUNTIME_PATCHES])
def test_the_nodes_get_credentials_shared_memory_placement_and_identity(form: str) -> None:
    s3 = trainjob_object(NAMESPACE, RUN_ID, node_spec(), form)
    env = {e["name"]: e for e in s3["spec"]["trainer"]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlpipeline-minio-artifact",
        "key": "accesskey",
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretkey"
    override = pod_patch(s3)
    # Out of a profile namespace's Istio mesh: an injected proxy would keep the pods running.
    assert override["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    pod = override["spec"]
    # The step's account and pull secrets, not the namespace's default account.
    assert pod["serviceAccountName"] == "default-editor"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [GPU_TOLERATION]
    # Arguments are a list: the live logs location and the configuration, never a shell line.
    arguments = s3["spec"]["trainer"]["args"]
    assert arguments[arguments.index("--location") + 1].endswith(f"/{RUN_ID}")

    pvc = trainjob_object(NAMESPACE, RUN_ID, node_spec(s3_secret=None, logs_pvc="tb-logs"), form)
    assert not {e["name"] for e in pvc["spec"]["trainer"]["env"]} & {"AWS_ACCESS_KEY_ID"}
    pod = pod_patch(pvc)["spec"]
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"] == {"claimName": "tb-logs"}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == claim["name"])
    assert mount["mountPath"] == "/mnt/pvc/tb-logs"


@pytest.mark.parametrize(
    "run_id",
    [RUN_ID, "0a" * 30, "Odd_Run/Id with spaces", "9" * 36],
    ids=["uuid", "long", "odd", "digits"],
)
def test_names_are_rfc1035_labels_and_distinct(run_id: str) -> None:
    name = trainjob_name(run_id)
    assert RFC1035_LABEL.fullmatch(name), name
    assert len(name) <= 48
    assert trainjob_name(run_id) == name  # a retry finds its own job
    assert trainjob_name(run_id + "x") != name


def _condition(kind: str, status: str = "True", reason: str = "R", message: str = "") -> dict:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def _jobs(**counts: int) -> list[dict]:
    base = {"active": 0, "failed": 0, "ready": 0, "succeeded": 0, "suspended": 0}
    return [{"name": NODE, **base, **counts}]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, JobState("")),
        ({"jobsStatus": _jobs(active=2, ready=1)}, JobState("", nodes="node 2 active, 1 ready")),
        (
            {"conditions": [_condition(SUSPENDED, reason="Suspended")]},
            JobState(SUSPENDED, "Suspended"),
        ),
        (
            {
                "conditions": [
                    _condition(SUSPENDED, "False", "Resumed"),
                    _condition(COMPLETE, reason="AllJobsCompleted", message="jobset completed"),
                ],
                "jobsStatus": _jobs(succeeded=2),
            },
            JobState(COMPLETE, "AllJobsCompleted", "jobset completed", "node 2 succeeded"),
        ),
        (
            {
                "conditions": [
                    _condition(COMPLETE, "False"),
                    _condition(FAILED, reason="FailedJobs", message="jobset failed"),
                ],
            },
            JobState(FAILED, "FailedJobs", "jobset failed"),
        ),
    ],
    ids=["new", "running", "suspended", "complete", "failed"],
)
def test_job_state_reads_the_status_the_controller_writes(status: dict, expected: JobState) -> None:
    job = trainjob_object(NAMESPACE, RUN_ID, node_spec(), FORM)
    if status:
        job["status"] = status
        # Only statuses the CRD allows: the test speaks the controller's language.
        jsonschema.Draft7Validator(object_schema(TRAINJOB_CRD)).validate(job)
    assert job_state(job) == expected


def test_the_shipped_role_grants_exactly_what_the_step_uses() -> None:
    role, binding = yaml.safe_load_all((REPO / RBAC_MANIFEST).read_text())
    group, _, plural, _ = TRAINJOB_API
    # create: a new job; get: following it; delete: cancellation, the timeout and replacing a
    # failed job; get pods: the step's own pod's pull secrets (each exercised as this account
    # in tests/test_trainjob_apiserver.py).
    assert role["rules"] == [
        {"apiGroups": [group], "resources": [plural], "verbs": ["create", "get", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    ]
    assert tuple(role["rules"][0]["verbs"]) == TRAINJOB_VERBS
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor"}]
