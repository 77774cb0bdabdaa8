"""KFP's own object store: which Service a cluster runs it behind, resolved per cluster.

The pipeline's default `s3_endpoint` is `auto`: the store KFP's own backend uses on the cluster
the run lands on, so one compiled YAML works on every supported release without the user
knowing which store their release runs. Releases differ (see `pipelines/platforms.py`):
Kubeflow 1.10 and KFP up to 2.14 serve MinIO as `minio-service.kubeflow`; KFP 2.15 and
Kubeflow 1.11 run SeaweedFS as `seaweedfs.kubeflow`, with `minio-service` kept as an alias;
KFP 2.16 removed the alias (kubeflow/pipelines "Remove minio (#12613)"), so Kubeflow 26.03 has
`seaweedfs` only. KFP's driver names the same Services in the same namespace
(kubeflow/pipelines backend/src/v2/objectstore/config.go, `DefaultEndpointInMultiUserMode`).
The port differs too: SeaweedFS serves S3 on 8333 in every release that has the `seaweedfs`
Service, but on 9000 only from KFP 2.16 (Kubeflow 1.11's `seaweedfs` Service has no 9000; its
`minio-service` maps 9000 to 8333), so `seaweedfs` is reached on 8333 and MinIO on 9000. A pod
resolves `auto` to the first of them that its cluster's DNS knows and that accepts a
connection; the preflight, which runs outside the cluster, asks the API server for the same
Services and ports in the same order (`pipelines/preflight.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import socket
from collections.abc import Sequence

from kfp_lightning.components.common.errors import invalid

AUTO = "auto"
# Keys of KFP's `mlpipeline-minio-artifact` secret, present in every profile namespace.
ACCESS_KEY_KEY = "accesskey"
SECRET_KEY_KEY = "secretkey"


@dataclasses.dataclass(frozen=True)
class ObjectStore:
    """One Service KFP's object store may run behind.

    Attributes:
        service: The Service's name.
        namespace: Its namespace (KFP's own).
        port: The port that serves the S3 API.
        product: What serves it, for messages.
    """

    service: str
    namespace: str
    port: int
    product: str

    @property
    def host(self) -> str:
        """The name pods resolve: `<service>.<namespace>`, through their DNS search path."""
        return f"{self.service}.{self.namespace}"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint, http://host:port (in-cluster traffic, as KFP's own)."""
        return f"http://{self.host}:{self.port}"


# Newest first: where both exist (KFP 2.15, Kubeflow 1.11) `minio-service` is an alias.
KFP_OBJECT_STORES = (
    ObjectStore("seaweedfs", "kubeflow", 8333, "SeaweedFS, KFP 2.15 and newer"),
    ObjectStore("minio-service", "kubeflow", 9000, "MinIO, or SeaweedFS's alias in KFP 2.15"),
)
CONNECT_TIMEOUT_SECONDS = 3.0


def reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_SECONDS) -> bool:
    """Whether `host` resolves from here and accepts a TCP connection on `port`.

    A pod's DNS knows every Service of its cluster, but only a connection tells that the
    Service serves that port (a ClusterIP answers on the ports it declares and no other).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, UnicodeError):
        return False


@functools.cache
def resolve_auto(candidates: Sequence[ObjectStore] = KFP_OBJECT_STORES) -> str:
    """The endpoint of the first of `candidates` this machine resolves and connects to.

    Cached: every call in one process (training, the launcher) names the same store.

    Args:
        candidates: The Services to try, in order.

    Returns:
        http://<service>.<namespace>:<port>.

    Raises:
        UserInputError: None resolves (outside a cluster, or no KFP object store).
    """
    for store in candidates:
        if reachable(store.host, store.port):
            return store.endpoint
    tried = ", ".join(f"{store.host}:{store.port}" for store in candidates)
    raise invalid(
        "s3_endpoint",
        AUTO,
        f"an http(s)://host[:port] endpoint here: auto finds KFP's object store only inside its "
        f"cluster, and none of {tried} answers",
    )
