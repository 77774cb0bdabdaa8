"""The training pod's settings, declared once: a training task's pod and every TrainJob node's.

The pipeline applies them to the single-node training task through kfp-kubernetes
(pipelines/mnist.py, which alone may import kfp), and the multi-node step renders them into
each node's pod (components/train_on_nodes/trainjob.py), so both pods ask for the same. Where
the pod may run (the GPU resource, node selector and tolerations, `SchedulingConfig`) is
declared here too; the preflight checks a cluster's nodes against the same values.
"""

from __future__ import annotations

from typing import Annotated, Any

from kfp_lightning.components.common.kubernetes_syntax import check_node_selector, check_tolerations
from kfp_lightning.components.common.logs_location import (
    ACCESS_KEY_KEY,
    PVC_MOUNT_ROOT,
    SECRET_KEY_KEY,
)
from kfp_lightning.components.common.run_form import checked_by, run_config, run_parameter

GPU_RESOURCE = "nvidia.com/gpu"
# The taint GPU node pools commonly carry (GKE, EKS, the NVIDIA GPU operator's examples).
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
NodeSelector = Annotated[dict, checked_by(check_node_selector)]
Tolerations = Annotated[list, checked_by(check_tolerations)]

CPU_REQUEST, MEMORY_REQUEST, MEMORY_LIMIT = "2", "4Gi", "16Gi"
# The images are built for x86_64 only (images/build.py, TARGET_PLATFORMS): a node's
# `kubernetes.io/arch` label must say so.
NODE_ARCH = "amd64"
# NCCL exchanges buffers between a node's processes through /dev/shm, which a container
# otherwise gets at 64 MiB; a memory-backed volume lifts that (it counts towards the memory
# limit only as far as it is filled).
SHM_VOLUME, SHM_PATH, SHM_MEDIUM, SHM_SIZE = "dshm", "/dev/shm", "Memory", "4Gi"
LOGS_VOLUME = "logs"  # the TrainJob nodes' name for the logs claim
# Keys of KFP's object-store secret (`mlpipeline-minio-artifact`) -> the AWS SDK's variables.
S3_SECRET_KEYS = {ACCESS_KEY_KEY: "AWS_ACCESS_KEY_ID", SECRET_KEY_KEY: "AWS_SECRET_ACCESS_KEY"}
# Environment variables from the pod's own fields (the downward API).
NAMESPACE_ENV = {"POD_NAMESPACE": "metadata.namespace"}


def logs_mount_path(claim: str) -> str:
    """Where the pod mounts the logs claim `claim`."""
    return str(PVC_MOUNT_ROOT / claim)


def resources(gpus: int) -> dict[str, Any]:
    """The pod's container resources (Kubernetes `ResourceRequirements`) with `gpus` GPUs."""
    limits = {"memory": MEMORY_LIMIT}
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST}, "limits": limits}


def environment(s3_secret: str | None) -> list[dict[str, Any]]:
    """The container's environment (Kubernetes `EnvVar`s), with the S3 keys of `s3_secret`."""
    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for name, path in NAMESPACE_ENV.items()
    ]
    if s3_secret:
        env += [
            {"name": variable, "valueFrom": {"secretKeyRef": {"name": s3_secret, "key": key}}}
            for key, variable in S3_SECRET_KEYS.items()
        ]
    return env


def volumes(logs_pvc: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and its container's mounts of them: /dev/shm and the logs claim."""
    pod_volumes: list[dict[str, Any]] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": SHM_MEDIUM, "sizeLimit": SHM_SIZE}}
    ]
    mounts: list[dict[str, Any]] = [{"name": SHM_VOLUME, "mountPath": SHM_PATH}]
    if logs_pvc:
        pod_volumes.append({"name": LOGS_VOLUME, "persistentVolumeClaim": {"claimName": logs_pvc}})
        mounts.append({"name": LOGS_VOLUME, "mountPath": logs_mount_path(logs_pvc)})
    return pod_volumes, mounts


@run_config
class SchedulingConfig:
    """The training pod's placement; validated on construction."""

    node_selector: NodeSelector = run_parameter(default_factory=dict)
    """Node labels the training pod must match, as a JSON object, e.g.
    {"cloud.google.com/gke-accelerator": "nvidia-l4"}. Empty: any GPU node."""
    tolerations: Tolerations = run_parameter(default_factory=lambda: [dict(GPU_TOLERATION)])
    """Tolerations of the training pod, as a JSON list of Kubernetes Toleration objects.
    Default: tolerate the nvidia.com/gpu NoSchedule taint."""
