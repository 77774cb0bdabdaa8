"""Where the training pod may run: the GPU resource, node selector and tolerations.

The pipeline makes them the training task's Kubernetes settings (through kfp-kubernetes), the
multi-node step gives them to every node of its TrainJob, and the preflight checks a cluster's
nodes against the same values.
"""

from __future__ import annotations

from typing import Annotated

from kfp_lightning.components.common.kubernetes_syntax import check_node_selector, check_tolerations
from kfp_lightning.components.common.run_form import checked_by, run_config, run_parameter

GPU_RESOURCE = "nvidia.com/gpu"
# The taint GPU node pools commonly carry (GKE, EKS, the NVIDIA GPU operator's examples).
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
NodeSelector = Annotated[dict, checked_by(check_node_selector)]
Tolerations = Annotated[list, checked_by(check_tolerations)]


@run_config
class SchedulingConfig:
    """The training pod's placement; validated on construction."""

    node_selector: NodeSelector = run_parameter(default_factory=dict)
    """Node labels the training pod must match, as a JSON object, e.g.
    {"cloud.google.com/gke-accelerator": "nvidia-l4"}. Empty: any GPU node."""
    tolerations: Tolerations = run_parameter(default_factory=lambda: [dict(GPU_TOLERATION)])
    """Tolerations of the training pod, as a JSON list of Kubernetes Toleration objects.
    Default: tolerate the nvidia.com/gpu NoSchedule taint."""
