"""The releases a run is supported on: one table, which drives the tests and the README.

Each row is a Kubeflow or standalone Kubeflow Pipelines release as users run it: its KFP
backend, its Kubeflow Trainer (for `--nodes N`), the Services its object store runs behind,
whether a profile's stock roles and Kubeflow's Tensorboard controller are there. The facts come
from each release's own manifests (kubeflow/manifests tags v1.10.2, v1.11.0, branch
release-26.03 and master; kubeflow/pipelines tags 2.5.0 and 2.17.0; kubeflow/trainer tags
v2.1.0 to v2.3.0), and `tests/test_platforms.py` loads those manifests into a real
kube-apiserver for every row, so a release that changes one of them fails a test.
`python scripts/generate.py` rewrites the README's table from this one.
"""

from __future__ import annotations

from typing import NamedTuple


class Platform(NamedTuple):
    """One supported release.

    Attributes:
        name: The release, as its users call it.
        manifests: The folder of its upstream files in the shared platform manifests
            (object-store Services, stock roles, the profile controller).
        kfp_backend: The KFP backend version it ships.
        object_stores: The Services in `kubeflow` that serve KFP's object store, in the order
            `s3_endpoint=auto` tries them (components/common/logs_location.py).
        trainer: The Kubeflow Trainer v2 version it installs ("" for none).
        profiles: Kubeflow profiles: a namespace per user whose `default-editor` gets the
            stock `kubeflow-edit` role, Kubeflow's Tensorboard controller and PodDefaults.
    """

    name: str
    manifests: str
    kfp_backend: str
    object_stores: tuple[str, ...]
    trainer: str = ""
    profiles: bool = True

    @property
    def trainer_schemas(self) -> str:
        """The folder of its Trainer CRDs and runtime in the shared schemas ("" for none)."""
        return f"kubeflow-trainer-v{self.trainer}" if self.trainer else ""


# Kubeflow 26.03, and the base of the rows that differ from it only in their Trainer.
KUBEFLOW_26_03 = Platform("Kubeflow 26.03", "kubeflow-26.03", "2.16.0", ("seaweedfs",), "2.1.0")
PLATFORMS = (
    Platform("Kubeflow 1.10.2", "kubeflow-1.10.2", "2.5.0", ("minio-service",)),
    Platform(
        "Kubeflow 1.11.0", "kubeflow-1.11.0", "2.15.0", ("seaweedfs", "minio-service"), "2.1.0"
    ),
    KUBEFLOW_26_03,
    # kubeflow/manifests master pins Trainer v2.2.0; its other files are 26.03's.
    KUBEFLOW_26_03._replace(name="Kubeflow manifests master", trainer="2.2.0"),
    KUBEFLOW_26_03._replace(name="Kubeflow 26.03 with Trainer v2.3.0", trainer="2.3.0"),
    Platform(
        "standalone KFP 2.5.0", "kfp-standalone-2.5.0", "2.5.0", ("minio-service",), profiles=False
    ),
    Platform(
        "standalone KFP 2.17.0", "kfp-standalone-2.17.0", "2.17.0", ("seaweedfs",), profiles=False
    ),
)
