"""Create-or-update of namespaced custom objects with the `kubernetes` client, safe to retry.

A task can be retried, and a request can fail after the server acted on it, so every write is
idempotent: create; if it already exists, read it and patch only what differs from the wanted
object (a JSON merge patch, so labels or fields added by others stay). Transient failures
(HTTP 429 and 5xx, dropped or refused connections) are retried with exponential backoff by
urllib3's own `Retry`, which the `kubernetes` client hands to its connection pool: every method
is retried, since each write here is safe to repeat.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from typing import TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.launch_tensorboard.objects import TENSORBOARD_API

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_KUBECONFIG = "~/.kube/config"


class ClusterUnreachableError(RuntimeError):
    """No Kubernetes API could be configured or reached (message says why)."""


@dataclasses.dataclass(frozen=True)
class Patience:
    """How hard to try: retries of one request, and the readiness polling interval.

    Attributes:
        attempts: Tries per request, the first included.
        backoff_seconds: urllib3's backoff factor: the second retry waits this long, each
            further one twice as long as the one before (the first is immediate).
        poll_seconds: Pause between two readiness checks.
        request_timeout_seconds: Connect and read timeout of one request.
    """

    attempts: int = 5
    backoff_seconds: float = 0.5
    poll_seconds: float = 2.0
    request_timeout_seconds: float = 15.0

    def retry(self) -> urllib3.Retry:
        """The urllib3 retry policy for one request."""
        return urllib3.Retry(
            total=self.attempts - 1,
            backoff_factor=self.backoff_seconds,
            status_forcelist=TRANSIENT_STATUSES,
            allowed_methods=None,  # every method: creates and patches here are idempotent
            raise_on_status=False,  # the last answer reaches the caller as an ApiException
            respect_retry_after_header=True,
        )


def connect(patience: Patience = Patience()) -> tuple[client.ApiClient, str | None]:
    """Configures a client: in-cluster when running in a pod, else the standard kubeconfig.

    Args:
        patience: How each request retries transient failures.

    Returns:
        The client, and the kubeconfig context's namespace ("default" when it names none);
        None in a pod, whose namespace comes from its service account.

    Raises:
        ClusterUnreachableError: Neither an in-cluster service account nor a kubeconfig.
    """
    configuration = client.Configuration()
    namespace: str | None = None
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as in_cluster_error:
        # The client reads $KUBECONFIG once, when imported; read it when connecting instead.
        kubeconfig = os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
        try:
            config.load_kube_config(
                kubeconfig, client_configuration=configuration, persist_config=False
            )
            _, active = config.list_kube_config_contexts(kubeconfig)
        # A malformed file surfaces as YAML, type or key errors from deep in the client.
        except Exception as kubeconfig_error:
            first_line = (str(kubeconfig_error).strip().splitlines() or [""])[0]
            raise ClusterUnreachableError(
                f"not running in a pod ({in_cluster_error}) and no usable kubeconfig at "
                f"{kubeconfig} ({type(kubeconfig_error).__name__}: {first_line})"
            ) from kubeconfig_error
        namespace = active.get("context", {}).get("namespace") or "default"
    configuration.retries = patience.retry()
    return client.ApiClient(configuration), namespace


def connection_failure(err: urllib3.exceptions.HTTPError) -> str:
    """What a user can act on in a failed connection: "Connection refused", a TLS failure...

    urllib3 nests the cause (MaxRetryError -> NewConnectionError -> OSError); the innermost
    message is the useful one, without the pool and retry bookkeeping around it.
    """
    reason = getattr(err, "reason", None) or err
    text = str(reason).split("Failed to establish a new connection: ")[-1]
    return " ".join(text.split())


def call(request: Callable[[], T], what: str) -> T:
    """Runs one API request; a connection that failed on every retry becomes a clear error.

    Raises:
        ApiException: The server's answer was an error (after the transient ones' retries).
        ClusterUnreachableError: No connection could be made or kept.
    """
    try:
        return request()
    except urllib3.exceptions.HTTPError as err:
        raise ClusterUnreachableError(f"{what}: {connection_failure(err)}") from err


def merge_patched(target: object, patch: object) -> object:
    """`target` with a JSON merge patch (RFC 7386) applied, as the API server would apply it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patched(result.get(key), value)
    return result


def ensure_object(
    api: client.CustomObjectsApi,
    resource: tuple[str, str, str, str],
    wanted: dict[str, object],
    patience: Patience,
) -> str:
    """Creates a namespaced custom object, or brings an existing one in line with `wanted`.

    Args:
        api: The client.
        resource: (group, version, plural, kind).
        wanted: The full object; its metadata names its namespace.
        patience: Retries.

    Returns:
        "created", "updated" or "unchanged".

    Raises:
        ApiException: The server refused (404: no such resource type, 403: forbidden, ...).
        ClusterUnreachableError: The API could not be reached.
    """
    group, version, plural, kind = resource
    metadata = wanted["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    timeout = patience.request_timeout_seconds
    try:
        call(
            lambda: api.create_namespaced_custom_object(
                group, version, namespace, plural, wanted, _request_timeout=timeout
            ),
            f"create {kind} {namespace}/{name}",
        )
        return "created"
    except ApiException as err:
        if err.status != 409:
            raise
    existing = call(
        lambda: api.get_namespaced_custom_object(
            group, version, namespace, plural, name, _request_timeout=timeout
        ),
        f"read {kind} {namespace}/{name}",
    )
    patch = {
        "metadata": {k: metadata[k] for k in ("labels", "annotations") if k in metadata},
        "spec": wanted["spec"],
    }
    if merge_patched(existing, patch) == existing:
        return "unchanged"
    call(
        lambda: api.patch_namespaced_custom_object(
            group, version, namespace, plural, name, patch, _request_timeout=timeout
        ),
        f"update {kind} {namespace}/{name}",
    )
    return "updated"


def wait_until_ready(
    api: client.CustomObjectsApi,
    namespace: str,
    name: str,
    timeout_seconds: float,
    patience: Patience,
) -> bool:
    """Polls a `Tensorboard` until its controller reports a ready replica.

    Args:
        api: The client.
        namespace: Its namespace.
        name: Its name.
        timeout_seconds: How long to keep polling; 0 checks once.
        patience: Polling interval and retries.

    Returns:
        Whether `status.readyReplicas` reached 1 in time.

    Raises:
        ApiException: The server refused a read.
        ClusterUnreachableError: The API could not be reached.
    """
    group, version, plural, kind = TENSORBOARD_API
    deadline = time.monotonic() + timeout_seconds
    while True:
        current = call(
            lambda: api.get_namespaced_custom_object(
                group,
                version,
                namespace,
                plural,
                name,
                _request_timeout=patience.request_timeout_seconds,
            ),
            f"read {kind} {namespace}/{name}",
        )
        if ((current.get("status") or {}).get("readyReplicas") or 0) >= 1:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(patience.poll_seconds, remaining))
