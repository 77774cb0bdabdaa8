"""A run's Kubeflow Trainer `TrainJob`: the object, and creating, watching and deleting it.

Kubeflow Trainer v2 (`trainer.kubeflow.org/v1alpha1`, v2.1.0 in Kubeflow 1.11 and 26.03) turns
a `TrainJob` that references the `torch-distributed` `ClusterTrainingRuntime` into a JobSet
with one Job of `numNodes` pods, each running `spec.trainer.command` in the runtime's `node`
container with the `PET_*` variables torchrun reads (kubeflow/trainer v2.1.0:
pkg/runtime/framework/plugins/torch/torch.go, `EnforceMLPolicy`; jobset/builder.go, `Trainer`).
The controller copies the JobSet's `Completed` and `Failed` conditions to the TrainJob as
`Complete` and `Failed`, reason and message included (jobset/jobset.go, `Status`).

Everything here is deterministic in its inputs: the name comes from the run id, so a retried
step finds its own job instead of starting a second one. Writes are retried on transient
failures by the client's urllib3 `Retry` (see `launch_tensorboard/kube_api.py`); creating,
reading and deleting a job by name are all safe to repeat.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.kubernetes_syntax import (
    digest,
    is_label_value,
    name_for_run,
)
from kfp_lightning.components.common.logs_location import PVC_MOUNT_ROOT
from kfp_lightning.components.launch_tensorboard.kube_api import Patience, call
from kfp_lightning.components.launch_tensorboard.objects import (
    ACCESS_KEY_KEY,
    MANAGED_BY,
    RUN_ID_ANNOTATION,
    RUN_ID_LABEL,
    SECRET_KEY_KEY,
)

TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
RUNTIME_API = (
    "trainer.kubeflow.org",
    "v1alpha1",
    "clustertrainingruntimes",
    "ClusterTrainingRuntime",
)
RUNTIME = "torch-distributed"
# The runtime's trainer Job and container are both called "node" (kubeflow/trainer v2.1.0,
# manifests/base/runtimes/torch_distributed.yaml; pkg/constants/constants.go, `Node`).
NODE = "node"
# Variables the torch plugin sets itself and refuses in spec.trainer.env (constants.go,
# `TorchRunReservedEnvNames`; torch.go, `Validate`).
RESERVED_ENV = frozenset(
    {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
)
TORCHRUN = ("torchrun", "--module")
RBAC_MANIFEST = "manifests/trainjob-rbac.yaml"
# Pod hostnames are "<name>-node-0-<index>" (jobset.go, `IdentifyPodNetwork`), at most 63
# characters: 48 leaves room for a three-digit node index.
MAX_NAME_LENGTH = 48
NAME_PREFIX = "kfp-"
# Per node, as the single-node training task asks for its pod.
CPU_REQUEST, MEMORY_REQUEST, MEMORY_LIMIT = "2", "4Gi", "16Gi"
GPU_RESOURCE = "nvidia.com/gpu"
# NCCL exchanges buffers between a node's processes through /dev/shm, which a container
# otherwise gets at 64 MiB; a memory-backed volume lifts that (it counts towards the memory
# limit only as far as it is filled). The same size as the single-node training pod's.
SHM_VOLUME, SHM_SIZE = "dshm", "4Gi"
LOGS_VOLUME = "logs"
# Kubeflow's profile controller labels every profile namespace istio-injection=enabled
# (kubeflow/kubeflow, components/profile-controller/controllers/profile_controller.go). An
# injected proxy outlives the training container, so a node's pod, and with it the job, would
# never complete, and it would stand between the nodes' rendezvous; KFP keeps its own pods out
# of the mesh the same way (kubeflow/pipelines 2.5.0, backend/src/apiserver/template/
# argo_template.go).
NO_ISTIO_SIDECAR = {"sidecar.istio.io/inject": "false"}

COMPLETE, FAILED, SUSPENDED = "Complete", "Failed", "Suspended"


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
    return name_for_run(NAME_PREFIX, run_id, MAX_NAME_LENGTH)


def run_id_label(run_id: str) -> str:
    """The run id as a label value (a digest when it cannot be one)."""
    return run_id if is_label_value(run_id) else digest(run_id)


def trainjob_object(namespace: str, run_id: str, spec: NodeSpec) -> dict[str, Any]:
    """The `TrainJob` of one run.

    The environment goes in `spec.trainer.env`, since the runtime refuses environment
    overrides for the `node` container (jobset/jobset.go, `Validate`); the volumes, node
    selector and tolerations in a pod template override of the `node` Job, which the runtime
    merges into its pod template as a strategic merge patch (core/trainingruntime.go,
    `mergePodTemplateOverrides`).

    Args:
        namespace: The run's namespace.
        run_id: The pipeline run's id.
        spec: What the nodes run, and where.

    Returns:
        The object, ready to create.
    """
    group, version, _, kind = TRAINJOB_API
    env: list[dict[str, Any]] = [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]
    if spec.s3_secret:
        env += [
            {
                "name": variable,
                "valueFrom": {"secretKeyRef": {"name": spec.s3_secret, "key": key}},
            }
            for variable, key in (
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY_KEY),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY_KEY),
            )
        ]
    volumes: list[dict[str, Any]] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}
    ]
    mounts: list[dict[str, Any]] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    if spec.logs_pvc:
        volumes.append({"name": LOGS_VOLUME, "persistentVolumeClaim": {"claimName": spec.logs_pvc}})
        mounts.append({"name": LOGS_VOLUME, "mountPath": str(PVC_MOUNT_ROOT / spec.logs_pvc)})
    pod_spec: dict[str, Any] = {
        "containers": [{"name": NODE, "volumeMounts": mounts}],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    limits = {"memory": MEMORY_LIMIT}
    if spec.gpus_per_node:
        limits[GPU_RESOURCE] = str(spec.gpus_per_node)
    labels = {**MANAGED_BY, RUN_ID_LABEL: run_id_label(run_id)}
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": {
            "name": trainjob_name(run_id),
            "namespace": namespace,
            "labels": labels,
            "annotations": {RUN_ID_ANNOTATION: run_id},
        },
        "spec": {
            "runtimeRef": {"apiGroup": group, "kind": RUNTIME_API[3], "name": RUNTIME},
            "trainer": {
                "image": spec.image,
                "command": [*TORCHRUN, spec.module],
                "args": list(spec.arguments),
                "numNodes": spec.nodes,
                "numProcPerNode": spec.processes_per_node,
                "resourcesPerNode": {
                    "requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST},
                    "limits": limits,
                },
                "env": env,
            },
            "podTemplateOverrides": [
                {
                    "targetJobs": [{"name": NODE}],
                    "metadata": {
                        # The run id on every node's pod: `kubectl logs -l` finds them.
                        "labels": {RUN_ID_LABEL: run_id_label(run_id)},
                        "annotations": dict(NO_ISTIO_SIDECAR),
                    },
                    "spec": pod_spec,
                }
            ],
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
    def finished(self) -> bool:
        """Whether the job completed or failed."""
        return self.condition in (COMPLETE, FAILED)

    def describe(self) -> str:
        """One phrase for the step's log."""
        if self.condition:
            detail = ": ".join(x for x in (self.reason, self.message) if x)
            state = f"{self.condition.lower()}" + (f" ({detail})" if detail else "")
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
    counts = []
    for job in status.get("jobsStatus") or []:
        numbers = ", ".join(
            f"{job.get(key) or 0} {key}"
            for key in ("active", "ready", "succeeded", "failed", "suspended")
            if job.get(key)
        )
        counts.append(f"{job.get('name', '?')} {numbers or 'no pods'}")
    nodes = "; ".join(counts)
    for condition in (FAILED, COMPLETE, SUSPENDED):
        if condition in true:
            found = true[condition]
            return JobState(
                condition, str(found.get("reason") or ""), str(found.get("message") or ""), nodes
            )
    return JobState("", nodes=nodes)


