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
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from kfp_lightning.components.common.errors import invalid

NAMESPACE_PLACEHOLDER = "{namespace}"
# Where the training pod mounts a claim named in a pvc:// root: <PVC_MOUNT_ROOT>/<claim>.
PVC_MOUNT_ROOT = Path("/mnt/pvc")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
ACCEPTED = "s3://bucket/prefix, pvc://claim/path, file:///absolute/path or /absolute/path"

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SEGMENT = re.compile(r"[A-Za-z0-9._=+@,-]+")


@dataclasses.dataclass(frozen=True)
class LogsLocation:
    """A parsed logs location.

    Attributes:
        scheme: "s3", "pvc" or "file".
        container: Bucket (s3) or claim name (pvc); empty for file.
        path: Key prefix (s3) or path inside the claim (pvc), without leading or trailing "/";
            for file, the absolute directory.
    """

    scheme: str
    container: str
    path: str

    @property
    def uri(self) -> str:
        """The canonical URI (what TensorBoard's `--logdir` and `spec.logspath` take)."""
        if self.scheme == "file":
            return self.path
        return f"{self.scheme}://{self.container}/{self.path}".rstrip("/")

    def child(self, name: str) -> LogsLocation:
        """The location one level below this one."""
        if not _SEGMENT.fullmatch(name) or name in (".", ".."):
            raise invalid("run_id", name, "letters, digits and ._=+@,- only")
        if self.scheme == "file":
            return dataclasses.replace(self, path=str(Path(self.path) / name))
        return dataclasses.replace(self, path=f"{self.path}/{name}".lstrip("/"))


def current_namespace() -> str | None:
    """The pod's namespace: $POD_NAMESPACE (downward API), else the service account's, else None."""
    namespace = os.environ.get("POD_NAMESPACE", "").strip()
    if namespace:
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
            raise invalid(
                parameter, root, f"a root without {NAMESPACE_PLACEHOLDER} outside a Kubernetes pod"
            )
        value = value.replace(NAMESPACE_PLACEHOLDER, namespace)
    parts = urlparse(value)
    if parts.scheme in ("s3", "pvc"):
        segments = [s for s in parts.path.split("/") if s]
        container_ok = (_BUCKET if parts.scheme == "s3" else _DNS1123_SUBDOMAIN).fullmatch(
            parts.netloc
        )
        if (
            not container_ok
            or len(parts.netloc) > 253
            or parts.query
            or parts.fragment
            or not all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)
        ):
            raise invalid(parameter, root, ACCEPTED)
        return LogsLocation(parts.scheme, parts.netloc, "/".join(segments))
    if parts.scheme == "file" and not parts.netloc:
        value = parts.path
    elif parts.scheme:
        raise invalid(parameter, root, ACCEPTED)
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts or not value:
        raise invalid(parameter, root, ACCEPTED)
    return LogsLocation("file", "", str(path))


def run_logs_location(root: str, run_id: str, namespace: str | None = None) -> LogsLocation:
    """The live logs location of one run: `<root>/<run_id>`.

    Args:
        root: The `tensorboard_logs_root` parameter.
        run_id: The pipeline run's id (KFP's `PIPELINE_JOB_ID_PLACEHOLDER`).
        namespace: For `{namespace}`; defaults to the pod's namespace.

    Returns:
        The run's location.
    """
    return parse_logs_root(root, namespace or current_namespace()).child(run_id.strip())
