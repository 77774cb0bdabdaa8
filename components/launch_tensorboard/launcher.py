"""Start a run's live TensorBoard on Kubeflow, or explain how to view the logs without one.

Runs beside training: validates the parameters, creates or updates the run's `Tensorboard`
(and, for `s3://` logs, the `PodDefault` with the object store's credentials) in the run's
namespace, waits a bounded time for it to be ready, and writes a Markdown note with the link
plus the legacy `mlpipeline_ui_metadata` for KFP UIs that offer "Start Tensorboard".
Monitoring must never fail a training run: when the cluster cannot host a `Tensorboard`
(no CRD, RBAC, no API reachable, a local logs directory) the task still succeeds, and the note
says why and gives the `kubectl` commands for a port-forwarded ClusterIP TensorBoard instead.
Only a bad parameter fails the task, with a one-line message and no output written.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.files import atomic_write_text, write_json
from kfp_lightning.components.common.logs_location import (
    LiveLogsConfig,
    LogsLocation,
    current_namespace,
)
from kfp_lightning.components.common.run_form import COMPONENT, from_run_form, run_parameter
from kfp_lightning.components.common.urls import parse_base_url
from kfp_lightning.components.launch_tensorboard import fallback
from kfp_lightning.components.launch_tensorboard.kube_api import (
    ClusterUnreachableError,
    Patience,
    connect,
    ensure_object,
    wait_until_ready,
)
from kfp_lightning.components.launch_tensorboard.objects import (
    PODDEFAULT_API,
    TENSORBOARD_API,
    poddefault_object,
    tensorboard_name,
    tensorboard_object,
)

MAX_WAIT_SECONDS = 3600
RBAC_MANIFEST = "manifests/tensorboard-launcher-rbac.yaml"
FIRST_START_HINT = (
    "The first TensorBoard on a node pulls its image, which usually takes one to three "
    "minutes; later ones start in seconds."
)


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
    location: LogsLocation
    namespace: str | None
    s3_endpoint: str
    s3_secret: str
    base_url: str
    wait_seconds: int


@dataclasses.dataclass(frozen=True)
class Launch:
    """What the launcher did, as the Markdown tells it.

    Attributes:
        state: "ready" or "starting" (a `Tensorboard` exists), "fallback" (none could be made)
            or "local" (the logs are a local directory).
        name: The `Tensorboard`'s name (for a fallback, the name it would have had).
        url: The TensorBoard link ("" unless a `Tensorboard` exists).
        detail: "created", "updated" or "unchanged" for a `Tensorboard`; the cause for a fallback.
        ready_after_seconds: Time from the first request to the first ready status, if seen.
    """

    state: str
    name: str
    url: str = ""
    detail: str = ""
    ready_after_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class LauncherConfig:
    """How the run's TensorBoard is offered to the user; validated on construction."""

    kubeflow_base_url: str = run_parameter("/")
    """"/" for a TensorBoard link relative to the Kubeflow UI, or the Kubeflow URL (e.g.
    https://kubeflow.example.com) for an absolute one."""
    wait_ready_seconds: int = run_parameter(60, scope=COMPONENT)
    """How long to wait for TensorBoard to be ready before finishing (0 to 3600); the note
    says whether it was."""

    def __post_init__(self) -> None:
        parse_base_url(self.kubeflow_base_url)
        object.__setattr__(self, "wait_ready_seconds", check_wait(self.wait_ready_seconds))

    @property
    def link_prefix(self) -> str:
        """What goes before `/tensorboard/...` in links: "" or the URL without trailing "/"."""
        return parse_base_url(self.kubeflow_base_url)