# --- API calls --------------------------------------------------------------------------------


def _status_message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(err.reason)


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
    message = _status_message(err)
    answer = f"HTTP {err.status}: {message}"
    if "admission webhook" in message:
        # The Trainer's validating webhook (controller-runtime v0.22.3, pkg/webhook/admission/
        # validator_custom.go and response.go: `Denied`) answers 403 too; it is not RBAC.
        return RunError(f"Kubeflow Trainer refused the {kind} in {namespace} ({answer})")
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

    def _call(
        self, verb: str, name: str, request: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        group, version, plural, kind = TRAINJOB_API
        return call(
            lambda: request(
                group,
                version,
                self.namespace,
                plural,
                *args,
                _request_timeout=self.patience.request_timeout_seconds,
                **kwargs,
            ),
            f"{verb} {kind} {self.namespace}/{name}",
        )

    def create(self, wanted: Mapping[str, Any]) -> dict[str, Any] | None:
        """Creates `wanted`; None when a job of that name exists already.

        Raises:
            RunError: The server refused (no CRD, no permission, a webhook's verdict).
            ClusterUnreachableError: The API could not be reached.
        """
        name = wanted["metadata"]["name"]
        try:
            return self._call("create", name, self.api.create_namespaced_custom_object, wanted)
        except ApiException as err:
            if err.status == 409:
                return None
            raise explain_refusal(err, self.namespace, "create") from None

    def get(self, name: str) -> dict[str, Any] | None:
        """The job called `name`; None when there is none."""
        try:
            return self._call("read", name, self.api.get_namespaced_custom_object, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise explain_refusal(err, self.namespace, "read") from None

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
        policy = "Foreground" if foreground else "Background"
        try:
            self._call(
                "delete",
                name,
                self.api.delete_namespaced_custom_object,
                name,
                body={"propagationPolicy": policy},
            )
            return True
        except ApiException as err:
            if err.status == 404:
                return False
            raise explain_refusal(err, self.namespace, "delete") from None

    def pause(self, polls: int, deadline: float) -> bool:
        """Sleeps before the next read: 1 s, then twice as long each time, at most the
        polling interval, and never past `deadline` (monotonic time).

        Args:
            polls: Reads made so far.
            deadline: When to stop waiting.

        Returns:
            False when the deadline has passed already (nothing slept).
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(self.patience.poll_seconds, 2.0 ** min(polls, 16), remaining))
        return True

    def wait_gone(self, name: str, deadline: float) -> bool:
        """Polls until no job called `name` exists or `deadline` (monotonic time) passes.

        Returns:
            Whether it was gone in time.
        """
        polls = 0
        while self.get(name) is not None:
            if not self.pause(polls, deadline):
                return False
            polls += 1
        return True
