"""Create-or-update of namespaced custom objects with the `kubernetes` client, safe to retry.

A task can be retried, and a request can fail after the server acted on it, so every write is
idempotent: create; if it already exists, read it, and only if it differs from the wanted object
delete it and create it again. That needs only create, get and delete, which the roles Kubeflow
gives every profile grant (`kubeflow-edit`, aggregated from the Tensorboards and Jupyter web
apps' `cluster-role.yaml` in kubeflow/manifests: get/list/create/delete, no patch or update on
`tensorboards`; Jupyter's adds patch on `poddefaults`, the Tensorboards app's does not). What the
server stored is compared with what was sent, since a CRD's structural schema prunes unknown
fields without an error. Transient failures
(HTTP 429 and 5xx, dropped or refused connections) are retried with exponential backoff by
urllib3's own `Retry`, which the `kubernetes` client hands to its connection pool: every method
is retried, since each write here is safe to repeat.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.handlers
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")
# A custom resource type: (group, version, plural, kind).
Resource = tuple[str, str, str, str]

# Every verb `ensure_object` and `wait_until_ready` use on the objects they write.
LAUNCHER_VERBS = ("create", "get", "delete")
# Create / read / delete rounds before giving up on an object that keeps changing.
REPLACE_ROUNDS = 3
# What marks the objects a run creates (a Tensorboard, a PodDefault, a TrainJob) as ours.
MANAGED_BY = {"app.kubernetes.io/managed-by": "kfp-lightning"}
RUN_ID_LABEL = "kfp-lightning/run-id"
RUN_ID_ANNOTATION = "kfp-lightning/run-id"


class ClusterUnreachableError(RuntimeError):
    """No Kubernetes API could be configured, reached or used (the message says why)."""


class UnusableServerError(ClusterUnreachableError):
    """No working Kubernetes API server at the address takes these credentials.

    The message, one line, names the address and what answered there, if anything did.
    """


def shortened(text: str, width: int = 80) -> str:
    """`text` on one line, cut to `width` characters (then "..." marks the cut)."""
    shown = " ".join(text.split())
    return shown[:width] + ("..." if len(shown) > width else "")


def not_kubernetes(host: str, what: str, answer: str) -> str:
    """The one wording of an answer no Kubernetes API server gives, shortened to one line."""
    shown = shortened(answer)
    return f"the server at {host} is not a working Kubernetes API server: {what} answered {shown}"


class _Client(client.ApiClient):
    """The `kubernetes` client, where an answer that is not the object asked for fails in one line
    and a timeout given in seconds (a float) is a timeout.

    Its models raise ValueError for a missing required field, from deep inside it.
    """

    def request(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        # Its REST layer takes a lone number only when it is an int, as the request's total,
        # and ignores any other (kubernetes/client/rest.py, `RESTClientObject.request`): our
        # timeouts, seconds as floats, would mean none at all, and a server that takes the
        # connection and never answers would hold the request for good. A pair is honoured.
        if isinstance(_request_timeout, float):
            _request_timeout = (_request_timeout, _request_timeout)
        try:
            return super().request(*args, _request_timeout=_request_timeout, **kwargs)
        except UnicodeDecodeError:  # it decodes every answer as UTF-8 (rest.py, the same method)
            what = f"a {args[0]} of {urllib.parse.urlsplit(args[1]).path}"
            answer = "bytes that are not UTF-8 text"
            raise UnusableServerError(
                not_kubernetes(self.configuration.host, what, answer)
            ) from None

    def deserialize(self, response: Any, response_type: Any) -> Any:
        try:
            # Every object the API answers with is a JSON object; the client makes None of `null`
            # and an empty model of a list (api_client.py, `__deserialize_model`).
            is_object = response_type == "object" or hasattr(client.models, str(response_type))
            if is_object and not isinstance(json.loads(response.data), dict):
                raise ValueError(response.data)
            return super().deserialize(response, response_type)
        except (ValueError, TypeError, AttributeError):
            # The kind as Kubernetes names it, not the client's model class (V1APIResourceList).
            kind = re.sub(r"^V\d+(?:(?:alpha|beta)\d+)?(?=[A-Z])", "", str(response_type))
            what = f"a request for {'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"
            answer, host = f"HTTP {response.status}: {response.data}", self.configuration.host
            raise UnusableServerError(not_kubernetes(host, what, answer)) from None


@dataclasses.dataclass(frozen=True)
class Patience:
    """How hard to try: retries of one request, and the readiness polling interval.

    Attributes:
        attempts: Tries per request, the first included.
        backoff_seconds: urllib3's backoff factor: the second retry waits this long, each
            further one twice as long as the one before (the first is immediate).
        poll_seconds: Pause between two readiness checks.
        request_timeout_seconds: Connect and read timeout of one request.
        delete_timeout_seconds: How long an object being replaced may take to go away.
    """

    attempts: int = 5
    backoff_seconds: float = 0.5
    poll_seconds: float = 2.0
    request_timeout_seconds: float = 15.0
    delete_timeout_seconds: float = 60.0


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
        kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
        # The client says "No configuration found" for a path that does not exist: say that.
        if not any(Path(p).expanduser().is_file() for p in kubeconfig.split(os.pathsep)):
            raise ClusterUnreachableError(
                f"not running in a pod ({in_cluster_error}) and no kubeconfig at {kubeconfig} "
                "(no such file)"
            ) from None
        # A failing credential plugin is only logged (kube_config.py, `_load_from_exec_plugin`),
        # over several lines, and the client goes on without credentials: catch the record.
        plugin_failures = logging.handlers.BufferingHandler(capacity=100)
        plugin_failures.setLevel(logging.ERROR)
        logging.getLogger().addHandler(plugin_failures)
        try:
            config.load_kube_config(
                kubeconfig, client_configuration=configuration, persist_config=False
            )
            _, active = config.list_kube_config_contexts(kubeconfig)
        # A malformed file surfaces as YAML, type or key errors from deep in the client.
        except Exception as kubeconfig_error:
            first_line = (str(kubeconfig_error).strip().splitlines() or [""])[0]
            raise ClusterUnreachableError(
                f"not running in a pod ({in_cluster_error}) and {kubeconfig} is not a usable "
                f"kubeconfig ({type(kubeconfig_error).__name__}: {first_line})"
            ) from kubeconfig_error
        finally:
            logging.getLogger().removeHandler(plugin_failures)
        if plugin_failures.buffer:
            why = shortened(plugin_failures.buffer[0].getMessage(), 200)
            raise ClusterUnreachableError(
                f"the kubeconfig's credential plugin failed ({why}): log in again, or fix its "
                "users[].user.exec"
            ) from None
        namespace = active.get("context", {}).get("namespace") or "default"
    if not configuration.verify_ssl:  # the kubeconfig's own choice: not warned of per request
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    configuration.retries = urllib3.Retry(
        total=patience.attempts - 1,
        backoff_factor=patience.backoff_seconds,
        status_forcelist=(429, 500, 502, 503, 504),  # transient: rate limits, server faults
        allowed_methods=None,  # every method: each write here is safe to repeat
        raise_on_status=False,  # the last answer reaches the caller as an ApiException
        respect_retry_after_header=True,  # a 429's or 503's own wait comes first
        redirect=False,  # an API server never redirects: a login proxy's redirect is its answer
    )
    return _Client(configuration), namespace


def connection_failure(err: urllib3.exceptions.HTTPError) -> str:
    """What a user can act on in a failed connection: "Connection refused", a TLS failure...

    urllib3 nests the cause (MaxRetryError -> NewConnectionError -> OSError); the innermost
    message is the useful one, without the pool and retry bookkeeping around it.
    """
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, urllib3.exceptions.ProtocolError) and len(reason.args) == 2:
        # (what happened, its cause), which str() would show as a tuple of reprs.
        reason = f"{str(reason.args[0]).rstrip('.')}: {reason.args[1]}"
    elif isinstance(reason, urllib3.exceptions.PoolError):  # "<pool>: <what happened>"
        reason = str(reason).removeprefix(f"{reason.pool}: ")
    # Long enough for a TLS failure's reason; a server that sends garbage has it quoted.
    shown = shortened(str(reason).split("Failed to establish a new connection: ")[-1], 200)
    # Every try the pool's Retry allows was used (urllib3 raises MaxRetryError only then): say
    # how many, as the wait may have been that many timeouts long; the reason is the last's.
    retries = getattr(getattr(err, "pool", None), "retries", None)
    if isinstance(err, urllib3.exceptions.MaxRetryError) and isinstance(retries, urllib3.Retry):
        shown += f" ({retries.total + 1} attempts)" if retries.total else ""
    return shown


def api_answer(err: ApiException) -> str:
    """The API server's refusal in the one wording every message uses: "HTTP 403: <message>".

    The server answers with a Status object whose `message` says what was refused and why;
    without one (a proxy's answer), the HTTP reason stands in.
    """
    try:
        message = str(json.loads(err.body)["message"])
    except (TypeError, ValueError, KeyError):
        message = str(err.reason or "").strip()
    return f"HTTP {err.status}: {message}" if message else f"HTTP {err.status}"


def unusable_namespace(err: ApiException, namespace: str) -> str | None:
    """Why `namespace` refused a request: it does not exist, or it is being deleted; else None
    (another object is missing, or the refusal has another cause).

    The API server's NamespaceLifecycle admission plugin refuses a write into a namespace that
    does not exist with a 404 Status whose details name it, kind `namespaces`, and one into a
    namespace being deleted with a 403 whose cause is `NamespaceTerminating` (kubernetes/
    kubernetes, staging/src/k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle/
    admission.go): not to be taken for a resource the cluster does not serve, nor for RBAC.
    """
    try:
        details = json.loads(err.body)["details"]
        if err.status == 404 and (details["kind"], details["name"]) == ("namespaces", namespace):
            return f"namespace {namespace} does not exist"
        causes = details.get("causes") or []
        if err.status == 403 and any(c.get("reason") == "NamespaceTerminating" for c in causes):
            return f"namespace {namespace} is being deleted"
    except (TypeError, ValueError, KeyError, AttributeError):
        pass
    return None


def namespace_state(api_client: client.ApiClient, namespace: str, timeout: float) -> str | None:
    """Why no run can use `namespace`, as `unusable_namespace` words it; None when it is
    active, or when these credentials may not read it (a Kubeflow profile's users may not read
    namespaces) or the server failed.

    Raises:
        ClusterUnreachableError: No connection could be made or kept.
    """
    read = client.CoreV1Api(api_client).read_namespace
    try:
        found = call(
            lambda: read(namespace, _request_timeout=timeout), f"the read of namespace {namespace}"
        )
    except ApiException as err:
        # Only the API server's own answer, which names the namespace, not any 404 (nor a
        # refusal to read it).
        return unusable_namespace(err, namespace)
    # Deleted but held by finalizers: reads still work, writes are refused.
    if found.status and found.status.phase == "Terminating":
        return f"namespace {namespace} is being deleted"
    return None


def check_server(api_client: client.ApiClient, timeout: float) -> str:
    """Asks for the server's version: whether a Kubernetes API server there takes our credentials.

    Every Kubernetes API server answers `/version` with its version object to anyone: the
    `system:public-info-viewer` ClusterRole grants it to `system:authenticated` and
    `system:unauthenticated` (kubernetes/kubernetes, plugin/pkg/auth/authorizer/rbac/
    bootstrappolicy/policy.go), unless anonymous auth is off; and credentials it does not
    accept are answered 401 by authentication, before any authorizer is asked
    (staging/src/k8s.io/apiserver/pkg/endpoints/filters/authentication.go). So a 401 is about
    the credentials, and any other answer than a version object comes from another server.

    Args:
        api_client: A configured client.
        timeout: Connect and read timeout.

    Returns:
        The server's `gitVersion` ("v1.31.2").

    Raises:
        UnusableServerError: Nothing answers, what answers is not a working Kubernetes API
            server, or it refused these credentials.
    """
    host = api_client.configuration.host
    try:
        # The raw answer: the client's VersionInfo fails on a missing field, from deep inside.
        version = client.VersionApi(api_client).get_code(
            _preload_content=False, _request_timeout=timeout
        )
    except urllib3.exceptions.HTTPError as err:
        failure = f"no Kubernetes API server answers at {host}: {connection_failure(err)}"
        if isinstance(getattr(err, "reason", err), urllib3.exceptions.SSLError):
            # Something answered, and TLS with it failed: most often a certificate that the
            # kubeconfig's certificate-authority does not vouch for.
            failure = (
                f"TLS with the server at {host} failed ({connection_failure(err)}): check "
                "the certificate-authority of the kubeconfig's cluster"
            )
        raise UnusableServerError(failure) from None
    except ApiException as err:
        if err.status == 401:
            raise UnusableServerError(answered(host, "", err)) from None
        raise UnusableServerError(not_kubernetes(host, "its /version", api_answer(err))) from None
    try:
        git_version = json.loads(version.data)["gitVersion"]
        if not isinstance(git_version, str) or not git_version.isprintable():
            raise ValueError(git_version)
        return shortened(git_version)
    except (ValueError, TypeError, KeyError):
        answer = f"HTTP {version.status}: {version.data.decode(errors='replace')}"
        raise UnusableServerError(not_kubernetes(host, "its /version", answer)) from None


def answered(host: str, what: str, err: ApiException) -> str:
    """The one wording of the API server's error answer to `what` ("" for any request).

    A 401 is about the credentials, whatever was asked (see `check_server`).
    """
    if err.status == 401:
        return (
            f"the server at {host} refused these credentials ({api_answer(err)}): renew the "
            "kubeconfig's credentials (log in again, or get a new token)"
        )
    return f"the Kubernetes API server at {host} answered {what} with {api_answer(err)}"


def lost(host: str, err: ClusterUnreachableError) -> str:
    """The one wording of a failed request: the server's own failure, or a connection lost."""
    if isinstance(err, UnusableServerError):
        return str(err)
    return f"the Kubernetes API server at {host} stopped answering: {err}"


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


def differences(sent: object, stored: object, path: str = "") -> list[str]:
    """Where `stored` lacks or changed what `sent` holds, as field paths (`spec.env[2].name`).

    Fields the server added (defaults, a webhook's additions, metadata it manages) are not
    differences; a field it dropped (a structural schema prunes unknown fields without an
    error) or rewrote is.

    Args:
        sent: What was sent, or the part of it that must be kept.
        stored: What the server holds.
        path: The path of `sent` within the whole object (for recursion).

    Returns:
        The paths, in the order of `sent`; empty when everything sent was kept as sent.
    """
    # Anything else (another type, a list of another length) differs as a whole.
    found: list[str] = []
    if isinstance(sent, dict) and isinstance(stored, dict):
        for key, value in sent.items():
            where = f"{path}.{key}" if path else str(key)
            found += differences(value, stored[key], where) if key in stored else [where]
        return found
    if isinstance(sent, list) and isinstance(stored, list) and len(stored) == len(sent):
        for index, (value, kept) in enumerate(zip(sent, stored, strict=True)):
            found += differences(value, kept, f"{path}[{index}]")
        return found
    return [] if sent == stored else [path or "."]


class ObjectNotEnsuredError(RuntimeError):
    """An object could not be brought to the wanted state (the message says which and why)."""


def request(
    api: client.CustomObjectsApi,
    resource: Resource,
    verb: str,
    namespace: str,
    name: str,
    timeout: float,
    absent: int = 0,
    **options: Any,
) -> Any:
    """One `verb` ("create", "read" or "delete") of the namespaced custom object `name`.

    Args:
        api: The client.
        resource: (group, version, plural, kind).
        verb: What to do; a create sends `body=`, the others name the object.
        namespace: Its namespace.
        name: Its name (for a create, as the messages show it).
        timeout: Connect and read timeout (the client's `Retry` does the retries).
        absent: An HTTP status that means "not there" (404) or "there already" (409).
        **options: The client method's own options (`body`, `dry_run`, ...).

    Returns:
        The server's answer; None when it answered `absent`.

    Raises:
        ApiException: The server refused (after the transient failures' retries).
        ClusterUnreachableError: No connection could be made or kept.
    """
    group, version, plural, kind = resource
    method = getattr(api, f"{'get' if verb == 'read' else verb}_namespaced_custom_object")
    named = () if verb == "create" else (name,)
    options["_request_timeout"] = timeout
    what = f"{verb} {kind} {namespace}/{name}"
    try:
        return call(lambda: method(group, version, namespace, plural, *named, **options), what)
    except ApiException as err:
        if err.status == absent:
            return None
        raise


def ensure_object(
    api: client.CustomObjectsApi, resource: Resource, wanted: dict[str, Any], patience: Patience
) -> str:
    """Creates a namespaced custom object, or replaces an existing one that differs from it.

    Uses only the verbs in `LAUNCHER_VERBS`, which the roles Kubeflow gives a profile grant:
    create; on 409 get and compare; if it differs, delete exactly the version read (uid and
    resourceVersion preconditions, so a concurrent change is re-read, not lost), wait until it
    is gone and create again. The objects are deterministic in their inputs, so a difference
    means an older format or a hand edit. Whatever is created is compared with what the server
    stored, so a pruned or rewritten field is an error, not a silent success.

    Args:
        api: The client.
        resource: (group, version, plural, kind).
        wanted: The full object; its metadata names its namespace.
        patience: Retries, polling, and how long a deleted object may take to go.

    Returns:
        "created", "replaced" or "unchanged".

    Raises:
        ApiException: The server refused (404: no such resource type, 403: forbidden, ...).
        ClusterUnreachableError: The API could not be reached.
        ObjectNotEnsuredError: The server stored it differently from what was sent, or an
            object being replaced did not go away or kept changing.
    """
    metadata = wanted["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    # Others may add labels and annotations of their own; they change nothing here.
    ours = {k: metadata[k] for k in ("labels", "annotations") if k in metadata}
    what = f"{resource[3]} {namespace}/{name}"

    def ask(verb: str, absent: int = 0, **options: Any) -> Any:
        timeout = patience.request_timeout_seconds
        return request(api, resource, verb, namespace, name, timeout, absent, **options)

    replaced = False
    for _ in range(REPLACE_ROUNDS):
        if (stored := ask("create", 409, body=wanted)) is not None:
            if changed := differences(wanted, stored):
                fields = ", ".join(f"`{field}`" for field in changed)
                raise ObjectNotEnsuredError(
                    f"the API server stored {what} without {fields} as sent (pruned or "
                    "rewritten: its CRD's schema does not know the field, or a webhook changed it)"
                )
            return "replaced" if replaced else "created"
        if (existing := ask("read", 404)) is None:  # deleted since: create it again
            continue
        found = existing["metadata"]
        # The wanted object: the same `spec`, and our labels and annotations with our values.
        if existing.get("spec") == wanted.get("spec") and not differences(ours, found):
            return "replaced" if replaced else "unchanged"
        body = {"preconditions": {"uid": found["uid"], "resourceVersion": found["resourceVersion"]}}
        try:
            ask("delete", 404, body=body)  # 404: already gone
        except ApiException as err:
            if err.status == 409:  # changed since it was read: read and compare again
                continue
            raise
        # Wait until the version read is gone (finalizers may hold it for a while); one
        # someone created again meanwhile is compared on the next round.
        deadline = time.monotonic() + patience.delete_timeout_seconds
        while (current := ask("read", 404)) and current["metadata"].get("uid") == found["uid"]:
            if time.monotonic() >= deadline:
                raise ObjectNotEnsuredError(
                    f"{what} was deleted to be replaced but was still there after "
                    f"{patience.delete_timeout_seconds:g} s (finalizers: "
                    f"{current['metadata'].get('finalizers') or 'none'})"
                )
            time.sleep(patience.poll_seconds)
        replaced = True
    raise ObjectNotEnsuredError(
        f"{what} kept changing while it was being replaced ({REPLACE_ROUNDS} tries)"
    )


def wait_until_ready(
    api: client.CustomObjectsApi,
    resource: Resource,
    namespace: str,
    name: str,
    timeout_seconds: float,
    patience: Patience,
) -> bool:
    """Polls a custom object (a `Tensorboard`) until its controller reports a ready replica.

    Args:
        api: The client.
        resource: (group, version, plural, kind) of the object.
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
    deadline = time.monotonic() + timeout_seconds
    while True:
        current = request(api, resource, "read", namespace, name, patience.request_timeout_seconds)
        if ((current.get("status") or {}).get("readyReplicas") or 0) >= 1:
            return True
        if (remaining := deadline - time.monotonic()) <= 0:
            return False
        time.sleep(min(patience.poll_seconds, remaining))