def check_wait(value: object) -> int:
    """Validates `wait_ready_seconds`: an integer from 0 to `MAX_WAIT_SECONDS`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WAIT_SECONDS:
        raise invalid("wait_ready_seconds", value, f"an integer from 0 to {MAX_WAIT_SECONDS}")
    return value


def _status_message(err: ApiException) -> str:
    # The API server answers with a Status object; fall back to the HTTP reason without one.
    try:
        return str(json.loads(err.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(err.reason)


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
    answer = f"HTTP {err.status}: {_status_message(err)}"
    if err.status == 404:
        return (
            f"The cluster has no `{plural}.{group}` resource in namespace `{namespace}` "
            f"({answer}): Kubeflow's {kind} CRD is not installed, as in standalone Kubeflow "
            "Pipelines, which has neither Kubeflow's TensorBoard controller nor its PodDefault "
            "webhook."
        )
    if err.status in (401, 403):
        return (
            f"The pipeline's service account may not manage `{plural}.{group}` in namespace "
            f"`{namespace}` ({answer}). A cluster admin can grant it the Role in kfp-lightning's "
            f"`{RBAC_MANIFEST}` (see `manifests/README.md`)."
        )
    return f"The Kubernetes API refused the {kind} ({answer})."


def start_on_cluster(
    api_client: client.ApiClient, settings: Settings, patience: Patience
) -> Launch:
    """Creates or updates the run's `Tensorboard` (and `PodDefault`), then waits for it.

    Args:
        api_client: A configured client.
        settings: The validated parameters; `location` is s3:// or pvc://, `namespace` is set.
        patience: Retries and polling.

    Returns:
        A "ready" or "starting" launch, or a "fallback" one saying why none could be made.
    """
    api = client.CustomObjectsApi(api_client)
    namespace, location = str(settings.namespace), settings.location
    name = tensorboard_name(settings.run_id)
    started = time.monotonic()
    resource = PODDEFAULT_API
    try:
        poddefault = None
        if location.scheme == "s3":
            # The webhook injects the credentials only when a pod is created: the PodDefault
            # must exist before the controller creates the TensorBoard pod.
            wanted = poddefault_object(namespace, settings.s3_endpoint, settings.s3_secret)
            ensure_object(api, PODDEFAULT_API, wanted, patience)
            poddefault = wanted["metadata"]["name"]
        resource = TENSORBOARD_API
        wanted = tensorboard_object(namespace, settings.run_id, location, poddefault)
        outcome = ensure_object(api, TENSORBOARD_API, wanted, patience)
    except ApiException as err:
        return Launch("fallback", name, detail=describe_refusal(err, resource, namespace))
    except ClusterUnreachableError as err:
        return Launch("fallback", name, detail=f"No Kubernetes API could be reached: {err}.")
    url = f"{settings.base_url}/tensorboard/{namespace}/{name}/"
    try:
        ready = wait_until_ready(api, namespace, name, settings.wait_seconds, patience)
    except (ApiException, ClusterUnreachableError):
        # It exists; only its progress is unknown, which the note's kubectl command shows.
        ready = False
    if not ready:
        return Launch("starting", name, url, outcome)
    return Launch("ready", name, url, outcome, time.monotonic() - started)


def _markdown_started(launch: Launch, settings: Settings) -> str:
    ns, name = settings.namespace, launch.name
    done = {"created": "was created", "updated": "was updated", "unchanged": "was already there"}
    if launch.state == "ready":
        readiness = f"**Ready**, {launch.ready_after_seconds:.0f} s after this task requested it."
    else:
        readiness = (
            f"**Starting**: not ready after {settings.wait_seconds} s. {FIRST_START_HINT} The "
            f"link works once `kubectl -n {ns} get tensorboard {name} -o "
            "jsonpath='{.status.readyReplicas}'` prints 1 (or its row on Kubeflow's "
            "TensorBoards page shows it running)."
        )
    return (
        "### Live TensorBoard\n\n"
        f"**[Open TensorBoard for this run]({launch.url})**: the curves grow while training "
        "runs (TensorBoard's page refreshes itself every 30 s; its reload button shows new "
        "points sooner).\n\n"
        f"- {readiness}\n"
        f"- Logs: `{settings.location.uri}`, written by training as it goes.\n"
        f"- Kubeflow Tensorboard `{name}` in namespace `{ns}` {done[launch.detail]}. It keeps "
        "running after the run ends, so the curves stay available; delete it on Kubeflow's "
        f"TensorBoards page or with `kubectl -n {ns} delete tensorboard {name}`.\n"
    )


def _markdown_fallback(launch: Launch, settings: Settings) -> str:
    ns = settings.namespace or "NAMESPACE"
    objects = fallback.fallback_objects(settings.location, settings.s3_endpoint, settings.s3_secret)
    commands = fallback.kubectl_commands(ns, fallback.render_manifest(objects))
    return (
        "### Live TensorBoard: not started on the cluster\n\n"
        f"**Why:** {launch.detail}\n\n"
        f"Training is not affected. To watch its logs (`{settings.location.uri}`) live, run a "
        f"TensorBoard in namespace `{ns}` behind a ClusterIP Service and forward a local port "
        "to it, with your own kubectl credentials:\n\n"
        f"```sh\n{commands}```\n\n"
        f"Then open http://127.0.0.1:{fallback.LOCAL_PORT}/ while the port-forward runs. "
        f"Remove it with `kubectl -n {ns} delete deployment,service {fallback.NAME}`.\n"
    )


def _markdown_local(settings: Settings) -> str:
    path = settings.location.path
    return (
        "### Live TensorBoard\n\n"
        f"The logs are in the local directory `{path}`, which no cluster TensorBoard can read, "
        "so none was started. `--local` runs start TensorBoard on 127.0.0.1 and print its URL; "
        f"otherwise run `tensorboard --logdir {path} --host 127.0.0.1` on the machine that "
        "holds the directory and open the URL it prints.\n"
    )


def render_markdown(launch: Launch, settings: Settings) -> str:
    """The note shown in the run's page for `launch`."""
    if launch.state == "local":
        return _markdown_local(settings)
    if launch.state == "fallback":
        return _markdown_fallback(launch, settings)
    return _markdown_started(launch, settings)


