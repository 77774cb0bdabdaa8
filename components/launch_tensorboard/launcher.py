"""Start a run's live TensorBoard on Kubeflow, or explain how to view the logs without one.

Runs beside training: validates the parameters, creates the run's `Tensorboard` (and, for
`s3://` logs, the `PodDefault` with the object store's credentials) in the run's namespace,
waits a bounded time for it to be ready, and writes a Markdown note with the link plus the
`mlpipeline_ui_metadata` behind the run page's "Start Tensorboard" button (`fallback.py`).
Monitoring must never fail a training run: when the cluster cannot host a `Tensorboard`
(no CRD, RBAC, no API reachable, a local logs directory, an object stored differently from what
was sent) the task still succeeds, and the note says why and gives the `kubectl` commands for a
port-forwarded ClusterIP TensorBoard instead. For a `pvc://` claim that only one node can mount
at a time (ReadWriteOnce), no TensorBoard is started at all: its pod, created while the download
runs, could take the claim to another node first and leave training waiting on a Multi-Attach
error. Only a bad parameter fails the task, with a one-line message and no output written.

Every API call is one the roles Kubeflow gives a profile's `default-editor` allow
(`LAUNCHER_PERMISSIONS`); `manifests/tensorboard-launcher-rbac.yaml` grants exactly these.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import jinja2
import pydantic
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.common import kubernetes as cluster
from kfp_lightning.components.common import logs_location, run_form
from kfp_lightning.components.common.errors import UserInputError
from kfp_lightning.components.common.files import atomic_write_text, write_json
from kfp_lightning.components.launch_tensorboard import fallback, objects

WaitSeconds = Annotated[int, pydantic.Field(ge=0, le=3600, description="an integer from 0 to 3600")]
RBAC_MANIFEST = "manifests/tensorboard-launcher-rbac.yaml"
# (group, plural, verbs) of every call the launcher makes: its objects, and the claim of a
# pvc:// root, read for its access modes. Kubeflow's `kubeflow-edit` grants all of them.
LAUNCHER_PERMISSIONS = (
    (objects.TENSORBOARD_API[0], objects.TENSORBOARD_API[2], cluster.LAUNCHER_VERBS),
    (objects.PODDEFAULT_API[0], objects.PODDEFAULT_API[2], cluster.LAUNCHER_VERBS),
    ("", "persistentvolumeclaims", ("get",)),
)
# Access modes that let pods on several nodes mount a volume at once: Kubernetes' attach-detach
# controller allows attaching a persistent volume to a second node only with one of these
# (kubernetes/kubernetes, pkg/volume/util/util.go, `IsMultiAttachAllowed`); any other claim is
# attached to one node, and a pod elsewhere waits on a Multi-Attach error.
SHARED_ACCESS_MODES = ("ReadWriteMany", "ReadOnlyMany")
# The note's template is templates/note.md.j2 in this package: Markdown, so nothing is escaped.
NOTES = jinja2.Environment(
    loader=jinja2.PackageLoader(__package__),
    trim_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)
NOTES.globals.update(fallback=fallback, quote=shlex.quote)  # what the note's template calls


@dataclasses.dataclass(frozen=True)
class Settings:
    """The launcher's validated parameters.

    Attributes:
        run_id: The pipeline run's id.
        location: The run's live logs.
        namespace: The run's namespace; None when no pod or kubeconfig tells it.
        s3_endpoint: http(s)://host[:port] of the object store (s3:// logs).
        s3_secret: Secret with the object store's keys (s3:// logs).
        base_url: "" for relative links, else the Kubeflow URL without trailing "/".
        wait_seconds: How long to wait for a ready TensorBoard.
    """

    run_id: str
    location: logs_location.LogsLocation
    namespace: str | None
    s3_endpoint: str
    s3_secret: str
    base_url: str
    wait_seconds: int


@dataclasses.dataclass(frozen=True)
class Launch:
    """What the launcher did, as the Markdown tells it.

    Attributes:
        state: "ready" or "starting" (a `Tensorboard` exists), "fallback" (none could be made),
            "single-node-claim" (none was started: the pvc:// claim attaches to one node at a
            time) or "local" (the logs are a local directory).
        name: The `Tensorboard`'s name (for a fallback, the name it would have had).
        url: The TensorBoard link ("" unless a `Tensorboard` exists).
        detail: "created", "replaced" or "unchanged" for a `Tensorboard`; the cause for a
            fallback; the claim's access modes for a single-node claim.
        ready_after_seconds: Time from the first request to the first ready status, if seen.
        claim_unread: Why the access modes of the pvc:// claim could not be read, if they could
            not (the note warns that the claim may be one node's).
    """

    state: str
    name: str
    url: str = ""
    detail: str = ""
    ready_after_seconds: float | None = None
    claim_unread: str = ""


@run_form.run_config
class LauncherConfig:
    """How the run's TensorBoard is offered to the user; validated on construction."""

    kubeflow_base_url: str = run_form.run_parameter("/")
    """"/" for a TensorBoard link relative to the Kubeflow UI, or the Kubeflow URL (e.g.
    https://kubeflow.example.com) for an absolute one."""
    wait_ready_seconds: WaitSeconds = run_form.run_parameter(60, scope=run_form.COMPONENT)
    """How long to wait for TensorBoard to be ready before finishing (0 to 3600); the note
    says whether it was."""

    @pydantic.field_validator("kubeflow_base_url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        logs_location.parse_base_url(url)
        return url

    @property
    def link_prefix(self) -> str:
        """What goes before `/tensorboard/...` in links: "" or the URL without trailing "/"."""
        return logs_location.parse_base_url(self.kubeflow_base_url)


def describe_refusal(err: ApiException, resource: tuple[str, str, str, str], namespace: str) -> str:
    """Why the API server refused, in words a user can act on.

    Args:
        err: The server's answer.
        resource: (group, version, plural, kind) of the object being written.
        namespace: The run's namespace.

    Returns:
        One paragraph of Markdown.
    """
    group, _, plural, kind = resource
    answer = cluster.api_answer(err)
    if why := cluster.unusable_namespace(err, namespace):
        return f"The {why} ({answer}): run in a profile's namespace."
    if err.status == 404:
        return (
            f"The cluster has no `{plural}.{group}` resource in namespace `{namespace}` ({answer})"
            f": Kubeflow's {kind} CRD is not installed, as in standalone Kubeflow Pipelines, which "
            "has neither Kubeflow's TensorBoard controller nor its PodDefault webhook."
        )
    if err.status in (401, 403):
        return (
            f"The pipeline's service account may not manage `{plural}.{group}` in namespace "
            f"`{namespace}` ({answer}). A cluster admin can grant it the Role in kfp-lightning's "
            f"`{RBAC_MANIFEST}` (see `manifests/README.md`)."
        )
    return f"The Kubernetes API refused the {kind} ({answer})."


def shares_across_nodes(access_modes: Sequence[str]) -> bool:
    """Whether a volume with these access modes can be mounted on several nodes at once.

    Args:
        access_modes: A claim's (or volume's) access modes, e.g. ["ReadWriteOnce"].

    Returns:
        True when they include ReadWriteMany or ReadOnlyMany (`SHARED_ACCESS_MODES`); False
        for ReadWriteOnce, ReadWriteOncePod or none.
    """
    return any(mode in SHARED_ACCESS_MODES for mode in access_modes)


def claim_access_modes(
    api_client: client.ApiClient, namespace: str, claim: str, patience: cluster.Patience
) -> list[str]:
    """The access modes of a PersistentVolumeClaim: its bound volume's, else those it asks for.

    Args:
        api_client: A configured client.
        namespace: The claim's namespace.
        claim: Its name.
        patience: Retries.

    Returns:
        `status.accessModes` (the volume's) once bound, else `spec.accessModes`.

    Raises:
        ApiException: The server refused the read (403, or 404 for no such claim).
        ClusterUnreachableError: The API could not be reached.
    """
    read = client.CoreV1Api(api_client).read_namespaced_persistent_volume_claim
    timeout = patience.request_timeout_seconds
    what = f"read PersistentVolumeClaim {namespace}/{claim}"
    found = cluster.call(lambda: read(claim, namespace, _request_timeout=timeout), what)
    status_modes = (found.status.access_modes if found.status else None) or []
    return list(status_modes or (found.spec.access_modes if found.spec else None) or [])


def start_on_cluster(
    api_client: client.ApiClient, settings: Settings, patience: cluster.Patience
) -> Launch:
    """Creates the run's `Tensorboard` (and `PodDefault`), then waits for it.

    Args:
        api_client: A configured client.
        settings: The validated parameters; `location` is s3:// or pvc://, `namespace` is set.
        patience: Retries and polling.

    Returns:
        A "ready" or "starting" launch, a "fallback" one saying why none could be made, or a
        "single-node-claim" one when the pvc:// claim cannot be shared with training.
    """
    api = client.CustomObjectsApi(api_client)
    namespace, location = str(settings.namespace), settings.location
    name, unread = objects.tensorboard_name(settings.run_id), ""
    if location.scheme == "pvc":
        try:
            modes = claim_access_modes(api_client, namespace, location.claim, patience)
            if not shares_across_nodes(modes):
                return Launch("single-node-claim", name, detail=", ".join(modes) or "none")
        except (ApiException, cluster.ClusterUnreachableError) as err:
            # The launch goes on as before; the note warns of what may happen.
            unread = cluster.api_answer(err) if isinstance(err, ApiException) else str(err)
    started = time.monotonic()
    resource, poddefault = objects.PODDEFAULT_API, None
    try:
        if location.scheme == "s3":
            # The webhook injects the credentials only when a pod is created: the PodDefault
            # must exist before the controller creates the TensorBoard pod.
            wanted = objects.poddefault_object(namespace, settings.s3_endpoint, settings.s3_secret)
            cluster.ensure_object(api, objects.PODDEFAULT_API, wanted, patience)
            poddefault = wanted["metadata"]["name"]
        resource = objects.TENSORBOARD_API
        wanted = objects.tensorboard_object(namespace, settings.run_id, location, poddefault)
        outcome = cluster.ensure_object(api, objects.TENSORBOARD_API, wanted, patience)
    except ApiException as err:
        detail = describe_refusal(err, resource, namespace)
    except cluster.ClusterUnreachableError as err:
        detail = f"No Kubernetes API could be reached: {err}."
    except cluster.ObjectNotEnsuredError as err:
        detail = f"The {resource[3]} could not be made as this run needs it: {err}."
    else:
        url = f"{settings.base_url}/tensorboard/{namespace}/{name}/"
        try:
            ready = cluster.wait_until_ready(
                api, objects.TENSORBOARD_API, namespace, name, settings.wait_seconds, patience
            )
        except (ApiException, cluster.ClusterUnreachableError):
            # It exists; only its progress is unknown, which the note's kubectl command shows.
            ready = False
        if not ready:
            return Launch("starting", name, url, outcome, claim_unread=unread)
        return Launch("ready", name, url, outcome, time.monotonic() - started, unread)
    return Launch("fallback", name, detail=detail, claim_unread=unread)


def start_live_tensorboard(
    markdown_path: str | Path,
    ui_metadata_path: str | Path,
    run_id: str,
    logs: logs_location.LiveLogsConfig,
    launcher: LauncherConfig,
    patience: cluster.Patience = cluster.Patience(),
) -> Launch:
    """Starts the run's live TensorBoard, or explains how to view its logs, and writes the notes.

    Args:
        markdown_path: Where to write the Markdown note.
        ui_metadata_path: Where to write the `mlpipeline_ui_metadata` JSON.
        run_id: The pipeline run's id; names the `Tensorboard` and the run's logs folder.
        logs: Where the logs are (`{namespace}` becomes the run's namespace) and, for s3://,
            the object store and its credentials.
        launcher: The link's base URL and how long to wait for a ready TensorBoard.
        patience: Retries and polling.

    Returns:
        What was done.
    """
    unreachable = "namespace unknown"  # the cause if connecting works but no namespace is known
    try:
        api_client, config_namespace = cluster.connect(patience)
    except cluster.ClusterUnreachableError as err:
        api_client, config_namespace, unreachable = None, None, str(err)
    # A pod's own namespace ($POD_NAMESPACE, else its service account's) wins over kubeconfig's.
    namespace = logs_location.current_namespace() or config_namespace
    try:
        endpoint, unresolved = logs.endpoint() or logs.s3_endpoint, ""
    except UserInputError as err:
        # `auto`, and no KFP object store resolves from this pod: training cannot reach it
        # either, but this task only watches; the note says why and what to set.
        endpoint, unresolved = fallback.DEFAULT_S3_ENDPOINT, str(err)
    settings = Settings(
        run_id=run_id.strip(),
        location=logs.run_location(run_id, namespace),
        namespace=namespace,
        s3_endpoint=endpoint,
        s3_secret=logs.s3_credentials_secret,
        base_url=launcher.link_prefix,
        wait_seconds=launcher.wait_ready_seconds,
    )
    name = objects.tensorboard_name(settings.run_id)
    if settings.location.scheme == "file":
        launch = Launch("local", name)
    elif unresolved and settings.location.scheme == "s3":
        cause = (
            f"KFP's object store, which holds the logs, was not found from this pod ({unresolved})."
        )
        launch = Launch("fallback", name, detail=cause)
    elif api_client is None or namespace is None:
        cause = f"No Kubernetes API could be reached: {unreachable}."
        launch = Launch("fallback", name, detail=cause)
    else:
        with api_client:
            launch = start_on_cluster(api_client, settings, patience)
    metadata = fallback.ui_metadata(settings.location, settings.s3_endpoint, settings.s3_secret)
    write_json(ui_metadata_path, metadata)
    # The note shown in the run's page: templates/note.md.j2.
    note = NOTES.get_template("note.md.j2").render(launch=launch, settings=settings)
    atomic_write_text(markdown_path, note)
    print(f"TensorBoard: {launch.state} {launch.url or settings.location.uri}", flush=True)
    return launch


def launch_from_run_form(
    markdown_path: str | Path,
    ui_metadata_path: str | Path,
    run_id: str,
    parameters: Mapping[str, Any],
    patience: cluster.Patience = cluster.Patience(),
) -> Launch:
    """The KFP component's entry: validates the run-form values, then starts TensorBoard.

    Args:
        markdown_path: Where to write the Markdown note.
        ui_metadata_path: Where to write the `mlpipeline_ui_metadata` JSON.
        run_id: The pipeline run's id.
        parameters: Run-form values of the `LiveLogsConfig` and `LauncherConfig` fields.
        patience: Retries and polling.

    Returns:
        What was done.

    Raises:
        UserInputError: A parameter is invalid (nothing is written then).
    """
    logs = run_form.from_run_form(logs_location.LiveLogsConfig, parameters)
    launcher = run_form.from_run_form(LauncherConfig, parameters)
    return start_live_tensorboard(markdown_path, ui_metadata_path, run_id, logs, launcher, patience)
