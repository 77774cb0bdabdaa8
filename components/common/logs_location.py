"""Where a run's live TensorBoard logs go: one root URI for all runs, one child per run.

Training writes there while it runs and the TensorBoard server reads from there, so both must
derive the same location from the same pipeline parameters. Accepted roots:

- `s3://bucket/prefix`: S3-compatible object storage (Kubeflow's own MinIO or SeaweedFS,
  or any S3 endpoint); works across nodes.
- `pvc://claim/path`: a PersistentVolumeClaim, which the training pod mounts; ReadWriteMany
  storage, or TensorBoard on the training node (see the README).
- `file:///path` or `/path`: a local directory (`--local` runs, or a volume mounted by hand).

`{namespace}` in the root is replaced by the pod's namespace, so one default suits every
Kubeflow profile (SeaweedFS grants each profile `private/<namespace>/` in the `mlpipeline` bucket).
The other URLs users type into run parameters (mirrors aside) are parsed here too, and so is
`auto`, the default `s3_endpoint`: KFP's own object store on the run's cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated
from urllib.parse import urlparse

import pydantic

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.kubernetes_syntax import check_secret_name
from kfp_lightning.components.common.run_form import checked_by, run_config, run_parameter

NAMESPACE_PLACEHOLDER = "{namespace}"
# Where the training pod mounts a claim named in a pvc:// root: <PVC_MOUNT_ROOT>/<claim>.
PVC_MOUNT_ROOT = Path("/mnt/pvc")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
ACCEPTED = "s3://bucket/prefix, pvc://claim/path, file:///absolute/path or /absolute/path"

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Said when the name breaks them (S3's bucket naming rules; Kubernetes' DNS-1123 subdomain).
_NAME_RULES = {
    "s3": "a bucket is 3 to 63 of a-z, 0-9, '.' and '-', starting and ending with a letter or "
    "digit",
    "pvc": "a claim is a DNS-1123 subdomain: a-z, 0-9, '-' and '.', at most 253",
}
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SEGMENT = re.compile(r"[A-Za-z0-9._=+@,-]+")


@dataclasses.dataclass(frozen=True)
class LogsLocation:
    """A parsed logs location.

    Attributes:
        scheme: "s3", "pvc" or "file".
        path: Key prefix (s3) or path inside the claim (pvc), without leading or trailing "/";
            for file, the absolute directory.
        bucket: The bucket (s3 only).
        claim: The PersistentVolumeClaim's name (pvc only).
    """

    scheme: str
    path: str
    bucket: str = ""
    claim: str = ""

    @property
    def uri(self) -> str:
        """The canonical URI (what TensorBoard's `--logdir` and `spec.logspath` take)."""
        if self.scheme == "file":
            return self.path
        return f"{self.scheme}://{self.bucket or self.claim}/{self.path}".rstrip("/")

    def child(self, name: str) -> LogsLocation:
        """The location one level below this one."""
        if not _SEGMENT.fullmatch(name) or name in (".", ".."):
            raise invalid("run_id", name, "letters, digits and ._=+@,- only")
        if self.scheme == "file":
            return dataclasses.replace(self, path=str(Path(self.path) / name))
        return dataclasses.replace(self, path=f"{self.path}/{name}".lstrip("/"))


def parse_http_endpoint(
    value: str, parameter: str, accepted: str = "an endpoint of the form http(s)://host[:port]"
) -> str:
    """Validates an http(s)://host[:port] endpoint (no path, query or credentials).

    Args:
        value: The user's value.
        parameter: Parameter name used in error messages.
        accepted: What is accepted, in words, for the error message.

    Returns:
        The endpoint without a trailing "/".
    """
    parts = urlparse(value.strip())
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    well_formed = parts.scheme in ("http", "https") and parts.path in ("", "/") and parts.hostname
    # Credentials, a query or a fragment have no place in an endpoint.
    extras = parts.username or parts.password or parts.query or parts.fragment
    if not (well_formed and port_ok) or extras:
        raise invalid(parameter, value, accepted)
    return f"{parts.scheme}://{parts.netloc}"


def parse_base_url(value: str) -> str:
    """Validates `kubeflow_base_url`: "/" for relative links, or http(s)://host[:port].

    Args:
        value: The user's value.

    Returns:
        The prefix to put before `/tensorboard/...`: "" or the URL without trailing "/".
    """
    if value.strip() == "/":
        return ""
    accepted = "/ (links relative to the Kubeflow UI) or the Kubeflow URL, http(s)://host[:port]"
    return parse_http_endpoint(value, "kubeflow_base_url", accepted)


# KFP's own object store: which Service a cluster runs it behind, resolved per cluster. The
# pipeline's default `s3_endpoint` is `auto`: the store KFP's own backend uses on the cluster
# the run lands on, so one compiled YAML works on every supported release without the user
# knowing which store their release runs. Releases differ (see `tests/platforms.py`):
# Kubeflow 1.10 and KFP up to 2.14 serve MinIO as `minio-service.kubeflow`; KFP 2.15 and
# Kubeflow 1.11 run SeaweedFS as `seaweedfs.kubeflow`, with `minio-service` kept as an alias;
# KFP 2.16 removed the alias (kubeflow/pipelines "Remove minio (#12613)"), so Kubeflow 26.03 has
# `seaweedfs` only. KFP's driver names the same Services in the same namespace
# (kubeflow/pipelines backend/src/v2/objectstore/config.go, `DefaultEndpointInMultiUserMode`).
# The port differs too: SeaweedFS serves S3 on 8333 in every release that has the `seaweedfs`
# Service, but on 9000 only from KFP 2.16 (Kubeflow 1.11's `seaweedfs` Service has no 9000; its
# `minio-service` maps 9000 to 8333), so `seaweedfs` is reached on 8333 and MinIO on 9000. A pod
# resolves `auto` to the first of them that its cluster's DNS knows and that accepts a
# connection; the preflight, which runs outside the cluster, asks the API server for the same
# Services and ports in the same order (`pipelines/preflight.py`).
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


def reachable(host: str, port: int, timeout: float = 3.0) -> bool:
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


def current_namespace() -> str | None:
    """The pod's namespace: $POD_NAMESPACE (downward API), else the service account's, else None."""
    if namespace := os.environ.get("POD_NAMESPACE", "").strip():
        return namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def parse_logs_root(
    root: str, namespace: str | None = None, parameter: str = "tensorboard_logs_root"
) -> LogsLocation:
    """Validates a logs root and substitutes `{namespace}`.

    Args:
        root: The user's value.
        namespace: Replaces `{namespace}`; required when the root contains it.
        parameter: Name used in error messages.

    Returns:
        The parsed location.

    Raises:
        UserInputError: For an unsupported scheme, a malformed bucket, claim or path, or a
            `{namespace}` placeholder with no namespace to put there.
    """
    value = root.strip()
    if NAMESPACE_PLACEHOLDER in value:
        if not namespace:
            accepted = f"a root without {NAMESPACE_PLACEHOLDER} outside a Kubernetes pod"
            raise invalid(parameter, root, accepted)
        value = value.replace(NAMESPACE_PLACEHOLDER, namespace)
    parts = urlparse(value)
    if parts.scheme in ("s3", "pvc"):
        segments = [s for s in parts.path.split("/") if s]
        name_ok = (_BUCKET if parts.scheme == "s3" else _DNS1123_SUBDOMAIN).fullmatch(parts.netloc)
        if not name_ok or len(parts.netloc) > 253:
            raise invalid(parameter, root, f"{ACCEPTED} ({_NAME_RULES[parts.scheme]})")
        ok = not (parts.query or parts.fragment)
        if not ok or not all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
            raise invalid(parameter, root, ACCEPTED)
        path = "/".join(segments)
        if parts.scheme == "s3":
            return LogsLocation("s3", path, bucket=parts.netloc)
        return LogsLocation("pvc", path, claim=parts.netloc)
    if parts.scheme == "file" and not parts.netloc:
        value = parts.path
    elif parts.scheme:
        raise invalid(parameter, root, ACCEPTED)
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts or not value:
        raise invalid(parameter, root, ACCEPTED)
    return LogsLocation("file", str(path))


def check_mounted_claim(location: LogsLocation, logs_pvc: str | None, shown: str) -> None:
    """A pvc:// location must be on the claim the pipeline mounts (compiled with --logs-pvc).

    Args:
        location: The logs root, or a run's location in it.
        logs_pvc: The claim the pipeline mounts, if any.
        shown: The `tensorboard_logs_root` as the user gave it, for the message.

    Raises:
        UserInputError: A claim the pods would not have mounted.
    """
    if location.scheme == "pvc" and location.claim != logs_pvc:
        mounted = f"pvc://{logs_pvc}/PATH (the claim --logs-pvc mounts)"
        unmounted = f"an s3:// root, or compile with --logs-pvc {location.claim} to mount the claim"
        raise invalid("tensorboard_logs_root", shown, mounted if logs_pvc else unmounted)


# A valid namespace that stands in for the run's while a root is checked outside a pod.
_ANY_NAMESPACE = "namespace"
UpdateSeconds = Annotated[int, pydantic.Field(ge=1, le=300, description="an integer from 1 to 300")]
SecretName = Annotated[str, checked_by(check_secret_name)]


@run_config
class LiveLogsConfig:
    """Where a run's live TensorBoard logs go, and how fresh they are; validated on construction.

    Shared by training (which writes there) and the TensorBoard launcher (which reads there),
    so both derive the same location from the same run parameters.
    """

    tensorboard_logs_root: str = run_parameter("s3://mlpipeline/private/{namespace}/tensorboard")
    """Where training streams TensorBoard logs and checkpoints, one folder per run:
    s3://bucket/prefix (default: KFP's object store), pvc://claim/path (compile with
    --logs-pvc; ReadWriteMany, or TensorBoard on the training node) or a directory.
    {namespace} becomes the run's namespace."""
    s3_endpoint: str = run_parameter(AUTO)
    """S3 API of an s3:// root: auto (default: the object store KFP itself uses on the run's
    cluster, seaweedfs.kubeflow or, before KFP 2.15, minio-service.kubeflow) or
    http(s)://host[:port]."""
    s3_credentials_secret: SecretName = run_parameter("mlpipeline-minio-artifact")
    """Secret in the run's namespace with keys accesskey and secretkey for the S3 API (KFP's
    own, which Kubeflow creates in every profile namespace, by default)."""
    live_update_seconds: UpdateSeconds = run_parameter(10)
    """Longest delay, in seconds, before a logged point is readable where TensorBoard reads
    the logs (1 to 300): the event files are flushed and copied there twice as often."""

    @pydantic.field_validator("tensorboard_logs_root")
    @classmethod
    def _root(cls, root: str) -> str:
        parse_logs_root(root, _ANY_NAMESPACE)
        return root

    @pydantic.field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, endpoint: str) -> str:
        # Checked whatever the root: a value typed in is a mistake even where it is unused now.
        if endpoint.strip() != AUTO:
            accepted = f"{AUTO} or an endpoint of the form http(s)://host[:port]"
            parse_http_endpoint(endpoint, "s3_endpoint", accepted)
        return endpoint

    def run_location(self, run_id: str, namespace: str | None = None) -> LogsLocation:
        """The live logs location of one run: `<tensorboard_logs_root>/<run_id>`.

        Args:
            run_id: The pipeline run's id (KFP's `PIPELINE_JOB_ID_PLACEHOLDER`).
            namespace: For `{namespace}`; defaults to the pod's namespace.
        """
        root = parse_logs_root(self.tensorboard_logs_root, namespace or current_namespace())
        return root.child(run_id.strip())

    def task_location(self, run_id: str, key: str, namespace: str | None = None) -> LogsLocation:
        """Where one task of a run keeps its state: `<tensorboard_logs_root>/<run_id>/<key>`.

        The run's TensorBoard reads `<run_id>`, so it shows every task of the run.

        Args:
            run_id: The pipeline run's id.
            key: The task's key (`training.training_task_key`).
            namespace: For `{namespace}`; defaults to the pod's.
        """
        return self.run_location(run_id, namespace).child(key)

    def endpoint(self) -> str | None:
        """The S3 endpoint without a trailing "/", or None when the root is not s3://.

        `auto` becomes the concrete endpoint of KFP's object store on this cluster, so what
        reads or writes the logs (training, the TensorBoard pod, the nodes) is given a real
        address (see `resolve_auto`).

        Raises:
            UserInputError: `auto` outside a cluster that runs KFP's object store.
        """
        if parse_logs_root(self.tensorboard_logs_root, _ANY_NAMESPACE).scheme != "s3":
            return None
        if self.s3_endpoint.strip() == AUTO:
            return resolve_auto()
        return parse_http_endpoint(self.s3_endpoint, "s3_endpoint")