def ui_metadata(location: LogsLocation) -> dict[str, object]:
    """The legacy `mlpipeline_ui_metadata` that offers "Start Tensorboard" in older KFP UIs."""
    return {"outputs": [{"type": "tensorboard", "source": location.uri}]}


def start_live_tensorboard(
    markdown_path: str | Path,
    ui_metadata_path: str | Path,
    run_id: str,
    logs: LiveLogsConfig,
    launcher: LauncherConfig,
    patience: Patience = Patience(),
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
    try:
        api_client, config_namespace = connect(patience)
        unreachable = ""
    except ClusterUnreachableError as err:
        api_client, config_namespace, unreachable = None, None, str(err)
    # A pod's own namespace ($POD_NAMESPACE, else its service account's) wins over kubeconfig's.
    namespace = current_namespace() or config_namespace
    settings = Settings(
        run_id=run_id.strip(),
        location=logs.run_location(run_id, namespace),
        namespace=namespace,
        s3_endpoint=logs.endpoint() or logs.s3_endpoint,
        s3_secret=logs.s3_credentials_secret,
        base_url=launcher.link_prefix,
        wait_seconds=launcher.wait_ready_seconds,
    )
    name = tensorboard_name(settings.run_id)
    if settings.location.scheme == "file":
        launch = Launch("local", name)
    elif api_client is None or namespace is None:
        cause = f"No Kubernetes API could be reached: {unreachable or 'namespace unknown'}."
        launch = Launch("fallback", name, detail=cause)
    else:
        with api_client:
            launch = start_on_cluster(api_client, settings, patience)
    write_json(ui_metadata_path, ui_metadata(settings.location))
    atomic_write_text(markdown_path, render_markdown(launch, settings))
    print(f"TensorBoard: {launch.state} {launch.url or settings.location.uri}", flush=True)
    return launch


def launch_from_run_form(
    markdown_path: str | Path,
    ui_metadata_path: str | Path,
    run_id: str,
    parameters: Mapping[str, Any],
    patience: Patience = Patience(),
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
    logs = from_run_form(LiveLogsConfig, parameters)
    launcher = from_run_form(LauncherConfig, parameters)
    return start_live_tensorboard(markdown_path, ui_metadata_path, run_id, logs, launcher, patience)
