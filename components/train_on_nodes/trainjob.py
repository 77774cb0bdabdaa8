"""A run's Kubeflow Trainer `TrainJob`: the object, and creating, watching and deleting it.

Kubeflow Trainer v2 (`trainer.kubeflow.org/v1alpha1`, v2.1.0 in Kubeflow 1.11 and 26.03) turns
a `TrainJob` that references the `torch-distributed` `ClusterTrainingRuntime` into a JobSet
with one Job of `numNodes` pods, each running `spec.trainer.command` in the runtime's `node`
container with the `PET_*` variables torchrun reads (kubeflow/trainer v2.1.0:
pkg/runtime/framework/plugins/torch/torch.go, `EnforceMLPolicy`; jobset/builder.go, `Trainer`).
The controller copies the JobSet's `Completed` and `Failed` conditions to the TrainJob as
`Complete` and `Failed`, reason and message included (jobset/jobset.go, `Status`).

The pod settings of the nodes (placement, volumes, service account, pull secrets, the Istio
opt-out) travel in a field whose name and shape changed between Trainer releases
(pkg/apis/trainer/v1alpha1/trainjob_types.go of each tag): v2.0.0 `spec.podSpecOverrides`
(a pod spec subset without pod metadata or imagePullSecrets), v2.1.x `spec.podTemplateOverrides`
(pod metadata and spec, by target job), v2.2.0 and later `spec.runtimePatches` (kubeflow/trainer
#3309: patches of the runtime's JobSet template, keyed by `manager`). The API server prunes a
field its CRD does not know without a word, so the form is read from the schema the cluster
serves (`trainjob_form`), and what the server stored is compared with what was sent
(`kubernetes.differences` in components/common/).

Everything here is deterministic in its inputs: the name comes from the run id, so a retried
step finds its own job instead of starting a second one. Writes are retried on transient
failures by the client's urllib3 `Retry` (see `components/common/kubernetes.py`); creating,
reading and deleting a job by name are all safe to repeat.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.common import kubernetes as cluster
from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.kubernetes import Patience, differences
from kfp_lightning.components.common.kubernetes_syntax import digest, is_label_value, name_for_run
from kfp_lightning.components.common.training_pod import environment, resources, volumes

TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
# In the TrainJob's group and version.
RUNTIME_API = (*TRAINJOB_API[:2], "clustertrainingruntimes", "ClusterTrainingRuntime")
RUNTIME = "torch-distributed"
# The runtime's trainer Job and container are both called "node" (kubeflow/trainer v2.1.0,
# manifests/base/runtimes/torch_distributed.yaml; pkg/constants/constants.go, `Node`).
NODE = "node"
# Variables the torch plugin sets itself and refuses in spec.trainer.env (constants.go,
# `TorchRunReservedEnvNames`; torch.go, `Validate`).
RESERVED_ENV = frozenset(
    {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
)
RBAC_MANIFEST = "manifests/trainjob-rbac.yaml"
# Kubeflow's profile controller labels every profile namespace istio-injection=enabled
# (kubeflow/kubeflow, components/profile-controller/controllers/profile_controller.go). An
# injected proxy outlives the training container, so a node's pod, and with it the job, would
# never complete, and it would stand between the nodes' rendezvous; KFP keeps its own pods out
# of the mesh the same way (kubeflow/pipelines 2.5.0, backend/src/apiserver/template/
# argo_template.go).
NO_ISTIO_SIDECAR = {"sidecar.istio.io/inject": "false"}

COMPLETE, FAILED, SUSPENDED = "Complete", "Failed", "Suspended"

# The two forms of pod settings this module writes, named after the TrainJob spec field that
# carries them (see the module docstring).
TEMPLATE_OVERRIDES = "podTemplateOverrides"  # Trainer v2.1.x
RUNTIME_PATCHES = "runtimePatches"  # Trainer v2.2.0 and later
FORMS = (RUNTIME_PATCHES, TEMPLATE_OVERRIDES)  # the newer one wins where both are served
# The owner of our entry in spec.runtimePatches. The Trainer's validating webhook requires a
# domain-prefixed path, "<DNS-1123 subdomain>/<HTTP path characters>" (kubeflow/trainer v2.2.0,
# pkg/runtime/framework/plugins/jobset/jobset.go, `Validate`, calling apimachinery's
# `validation.IsDomainPrefixedPath`); the prefix is the one of our labels.
PATCH_MANAGER = "kfp-lightning/train-on-nodes"
# The step's own container: KFP runs each step as an Argo Workflows container template, whose
# container Argo names "main" (argoproj/argo-workflows, workflow/common/common.go,
# `MainContainerName`).
STEP_CONTAINER = "main"
# A pullable `status.containerStatuses[].imageID`: the kubelet reports the CRI's `imageRef`
# (kubernetes/kubernetes, pkg/kubelet/kuberuntime/kuberuntime_container.go), which containerd
# sets to the image's first repo digest, `repo@sha256:<hex>`, else to its bare config ID
# `sha256:<hex>`, which no registry serves (containerd, internal/cri/server/container_status.go,
# `ContainerStatus`); cri-dockerd prefixes the repo digest with `docker-pullable://`
# (`DockerPullableImageIDPrefix`).
PULLABLE_IMAGE_ID = re.compile(r"(?:docker-pullable://)?[^@/\s][^@\s]*@(sha256:[0-9a-f]{64})")
# Where a cluster publishes the whole API's schemas in OpenAPI v2 (all versions; structural
# CRD schemas since Kubernetes 1.15), readable by every authenticated user through the
# `system:discovery` ClusterRole (kubernetes, plugin/pkg/auth/authorizer/rbac/bootstrappolicy/
# policy.go); `trainjob_form` tries OpenAPI v3 (Kubernetes 1.24 and later) first.
OPENAPI_V2 = "/openapi/v2"


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """What every node of the job runs, and where.

    Attributes:
        image: The trainer image.
        nodes: Nodes (pods) in the job.
        processes_per_node: torchrun processes on each node (its GPUs, or 1 on a CPU node).
        gpus_per_node: `nvidia.com/gpu` limit of each node (0: none).
        arguments: The entry point's arguments, after `torchrun --module <module>`.
        module: The entry point module.
        s3_secret: Secret with the object store's keys, for an s3:// location; None otherwise.
        logs_pvc: A claim to mount at /mnt/pvc/<claim>, for a pvc:// location; None otherwise.
        node_selector: Labels each node's pod must match.
        tolerations: Tolerations of each node's pod.
        service_account: The account the node pods run as (the step's own, so they get what
            the pipeline's pods get); None leaves the namespace's `default`.
        image_pull_secrets: Secrets the node pods pull the image with (the step pod's own).
    """

    image: str
    nodes: int
    processes_per_node: int
    gpus_per_node: int
    arguments: Sequence[str]
    module: str
    s3_secret: str | None = None
    logs_pvc: str | None = None
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    service_account: str | None = None
    image_pull_secrets: Sequence[str] = ()


def trainjob_name(run_id: str) -> str:
    """The name of a run's `TrainJob`: an RFC 1035 label short enough for its pods' hostnames.

    The CRD requires `^[a-z]([-a-z0-9]*[a-z0-9])?$` and at most 63 characters; run ids are
    UUIDs, which may start with a digit, hence the prefix. A run id that is not already
    lowercase alphanumerics and single hyphens is shortened and given a digest of itself, so
    distinct runs never share a job and a retry always finds its own.

    Args:
        run_id: The pipeline run's id.

    Returns:
        `kfp-<run id>`, or `kfp-<shortened id>-<digest>`.
    """
    # Pod hostnames are "<name>-node-0-<index>" (jobset.go, `IdentifyPodNetwork`), at most 63
    # characters: 48 leaves room for a three-digit node index.
    return name_for_run("kfp-", run_id, 48)


def trainjob_object(
    namespace: str, run_id: str, spec: NodeSpec, form: str, task: str = ""
) -> dict[str, Any]:
    """The `TrainJob` of one run, its pod settings in the cluster's form.

    The environment goes in `spec.trainer.env` and the resources in
    `spec.trainer.resourcesPerNode` (the same in every Trainer v2 release); the rest of the
    pod settings in `spec.<form>`, as a pod template patch for the `node` job, the one
    description of them.

    Each Trainer form carries this patch whole, and the Trainer merges it into the runtime's
    `node` pod template as a strategic merge patch (kubeflow/trainer v2.1.0,
    pkg/runtime/core/trainingruntime.go, `mergePodTemplateOverrides`; v2.2.0 the same file,
    `mergeRuntimePatches`), so containers and volumes are matched by name. The container patch
    holds only volume mounts: its environment goes in `spec.trainer.env`, since both forms
    refuse environment for the `node` container (v2.1.0 and v2.2.0,
    pkg/runtime/framework/plugins/jobset/jobset.go, `Validate`), and v2.2's container patch
    has no other field we use (trainjob_types.go, `ContainerPatch`).

    Trainer v2.1's `podTemplateOverrides` target the job by name (kubeflow/trainer v2.1.0,
    pkg/apis/trainer/v1alpha1/trainjob_types.go, `PodTemplateOverride`: `targetJobs`,
    `metadata`, `spec`). Trainer v2.2+'s `runtimePatches` place it at the `node` job's pod
    template (v2.2.0, the same file, `RuntimePatch`:
    `trainingRuntimeSpec.template.spec.replicatedJobs[name].template.spec.template` is a
    `PodTemplatePatch`, pod metadata and a `PodSpecPatch`), in an entry keyed by `manager`,
    to which the Trainer's mutating webhook adds `time` (pkg/webhooks/trainjob_webhook.go).

    Args:
        namespace: The run's namespace.
        run_id: The pipeline run's id.
        spec: What the nodes run, and where.
        form: TEMPLATE_OVERRIDES or RUNTIME_PATCHES, as `trainjob_form` reads it.
        task: The task's key within the run (`config.training_task_key`): with it, each
            training task of a run has a job of its own, which its retries find again.

    Returns:
        The object, ready to create.

    Raises:
        ValueError: `form` is not one of FORMS.
    """
    if form not in FORMS:
        raise ValueError(f"invalid form={form!r}: expected one of {', '.join(FORMS)}")
    group, version, _, kind = TRAINJOB_API
    # The run id as a label value (a digest when it cannot be one), on the job and on every
    # node's pod: `kubectl logs -l` finds them.
    labels = {cluster.RUN_ID_LABEL: run_id if is_label_value(run_id) else digest(run_id)}
    # Per node, the pod settings of the single-node training task (common/training_pod.py).
    pod_volumes, mounts = volumes(spec.logs_pvc)
    optional = {  # each field only where it is set
        "serviceAccountName": spec.service_account,
        "imagePullSecrets": [{"name": name} for name in spec.image_pull_secrets],
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [dict(t) for t in spec.tolerations],
    }
    pod = {
        "metadata": {"labels": labels, "annotations": dict(NO_ISTIO_SIDECAR)},
        "spec": {
            "containers": [{"name": NODE, "volumeMounts": mounts}],
            "volumes": pod_volumes,
            **{field: value for field, value in optional.items() if value},
        },
    }
    job = {"name": NODE, "template": {"spec": {"template": pod}}}
    settings = {
        TEMPLATE_OVERRIDES: {"targetJobs": [{"name": NODE}], **pod},
        RUNTIME_PATCHES: {
            "manager": PATCH_MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}},
        },
    }
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": {
            "name": trainjob_name(f"{run_id}-{task}" if task else run_id),
            "namespace": namespace,
            "labels": {**cluster.MANAGED_BY, **labels},
            "annotations": {cluster.RUN_ID_ANNOTATION: run_id, "kfp-lightning/task": task},
        },
        "spec": {
            "runtimeRef": {"apiGroup": group, "kind": RUNTIME_API[3], "name": RUNTIME},
            "trainer": {
                "image": spec.image,
                "command": ["torchrun", "--module", spec.module],
                "args": list(spec.arguments),
                "numNodes": spec.nodes,
                "numProcPerNode": spec.processes_per_node,
                "resourcesPerNode": resources(spec.gpus_per_node),
                "env": environment(spec.s3_secret),
            },
            form: [settings[form]],
        },
    }


# --- reading a job's state --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobState:
    """Where a `TrainJob` stands, from its status.

    Attributes:
        condition: COMPLETE, FAILED or SUSPENDED when that condition is true, else "".
        reason: The condition's reason.
        message: The condition's message.
        nodes: The node Jobs' pod counts (`status.jobsStatus`), e.g. "2 active, 2 ready", or ""
            before the controller reported any.
    """

    condition: str
    reason: str = ""
    message: str = ""
    nodes: str = ""

    @property
    def detail(self) -> str:
        """The condition's reason and message, "" when it gave neither."""
        return ": ".join(x for x in (self.reason, self.message) if x)

    def describe(self) -> str:
        """One phrase for the step's log."""
        if self.condition:
            state = self.condition.lower() + (f" ({self.detail})" if self.detail else "")
        else:
            state = "running" if self.nodes else "waiting for the Trainer controller"
        return f"{state}; nodes: {self.nodes}" if self.nodes else state


def job_state(trainjob: Mapping[str, Any]) -> JobState:
    """The state of a `TrainJob` as read from the API.

    Args:
        trainjob: The object.

    Returns:
        Its state; a true `Failed` condition wins over the others.
    """
    status = trainjob.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    # The pod counts of each node Job (`status.jobsStatus[]`), in the order the log shows them.
    counts = ("active", "ready", "succeeded", "failed", "suspended")
    nodes = "; ".join(
        f"{job.get('name', '?')} "
        + (", ".join(f"{job[key]} {key}" for key in counts if job.get(key)) or "no pods")
        for job in status.get("jobsStatus") or []
    )
    condition = next((c for c in (FAILED, COMPLETE, SUSPENDED) if c in true), "")
    reason, message = (str(true.get(condition, {}).get(key) or "") for key in ("reason", "message"))
    return JobState(condition, reason, message, nodes)


# --- API calls --------------------------------------------------------------------------------


def explain_refusal(err: ApiException, namespace: str, verb: str) -> RunError:
    """A refused request as one line a user can act on.

    Args:
        err: The API server's answer.
        namespace: The run's namespace.
        verb: What was asked ("create", "read", "delete").

    Returns:
        The error to raise.
    """
    group, version, plural, kind = TRAINJOB_API
    answer = cluster.api_answer(err)
    if "admission webhook" in answer:
        # The Trainer's validating webhook (controller-runtime v0.22.3, pkg/webhook/admission/
        # validator_custom.go and response.go: `Denied`) answers 403 too; it is not RBAC.
        return RunError(f"Kubeflow Trainer refused the {kind} in {namespace} ({answer})")
    if "strict decoding error" in answer or "unknown field" in answer:
        # fieldValidation=Strict (Kubernetes 1.25 and later) refuses a field the CRD's schema
        # does not know instead of pruning it.
        return RunError(
            f"the cluster's {kind} ({group}/{version}) in {namespace} does not know a field the "
            f"nodes need ({answer}): its Kubeflow Trainer release is not one this step supports "
            "(v2.1 or newer)"
        )
    if why := cluster.unusable_namespace(err, namespace):
        return RunError(f"{why} ({answer})")
    if err.status == 404:
        return RunError(
            f"the cluster serves no {plural}.{group}/{version} in namespace {namespace} "
            f"({answer}): install Kubeflow Trainer v2 and its {RUNTIME} runtime (see the "
            "README, Train on several nodes)"
        )
    if err.status in (401, 403):
        return RunError(
            f"the pipeline's service account may not {verb} {plural}.{group} in namespace "
            f"{namespace} ({answer}): apply {RBAC_MANIFEST} (see manifests/README.md)"
        )
    return RunError(f"the Kubernetes API refused to {verb} {kind} in {namespace} ({answer})")


class DeadlinePassed(Exception):  # noqa: N818 - a state, not a fault
    """`TrainJobs.watch`'s deadline passed: its own class, so no socket timeout (a builtin
    TimeoutError) is ever taken for the training timeout."""


class TrainJobs:
    """The run's `TrainJob`s in one namespace, through the API.

    Args:
        api_client: A configured client.
        namespace: The run's namespace.
        patience: Request timeout (the client's `Retry` does the retries) and polling interval.
    """

    def __init__(self, api_client: client.ApiClient, namespace: str, patience: Patience) -> None:
        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.patience = patience

    def _call(self, verb: str, name: str, absent: int = 0, **options: Any) -> Any:
        """The `verb` ("create", "read" or "delete") request of the custom objects API
        (`kubernetes.request`); None when the server answers `absent`, a refusal
        explained (`explain_refusal`) otherwise."""
        where = (self.api, TRAINJOB_API, verb, self.namespace, name)
        try:
            return cluster.request(*where, self.patience.request_timeout_seconds, absent, **options)
        except ApiException as err:
            raise explain_refusal(err, self.namespace, verb) from None

    def create(self, wanted: Mapping[str, Any]) -> dict[str, Any] | None:
        """Creates `wanted` and checks the server stored it as sent; None when a job of that
        name exists already.

        Strict field validation is asked for: servers from Kubernetes 1.25 refuse an unknown
        field instead of pruning it (older ones ignore the option). Either way the stored
        object, as the create answers it and as read back, must hold every field sent: a
        job that lost one is deleted at once, before its nodes run without the setting.

        Raises:
            RunError: The server refused (no CRD, no permission, a webhook's verdict, an
                unknown field), or stored the job without a field sent (then it is deleted).
            ClusterUnreachableError: The API could not be reached.
        """
        name = wanted["metadata"]["name"]
        stored = self._call("create", name, 409, body=wanted, field_validation="Strict")
        if stored is None:
            return None
        lost = differences(wanted, stored) or differences(wanted, self.get(name) or stored)
        if lost:
            self.delete(name)
            raise RunError(
                f"{TRAINJOB_API[3]} {self.namespace}/{name}: the cluster stored it without "
                f"{', '.join(lost)} as sent (its TrainJob schema does not know them): "
                "deleted it, since its nodes would run without these settings; install Kubeflow "
                "Trainer v2.1 or newer, with its own CRDs"
            )
        return stored

    def get(self, name: str) -> dict[str, Any] | None:
        """The job called `name`; None when there is none."""
        return self._call("read", name, 404)

    def delete(self, name: str, foreground: bool = False) -> bool:
        """Deletes the job called `name`.

        Args:
            name: The job.
            foreground: Keep the job until the JobSet, Jobs and pods it owns are gone (so a
                new job of the same name never meets them); otherwise it goes at once and the
                garbage collector removes them after it.

        Returns:
            Whether there was a job to delete.
        """
        options = {"propagationPolicy": "Foreground" if foreground else "Background"}
        return self._call("delete", name, 404, body=options) is not None

    def watch(self, name: str, deadline: float) -> Iterator[dict[str, Any] | None]:
        """Reads the job called `name` (None: there is none) again and again, until the
        caller stops.

        Between two reads it sleeps 1 s, then twice as long each time, at most the polling
        interval, and never past `deadline`.

        Raises:
            DeadlinePassed: `deadline` (monotonic time) passed.
        """
        for polls in itertools.count():
            yield self.get(name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlinePassed(name)
            time.sleep(min(self.patience.poll_seconds, 2.0 ** min(polls, 16), remaining))


# --- the cluster's TrainJob schema ----------------------------------------------------------


def trainjob_form(api_client: client.ApiClient, patience: Patience = Patience()) -> str:
    """Which field carries the node pods' settings in the cluster's TrainJob schema.

    Decided from the schema the cluster serves, not a version: RUNTIME_PATCHES where
    `spec.runtimePatches` exists (Trainer v2.2 and later), else TEMPLATE_OVERRIDES where
    `spec.podTemplateOverrides` does (v2.1). The schema is the one whose
    `x-kubernetes-group-version-kind` is the TrainJob's, from OpenAPI v3, else v2 (any
    authenticated user may read these documents).

    Args:
        api_client: A configured client.
        patience: Request timeout (the client's `Retry` does the retries).

    Returns:
        RUNTIME_PATCHES or TEMPLATE_OVERRIDES.

    Raises:
        RunError: In one line: the server refused to serve its OpenAPI documents, the cluster
            publishes no TrainJob schema (no Trainer CRD, or one without a structural schema),
            or one with neither field (Trainer v2.0's `spec.podSpecOverrides` has no pod
            metadata, so it cannot keep the nodes out of the Istio mesh, and no
            imagePullSecrets).
        ClusterUnreachableError: The API could not be reached.
    """
    group, version, plural, kind = TRAINJOB_API
    document: dict[str, Any] | None = {}
    for path in (f"/openapi/v3/apis/{group}/{version}", OPENAPI_V2):
        try:
            document = cluster.call(
                lambda path=path: api_client.call_api(
                    path,
                    "GET",
                    header_params={"Accept": "application/json"},
                    auth_settings=["BearerToken"],
                    response_type="object",
                    _return_http_data_only=True,
                    _request_timeout=patience.request_timeout_seconds,
                ),
                f"read {path}",
            )
            break
        except ApiException as err:
            if err.status != 404:  # 404: no OpenAPI v3 (before Kubernetes 1.24): read v2
                raise RunError(
                    f"could not read the cluster's API schema {path} "
                    f"({cluster.api_answer(err)}), which every authenticated user may read "
                    "through the system:discovery ClusterRole: ask a cluster admin to restore it"
                ) from None
    # OpenAPI v3 holds the schemas in components.schemas, v2 in definitions.
    document = document or {}
    schemas = document.get("definitions") or (document.get("components") or {}).get("schemas")
    wanted = {"group": group, "version": version, "kind": kind}
    gvk = "x-kubernetes-group-version-kind"
    schema = next((s for s in (schemas or {}).values() if wanted in (s.get(gvk) or [])), None)
    if schema is None:
        raise RunError(
            f"the cluster publishes no schema of {kind} ({plural}.{group}/{version}) in its "
            f"OpenAPI ({OPENAPI_V2}): install Kubeflow Trainer v2.1 or newer and its "
            f"{RUNTIME} runtime (see the README, Train on several nodes)"
        )
    fields = ((schema.get("properties") or {}).get("spec") or {}).get("properties") or {}
    if served := [form for form in FORMS if form in fields]:
        return served[0]  # the newer form where both are served
    older = ""
    if "podSpecOverrides" in fields:
        older = (
            " (Kubeflow Trainer v2.0? its spec.podSpecOverrides cannot carry the pod annotation "
            f"{next(iter(NO_ISTIO_SIDECAR))} nor imagePullSecrets)"
        )
    raise RunError(
        f"the cluster's {kind} ({group}/{version}) has no spec.{TEMPLATE_OVERRIDES} or "
        f"spec.{RUNTIME_PATCHES}{older}: the node pods' settings cannot be given; upgrade to "
        "Kubeflow Trainer v2.1 or newer"
    )


def dry_run_trainjob(
    api_client: client.ApiClient,
    namespace: str,
    wanted: Mapping[str, Any],
    patience: Patience = Patience(),
) -> list[str]:
    """Submits `wanted` as a server-side dry run and compares what would be stored.

    The API server runs the whole create (schema validation and pruning, the Trainer's
    admission webhooks, which declare no side effects) and answers the object it would store,
    storing nothing.

    Args:
        api_client: A configured client (its user needs `create` on trainjobs).
        namespace: The namespace to try it in.
        wanted: The job, as `trainjob_object` builds it.
        patience: Request timeout.

    Returns:
        One line per problem: the server's refusal, or each field it would drop or change;
        empty when it would store the job as sent.

    Raises:
        ClusterUnreachableError: The API could not be reached.
    """
    name = wanted["metadata"]["name"]
    try:
        stored = TrainJobs(api_client, namespace, patience)._call(
            "create", f"{name} (dry run)", body=wanted, dry_run="All", field_validation="Strict"
        )
    except RunError as err:
        return [str(err)]
    return [
        f"{TRAINJOB_API[3]} {namespace}/{name}: the cluster would not store {path} as sent"
        for path in differences(wanted, stored)
    ]


def check_trainjob(
    api_client: client.ApiClient, namespace: str, spec: NodeSpec, patience: Patience = Patience()
) -> list[str]:
    """The preflight's check of the run's real TrainJob: its form, then a dry run of it.

    Args:
        api_client: A configured client.
        namespace: The run's namespace.
        spec: What the nodes would run, and where.
        patience: Request timeout.

    Returns:
        Problems, one line each (empty: the cluster would store the job as built).

    Raises:
        ClusterUnreachableError: The API could not be reached.
    """
    try:
        form = trainjob_form(api_client, patience)
    except RunError as err:
        return [str(err)]
    run_id = f"preflight-{secrets.token_hex(4)}"
    job = trainjob_object(namespace, run_id, spec, form)
    return dry_run_trainjob(api_client, namespace, job, patience)


# --- the step's own pod: its service account and image pull secrets ---------------------------


class PodIdentity(NamedTuple):
    """Who the node pods run as, taken from the step's own pod.

    Attributes:
        service_account: The step pod's service account; None when unknown.
        image_pull_secrets: The step pod's image pull secrets (its own and its account's,
            which the ServiceAccount admission plugin adds to a pod's spec).
        note: One line for the step's log saying what the nodes get and why.
        image: The nodes' image: pinned to the digest the step's container runs when it is
            the step's own image named by tag.
    """

    service_account: str | None
    image_pull_secrets: tuple[str, ...]
    note: str
    image: str


def step_pod_identity(
    api_client: client.ApiClient,
    namespace: str,
    image: str,
    environ: Mapping[str, str] = os.environ,
    patience: Patience = Patience(),
) -> PodIdentity:
    """The step pod's service account, image pull secrets and image digest, for the node pods.

    KFP runs a pipeline's pods as its service account (a profile's `default-editor`), which
    may hold the registry's pull secrets; a TrainJob's pods would run as the namespace's
    `default`. The step's pod names itself through the downward API: `POD_NAME`
    (metadata.name) and `POD_SERVICE_ACCOUNT` (spec.serviceAccountName). Its pull secrets are
    read from the pod itself (GET pods/POD_NAME); where that is not possible the node pods rely
    on the service account, whose pull secrets Kubernetes adds to every pod it runs as.

    A TrainJob cannot give its pods `imagePullPolicy: Always` (neither Trainer v2.1's
    ContainerOverride nor v2.2's ContainerPatch has the field: kubeflow/trainer,
    pkg/apis/trainer/v1alpha1/trainjob_types.go), so a node that pulled an earlier push of the
    same tag would run it. Where the nodes' image is the step's own, named by tag, they get it
    by the digest the step's container runs (`PULLABLE_IMAGE_ID`); else by the tag, with the
    runtime's pull policy.

    Args:
        api_client: A configured client.
        namespace: The step's namespace.
        image: The nodes' image as the pipeline names it.
        environ: Where POD_NAME and POD_SERVICE_ACCOUNT are read.
        patience: Request timeout.

    Returns:
        What the node pods get, and the line saying so.
    """
    account = environ.get("POD_SERVICE_ACCOUNT", "").strip() or None
    pod_name = environ.get("POD_NAME", "").strip()
    reason, pulls, own, pinned = "POD_NAME is unset", None, [], None
    if pod_name:
        where = f"pod {namespace}/{pod_name}"
        try:
            pod = cluster.call(
                lambda: client.CoreV1Api(api_client).read_namespaced_pod(
                    pod_name, namespace, _request_timeout=patience.request_timeout_seconds
                ),
                f"read {where}",
            )
        except ApiException as err:
            reason = f"reading {where} was refused: {cluster.api_answer(err)}"
        except cluster.ClusterUnreachableError as err:
            reason = str(err)
        else:
            account = account or pod.spec.service_account_name or None
            pulls = tuple(s.name for s in pod.spec.image_pull_secrets or [] if s.name)
            own = [c.image for c in pod.spec.containers if c.name == STEP_CONTAINER]
            statuses = (pod.status.container_statuses if pod.status else None) or []
            image_id = next((s.image_id for s in statuses if s.name == STEP_CONTAINER), None)
            found = PULLABLE_IMAGE_ID.fullmatch(image_id or "")
            if "@" not in image and own == [image] and found:
                pinned = f"{image}@{found.group(1)}"
    if pulls is None:
        shown = account or "the namespace's default"
        note = (
            f"node pods: service account {shown}; image pull secrets not copied ({reason}): they "
            "get those of the service account, which Kubernetes adds to every pod it runs as"
        )
    else:
        note = (
            f"node pods: service account {account or 'default'}, image pull secrets "
            f"{', '.join(pulls) or '(none)'}, as this step's {where}"
        )
    if pinned:
        note, image = f"{note}; image {pinned}, the digest this step's container runs", pinned
    elif "@" not in image:  # not already pinned by digest
        why = "not this step's image" if own not in ([], [image]) else "this step's digest not read"
        note += f"; image {image} by tag, with the runtime's pull policy ({why})"
    return PodIdentity(account, pulls or (), note, image)
