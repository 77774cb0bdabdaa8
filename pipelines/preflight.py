"""`python pipelines/mnist.py --check-cluster`: whether a run would work on a cluster, and the fix.

Reads the cluster through the current kubeconfig context (or, in a pod, its service account)
and checks what a run depends on but only meets minutes in, one result per check: the
Tensorboard and PodDefault CRDs the live TensorBoard step creates objects of; the object-store
secret training and TensorBoard read (s3:// logs only); that the pipeline's service account may
create, read and patch those objects (SubjectAccessReviews, decided by the cluster's own
authorizer); a node with the requested `nvidia.com/gpu` count that the run's tolerations and
node selector reach; the Kubeflow Pipelines backend version; and, for training on several
nodes, Kubeflow Trainer's TrainJob CRD, its torch-distributed runtime and the right to create,
read and delete TrainJobs. Each check is a function
returning a `Check`; `check_cluster` runs them all, prints one line each and gives the exit
status: 0 when nothing failed, 1 when a check failed or no API server answers.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from kfp_lightning.components.common.errors import RunError, invalid
from kfp_lightning.components.common.kubernetes_syntax import (
    check_namespace_name,
    is_dns1123_subdomain,
)
from kfp_lightning.components.common.logs_location import (
    LogsLocation,
    current_namespace,
    parse_logs_root,
)
from kfp_lightning.components.launch_tensorboard.kube_api import (
    ClusterUnreachableError,
    connect,
    connection_failure,
)
from kfp_lightning.components.launch_tensorboard.launcher import RBAC_MANIFEST
from kfp_lightning.components.launch_tensorboard.objects import (
    ACCESS_KEY_KEY,
    PODDEFAULT_API,
    SECRET_KEY_KEY,
    TENSORBOARD_API,
)
from kfp_lightning.components.train_on_nodes import trainjob
from kfp_lightning.pipelines.mnist import GPU_RESOURCE

T = TypeVar("T")

DEFAULT_SERVICE_ACCOUNT = "default-editor"
DEFAULT_KFP_NAMESPACE = "kubeflow"
# The KFP API server's Deployment and container (kubeflow/pipelines,
# manifests/kustomize/base/pipeline/ml-pipeline-apiserver-deployment.yaml).
KFP_DEPLOYMENT = "ml-pipeline"
KFP_CONTAINER = "ml-pipeline-api-server"
MIN_BACKEND = (2, 5, 0)
SUPPORTED_BACKENDS = "2.5.0 and newer (Kubeflow 1.10.1+, standalone 2.5-2.17)"
REQUEST_TIMEOUT_SECONDS = 10.0
# The verbs the launcher uses: create, then on 409 get and (if it differs) a merge patch;
# readiness is polled with get (components/launch_tensorboard/kube_api.py).
LAUNCHER_VERBS = ("create", "get", "patch")
# The scheduler treats a cordoned node as carrying this taint (kubernetes/kubernetes,
# pkg/scheduler/framework/plugins/nodeunschedulable/node_unschedulable.go).
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
# Only these effects keep a new pod off a node; PreferNoSchedule is a preference
# (pkg/scheduler/framework/plugins/tainttoleration/taint_toleration.go).
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


class Status(enum.Enum):
    """A check's outcome, and the mark printed for it."""

    PASSED = "✓"
    FAILED = "✗"
    UNKNOWN = "?"  # could not be checked (no permission to read, unreadable value)


@dataclasses.dataclass(frozen=True)
class Check:
    """The result of one check.

    Attributes:
        name: What was checked, in a few words.
        status: Passed, failed or unknown.
        detail: What was found.
        fix: What to do about a failure (or how to check by other means when unknown).
    """

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
    """What a run needs from the cluster, from the pipeline's parameters and the options.

    Attributes:
        namespace: Where the run's pods run (a Kubeflow profile's namespace).
        service_account: The account the run's pods run as.
        kfp_namespace: Where the Kubeflow Pipelines backend runs.
        gpus: `nvidia.com/gpu` requested by training (0: a CPU node).
        node_selector: Labels the training node must carry.
        tolerations: Tolerations of the training pod (Kubernetes Toleration objects).
        logs: The live logs root, `{namespace}` filled in.
        s3_secret: Secret holding the object store's keys (s3:// logs).
        nodes: Nodes training runs on; more than one needs Kubeflow Trainer.
    """

    namespace: str
    service_account: str
    kfp_namespace: str
    gpus: int
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    logs: LogsLocation
    s3_secret: str
    nodes: int = 1


def check_names(namespace: str | None, service_account: str, kfp_namespace: str) -> None:
    """Validates the options that name Kubernetes objects.

    Raises:
        UserInputError: Naming the first invalid one.
    """
    if namespace is not None:
        check_namespace_name(namespace)
    if not is_dns1123_subdomain(service_account):
        raise invalid("service_account", service_account, "a Kubernetes service account name")
    check_namespace_name(kfp_namespace, "kfp_namespace")


def target_from_parameters(
    values: Mapping[str, Any],
    namespace: str,
    service_account: str,
    kfp_namespace: str,
    nodes: int = 1,
) -> Target:
    """The `Target` of a run with the given (validated) pipeline parameters.

    Args:
        values: Every pipeline parameter, as `validate_parameters` returns them.
        namespace: The run's namespace.
        service_account: The account its pods run as.
        kfp_namespace: The Kubeflow Pipelines backend's namespace.
        nodes: Nodes training runs on.

    Returns:
        The target.

    Raises:
        UserInputError: A name is not a valid Kubernetes name.
    """
    check_names(namespace, service_account, kfp_namespace)
    return Target(
        namespace=namespace,
        service_account=service_account,
        kfp_namespace=kfp_namespace,
        # The run form may hold the count as text ("1"): validated already, either form works.
        gpus=int(str(values["gpus"])),
        node_selector=dict(values["node_selector"]),
        tolerations=[dict(t) for t in values["tolerations"]],
        logs=parse_logs_root(values["tensorboard_logs_root"], namespace=namespace),
        s3_secret=values["s3_credentials_secret"],
        nodes=nodes,
    )


def _call(request: Callable[..., T], *args: object, **kwargs: object) -> T:
    """One API call with the preflight's timeout; a lost connection ends the whole check."""
    try:
        return request(*args, _request_timeout=REQUEST_TIMEOUT_SECONDS, **kwargs)
    except urllib3.exceptions.HTTPError as err:
        raise RunError(f"the Kubernetes API stopped answering: {connection_failure(err)}") from err


def _refusal(err: ApiException) -> str:
    return f"HTTP {err.status} {err.reason}".strip()


# --- the checks ---------------------------------------------------------------------------


def _served(api_client: client.ApiClient, resource: tuple[str, str, str, str]) -> Check | None:
    """The passed (or unreadable) check of a served custom resource; None when not served."""
    group, version, plural, kind = resource
    name = f"{kind} CRD"
    try:
        found = _call(client.CustomObjectsApi(api_client).get_api_resources, group, version)
    except ApiException as err:
        if err.status != 404:
            return Check(name, Status.UNKNOWN, f"discovery of {group}/{version}: {_refusal(err)}")
        return None
    if any(r.name == plural for r in found.resources):
        return Check(name, Status.PASSED, f"{plural}.{group}/{version} is served")
    return None


def check_crd(
    api_client: client.ApiClient, resource: tuple[str, str, str, str], logs: LogsLocation
) -> Check:
    """Whether the cluster serves a custom resource the launcher creates.

    Asks API discovery (`/apis/<group>/<version>`), which any authenticated user may read, for
    the exact group, version and resource the launcher writes; a CRD that exists but does not
    serve that version fails too.

    Args:
        api_client: A configured client.
        resource: (group, version, plural, kind), e.g. `TENSORBOARD_API`.
        logs: The run's logs root: PodDefaults are needed for s3:// only, neither for a
            local directory (no cluster TensorBoard is started then).

    Returns:
        The result.
    """
    group, version, plural, kind = resource
    name = f"{kind} CRD"
    needed = logs.scheme == "s3" or (logs.scheme == "pvc" and resource == TENSORBOARD_API)
    if not needed:
        return Check(name, Status.PASSED, f"not needed for logs at {logs.uri}")
    served = _served(api_client, resource)
    if served is not None:
        return served
    if resource == TENSORBOARD_API:
        fix = (
            "install Kubeflow's TensorBoard controller and its CRD (part of a full Kubeflow "
            "install, not of standalone Kubeflow Pipelines); without it the run still trains "
            "and its Live TensorBoard step gives kubectl commands instead"
        )
    else:
        fix = (
            "install Kubeflow's admission webhook and its PodDefault CRD (part of a full "
            "Kubeflow install), or log to a pvc:// root (--tensorboard-logs-root, --logs-pvc)"
        )
    return Check(name, Status.FAILED, f"the cluster serves no {plural}.{group}/{version}", fix)


def check_s3_secret(
    api_client: client.ApiClient, namespace: str, logs: LogsLocation, secret: str
) -> Check:
    """Whether the object store's credentials secret exists in the run's namespace, with keys.

    Training reads `accesskey` and `secretkey` from it into its environment, and so does the
    TensorBoard pod through the PodDefault; a pvc:// or local logs root needs no secret.

    Args:
        api_client: A configured client.
        namespace: The run's namespace.
        logs: The run's logs root.
        secret: The `s3_credentials_secret` parameter.

    Returns:
        The result.
    """
    name = "object-store secret"
    if logs.scheme != "s3":
        return Check(name, Status.PASSED, f"not needed for logs at {logs.uri}")
    create = (
        f"kubectl -n {namespace} create secret generic {secret} "
        f"--from-literal={ACCESS_KEY_KEY}=ACCESS_KEY --from-literal={SECRET_KEY_KEY}=SECRET_KEY"
    )
    try:
        found = _call(client.CoreV1Api(api_client).read_namespaced_secret, secret, namespace)
    except ApiException as err:
        if err.status == 404:
            return Check(
                name,
                Status.FAILED,
                f"no secret {secret} in namespace {namespace} (logs at {logs.uri})",
                f"{create} (Kubeflow creates mlpipeline-minio-artifact in every profile "
                "namespace), or pass --s3-credentials-secret NAME",
            )
        return Check(
            name,
            Status.UNKNOWN,
            f"secret {namespace}/{secret} not readable with these credentials ({_refusal(err)})",
            f"kubectl -n {namespace} get secret {secret} as someone who may read it",
        )
    data = {**(found.data or {}), **(found.string_data or {})}
    missing = [k for k in (ACCESS_KEY_KEY, SECRET_KEY_KEY) if not data.get(k)]
    if missing:
        return Check(
            name,
            Status.FAILED,
            f"secret {namespace}/{secret} lacks key {' and '.join(missing)}",
            f"recreate it with both keys: kubectl -n {namespace} delete secret {secret}; {create}",
        )
    return Check(
        name, Status.PASSED, f"{namespace}/{secret} has {ACCESS_KEY_KEY} and {SECRET_KEY_KEY}"
    )


def service_account_user(namespace: str, service_account: str) -> tuple[str, list[str]]:
    """The user name and groups a service account's token authenticates as.

    The groups are those the API server gives every service-account token
    (kubernetes/kubernetes, staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/
    util.go, `MakeGroupNames`, plus `system:authenticated`), so that bindings to
    `system:serviceaccounts[:<namespace>]` count as they will for the run's pods.

    Args:
        namespace: The account's namespace.
        service_account: Its name.

    Returns:
        (user, groups).
    """
    return f"system:serviceaccount:{namespace}:{service_account}", [
        "system:serviceaccounts",
        f"system:serviceaccounts:{namespace}",
        "system:authenticated",
    ]


def _allowed(
    api_client: client.ApiClient,
    spec: client.V1SubjectAccessReviewSpec,
    namespace: str,
) -> bool:
    """Asks the cluster's authorizer; namespace admins may ask locally, cluster admins anywhere."""
    api = client.AuthorizationV1Api(api_client)
    try:
        review = _call(
            api.create_namespaced_local_subject_access_review,
            namespace,
            client.V1LocalSubjectAccessReview(metadata={"namespace": namespace}, spec=spec),
        )
    except ApiException as err:
        if err.status != 403:
            raise
        review = _call(api.create_subject_access_review, client.V1SubjectAccessReview(spec=spec))
    return bool(review.status.allowed)


def check_launcher_rbac(
    api_client: client.ApiClient, namespace: str, service_account: str, logs: LogsLocation
) -> Check:
    """Whether the run's service account may create, read and patch what the launcher writes.

    One SubjectAccessReview per verb and resource, answered by the cluster's own authorizer
    for the service account's user and groups.

    Args:
        api_client: A configured client.
        namespace: The run's namespace.
        service_account: The account the run's pods run as.
        logs: The run's logs root (PodDefaults are written for s3:// only).

    Returns:
        The result; unknown when these credentials may not ask.
    """
    name = "launcher RBAC"
    account = f"{namespace}/{service_account}"
    resources = [
        r
        for r in (PODDEFAULT_API, TENSORBOARD_API)
        if logs.scheme == "s3" or (logs.scheme == "pvc" and r == TENSORBOARD_API)
    ]
    if not resources:
        return Check(name, Status.PASSED, f"nothing to create for logs at {logs.uri}")
    try:
        _call(
            client.CoreV1Api(api_client).read_namespaced_service_account, service_account, namespace
        )
    except ApiException as err:
        if err.status == 404:
            return Check(
                name,
                Status.FAILED,
                f"no service account {account}: the run's pods cannot be created",
                "run in a Kubeflow profile namespace (its profile creates default-editor), "
                "or pass the account the pipelines run as with --service-account",
            )
        # Not readable here: the reviews below still tell whether it would be allowed.
    user, groups = service_account_user(namespace, service_account)
    denied: list[str] = []
    try:
        for group, _, plural, _ in resources:
            verbs = []
            for verb in LAUNCHER_VERBS:
                attributes = client.V1ResourceAttributes(
                    namespace=namespace, verb=verb, group=group, resource=plural
                )
                spec = client.V1SubjectAccessReviewSpec(
                    user=user, groups=groups, resource_attributes=attributes
                )
                if not _allowed(api_client, spec, namespace):
                    verbs.append(verb)
            if verbs:
                denied.append(f"{'/'.join(verbs)} {plural}.{group}")
    except ApiException as err:
        return Check(
            name,
            Status.UNKNOWN,
            f"these credentials may not ask the authorizer ({_refusal(err)})",
            f"ask a cluster admin to run: kubectl auth can-i --list -n {namespace} --as {user}",
        )
    allowed = ", ".join(f"{'/'.join(LAUNCHER_VERBS)} {r[2]}" for r in resources)
    if not denied:
        return Check(name, Status.PASSED, f"{account} may {allowed}")
    fix = f"kubectl apply -n {namespace} -f {RBAC_MANIFEST}"
    if service_account != DEFAULT_SERVICE_ACCOUNT:
        fix += (
            f", then kubectl -n {namespace} create rolebinding kfp-lightning-tensorboard-launcher"
            f"-{service_account} --role=kfp-lightning-tensorboard-launcher "
            f"--serviceaccount={namespace}:{service_account}"
        )
    return Check(
        name,
        Status.FAILED,
        f"{account} may not {', '.join(denied)} (the live TensorBoard step falls back to "
        "kubectl instructions)",
        fix,
    )


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether a toleration tolerates a taint, as Kubernetes decides it.

    Mirrors `Toleration.ToleratesTaint` (kubernetes/kubernetes,
    staging/src/k8s.io/api/core/v1/toleration.go): an empty effect or key matches any; the
    operator Exists matches any value, Equal (the default) only the same value.

    Args:
        toleration: A Toleration object (key, operator, value, effect).
        taint: A Taint object (key, value, effect).

    Returns:
        Whether the taint is tolerated.
    """
    effect, key = toleration.get("effect") or "", toleration.get("key") or ""
    if effect and effect != taint.get("effect"):
        return False
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")


def _taint_text(taint: Mapping[str, Any]) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint['key']}{value}:{taint['effect']}"


def _gpu_count(node: client.V1Node) -> int:
    value = ((node.status and node.status.allocatable) or {}).get(GPU_RESOURCE, "0")
    return int(parse_quantity(value))


def why_unreachable(
    node: client.V1Node, node_selector: Mapping[str, str], tolerations: Sequence[Mapping]
) -> list[str]:
    """What keeps the training pod off `node`: untolerated taints and unmatched labels.

    Args:
        node: The node.
        node_selector: The pod's node selector.
        tolerations: The pod's tolerations.

    Returns:
        One phrase per obstacle; empty when the pod may be scheduled there.
    """
    taints = [
        {"key": t.key, "value": t.value, "effect": t.effect}
        for t in (node.spec.taints or [] if node.spec else [])
    ]
    if node.spec and node.spec.unschedulable:
        taints.append(UNSCHEDULABLE_TAINT)
    reasons = [
        f"taint {_taint_text(taint)} not tolerated"
        for taint in taints
        if taint["effect"] in BLOCKING_EFFECTS and not any(tolerates(t, taint) for t in tolerations)
    ]
    labels = node.metadata.labels or {}
    reasons += [
        f"label {key}={value} missing" + (f" (has {labels[key]})" if key in labels else "")
        for key, value in node_selector.items()
        if labels.get(key) != value
    ]
    return reasons


def check_gpu_nodes(
    api_client: client.ApiClient,
    gpus: int,
    node_selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, Any]],
) -> Check:
    """Whether a node has the GPUs training requests, and the pod's settings reach it.

    A node fits when its allocatable `nvidia.com/gpu` is at least `gpus` (any node for 0), it
    carries every label of `node_selector`, and `tolerations` tolerate each of its NoSchedule
    and NoExecute taints (a cordoned node counts as tainted), as the scheduler decides.

    Args:
        api_client: A configured client.
        gpus: GPUs requested (0: a CPU node will do).
        node_selector: The `node_selector` parameter.
        tolerations: The `tolerations` parameter.

    Returns:
        The result; unknown when these credentials may not list nodes.
    """
    name = "training node"
    try:
        nodes = _call(client.CoreV1Api(api_client).list_node).items
    except ApiException as err:
        return Check(
            name,
            Status.UNKNOWN,
            f"nodes not readable with these credentials ({_refusal(err)})",
            "ask a cluster admin whether a node offers the GPUs and taints/labels you set",
        )
    candidates = [n for n in nodes if _gpu_count(n) >= gpus]
    if not candidates:
        most = max((_gpu_count(n) for n in nodes), default=0)
        found = f"most on one node: {most}, of {len(nodes)} nodes" if nodes else "no node at all"
        return Check(
            name,
            Status.FAILED,
            f"no node has {gpus} allocatable {GPU_RESOURCE} ({found})",
            "add a GPU node pool with NVIDIA's device plugin (or GPU operator), request fewer "
            "with --gpus, or train on a CPU node with --gpus 0",
        )
    reached, blocked = [], []
    for node in candidates:
        reasons = why_unreachable(node, node_selector, tolerations)
        if reasons:
            blocked.append(f"{node.metadata.name}: {', '.join(reasons)}")
        else:
            reached.append(node.metadata.name)
    wanted = f"with {gpus} allocatable {GPU_RESOURCE} " if gpus else ""
    if reached:
        shown = ", ".join(sorted(reached)[:5]) + (", ..." if len(reached) > 5 else "")
        found = f"{len(reached)} node(s) {wanted}reachable"
        found += "" if gpus else ", no GPU needed (gpus=0)"
        return Check(name, Status.PASSED, f"{found}: {shown}")
    return Check(
        name,
        Status.FAILED,
        f"nodes {wanted}exist, but the tolerations and node selector reach none ("
        + "; ".join(sorted(blocked)[:5])
        + ")",
        'add tolerations for those taints (--tolerations \'[{"key": KEY, "operator": '
        '"Exists", "effect": EFFECT}]\') and/or a --node-selector that those nodes\' labels '
        "match",
    )


# --- several nodes: Kubeflow Trainer ------------------------------------------------------------

TRAINER_INSTALL = (
    "install Kubeflow Trainer v2 (part of Kubeflow 1.11 and 26.03; elsewhere: kubectl apply "
    '--server-side -k "https://github.com/kubeflow/trainer.git/manifests/overlays/manager'
    '?ref=v2.1.0")'
)
RUNTIME_INSTALL = (
    'kubectl apply --server-side -k "https://github.com/kubeflow/trainer.git/manifests/overlays/'
    'runtimes?ref=v2.1.0"'
)
# The step creates the run's TrainJob, reads it while it runs and deletes it when the run is
# cancelled or times out, or to replace a failed one (components/train_on_nodes/trainjob.py).
TRAINJOB_VERBS = ("create", "get", "delete")


def check_trainjob_crd(api_client: client.ApiClient) -> Check:
    """Whether the cluster serves Kubeflow Trainer's `TrainJob`, which several nodes need.

    Args:
        api_client: A configured client.

    Returns:
        The result (discovery, which any authenticated user may read).
    """
    group, version, plural, kind = trainjob.TRAINJOB_API
    name = f"{kind} CRD"
    served = _served(api_client, trainjob.TRAINJOB_API)
    if served is not None:
        return served
    return Check(
        name, Status.FAILED, f"the cluster serves no {plural}.{group}/{version}", TRAINER_INSTALL
    )


def check_training_runtime(api_client: client.ApiClient) -> Check:
    """Whether the `torch-distributed` ClusterTrainingRuntime exists, with what the job needs.

    The TrainJob's nodes run in the runtime's `node` Job and container and get torchrun's
    variables from its torch policy (kubeflow/trainer v2.1.0,
    manifests/base/runtimes/torch_distributed.yaml; pkg/runtime/framework/plugins/torch).

    Args:
        api_client: A configured client.

    Returns:
        The result; unknown when these credentials may not read cluster-scoped runtimes
        (RoleBindings, as in a Kubeflow profile, cannot grant that).
    """
    group, version, plural, kind = trainjob.RUNTIME_API
    name = "training runtime"
    wanted = f"{kind} {trainjob.RUNTIME}"
    try:
        runtime = _call(
            client.CustomObjectsApi(api_client).get_cluster_custom_object,
            group,
            version,
            plural,
            trainjob.RUNTIME,
        )
    except ApiException as err:
        if err.status == 404:
            return Check(name, Status.FAILED, f"no {wanted}", f"install it: {RUNTIME_INSTALL}")
        return Check(
            name,
            Status.UNKNOWN,
            f"{wanted} not readable with these credentials ({_refusal(err)})",
            f"ask a cluster admin to run: kubectl get {plural} {trainjob.RUNTIME}",
        )
    spec = runtime.get("spec") or {}
    jobs = ((spec.get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    containers = [
        c.get("name")
        for job in jobs
        if job.get("name") == trainjob.NODE
        for c in job["template"]["spec"]["template"]["spec"].get("containers") or []
    ]
    problems = []
    if trainjob.NODE not in containers:
        problems.append(f"no {trainjob.NODE!r} job with a {trainjob.NODE!r} container")
    if "torch" not in (spec.get("mlPolicy") or {}):
        problems.append("no torch policy (mlPolicy.torch), which sets torchrun's variables")
    if problems:
        return Check(
            name,
            Status.FAILED,
            f"{wanted} has {' and '.join(problems)}",
            f"restore Kubeflow Trainer's own runtime: {RUNTIME_INSTALL}",
        )
    return Check(name, Status.PASSED, f"{wanted} exists, with a torch policy and a node job")


def check_trainjob_rbac(
    api_client: client.ApiClient, namespace: str, service_account: str
) -> Check:
    """Whether the run's service account may create, read and delete TrainJobs.

    Args:
        api_client: A configured client.
        namespace: The run's namespace.
        service_account: The account the run's pods run as.

    Returns:
        The result; unknown when these credentials may not ask the authorizer.
    """
    name = "TrainJob RBAC"
    group, _, plural, _ = trainjob.TRAINJOB_API
    user, groups = service_account_user(namespace, service_account)
    try:
        denied = [
            verb
            for verb in TRAINJOB_VERBS
            if not _allowed(
                api_client,
                client.V1SubjectAccessReviewSpec(
                    user=user,
                    groups=groups,
                    resource_attributes=client.V1ResourceAttributes(
                        namespace=namespace, verb=verb, group=group, resource=plural
                    ),
                ),
                namespace,
            )
        ]
    except ApiException as err:
        return Check(
            name,
            Status.UNKNOWN,
            f"these credentials may not ask the authorizer ({_refusal(err)})",
            f"ask a cluster admin to run: kubectl auth can-i --list -n {namespace} --as {user}",
        )
    account = f"{namespace}/{service_account}"
    if not denied:
        return Check(name, Status.PASSED, f"{account} may {'/'.join(TRAINJOB_VERBS)} {plural}")
    role = "kfp-lightning-trainjob-launcher"
    fix = f"kubectl apply -n {namespace} -f {trainjob.RBAC_MANIFEST}"
    if service_account != DEFAULT_SERVICE_ACCOUNT:
        fix += (
            f", then kubectl -n {namespace} create rolebinding {role}-{service_account} "
            f"--role={role} --serviceaccount={namespace}:{service_account}"
        )
    return Check(
        name,
        Status.FAILED,
        f"{account} may not {'/'.join(denied)} {plural}.{group} (the training step cannot "
        "run the nodes)",
        fix,
    )


def image_version(image: str) -> tuple[int, int, int] | None:
    """The (major, minor, patch) of an image's tag, e.g. `...kfp-api-server:2.5.0` -> (2, 5, 0).

    Returns:
        None for an image without a tag, or whose tag is not a version.
    """
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", last.rsplit(":", 1)[1])
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def check_kfp_backend(api_client: client.ApiClient, kfp_namespace: str) -> Check:
    """The Kubeflow Pipelines backend's version, from its API server's image tag.

    Args:
        api_client: A configured client.
        kfp_namespace: Where the `ml-pipeline` Deployment runs (`kubeflow` in a full install
            and in standalone installs alike).

    Returns:
        Passed for a supported version, failed for an older one, unknown when unreadable.
    """
    name = "KFP backend"
    try:
        deployment = _call(
            client.AppsV1Api(api_client).read_namespaced_deployment, KFP_DEPLOYMENT, kfp_namespace
        )
    except ApiException as err:
        where = f"deployment {kfp_namespace}/{KFP_DEPLOYMENT}"
        if err.status == 404:
            detail = f"no {where}: version unknown (not a failure)"
            hint = "pass the namespace Kubeflow Pipelines runs in with --kfp-namespace"
        else:
            detail = f"{where} not readable with these credentials ({_refusal(err)}): version "
            detail += "unknown (not a failure)"
            hint = f"supported: {SUPPORTED_BACKENDS}"
        return Check(name, Status.UNKNOWN, detail, hint)
    containers = deployment.spec.template.spec.containers
    container = next((c for c in containers if c.name == KFP_CONTAINER), containers[0])
    version = image_version(container.image or "")
    if version is None:
        return Check(
            name,
            Status.UNKNOWN,
            f"image {container.image} has no version tag: version unknown (not a failure)",
            f"supported: {SUPPORTED_BACKENDS}",
        )
    shown = ".".join(map(str, version))
    if version < MIN_BACKEND:
        return Check(
            name,
            Status.FAILED,
            f"{shown} ({container.image}) is older than this pipeline supports: "
            f"{SUPPORTED_BACKENDS}",
            "upgrade Kubeflow Pipelines to 2.5.0 or newer (Kubeflow 1.10.1 or newer)",
        )
    return Check(name, Status.PASSED, f"{shown} ({container.image}); supported: 2.5.0 and newer")


def run_checks(api_client: client.ApiClient, target: Target) -> list[Check]:
    """Every check, in the order they are printed.

    Raises:
        RunError: The API stopped answering midway.
    """
    return [
        check_crd(api_client, TENSORBOARD_API, target.logs),
        check_crd(api_client, PODDEFAULT_API, target.logs),
        check_s3_secret(api_client, target.namespace, target.logs, target.s3_secret),
        check_launcher_rbac(api_client, target.namespace, target.service_account, target.logs),
        check_gpu_nodes(api_client, target.gpus, target.node_selector, target.tolerations),
        check_kfp_backend(api_client, target.kfp_namespace),
    ] + (
        [
            check_trainjob_crd(api_client),
            check_training_runtime(api_client),
            check_trainjob_rbac(api_client, target.namespace, target.service_account),
        ]
        if target.nodes > 1
        else []
    )


def format_check(check: Check) -> str:
    """One line: the mark, what was checked and found, and the fix for a failure."""
    line = f"{check.status.value} {check.name}: {check.detail}"
    if check.fix and check.status is not Status.PASSED:
        line += f". {'Fix' if check.status is Status.FAILED else 'To check'}: {check.fix}"
    return line


def _probe(api_client: client.ApiClient) -> str:
    """The server's version; raises RunError in one line when none answers or it refuses us."""
    host = api_client.configuration.host
    try:
        info = client.VersionApi(api_client).get_code(_request_timeout=REQUEST_TIMEOUT_SECONDS)
    except urllib3.exceptions.HTTPError as err:
        raise RunError(
            f"no Kubernetes API server answers at {host}: {connection_failure(err)}"
        ) from None
    except ApiException as err:
        raise RunError(f"the Kubernetes API server at {host} refused: {_refusal(err)}") from None
    return str(info.git_version)


def check_cluster(
    values: Mapping[str, Any],
    namespace: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    kfp_namespace: str = DEFAULT_KFP_NAMESPACE,
    out: TextIO | None = None,
    nodes: int = 1,
) -> int:
    """Checks the current cluster for a run with `values`, printing one line per check.

    Args:
        values: Every pipeline parameter, validated (`parameters.validate_parameters`).
        namespace: The run's namespace; default: the pod's, else the kubeconfig context's.
        service_account: The account the run's pods run as.
        kfp_namespace: Where the Kubeflow Pipelines backend runs.
        out: Where to print (default: stdout).
        nodes: Nodes training runs on; more than one adds the Kubeflow Trainer checks.

    Returns:
        0 when no check failed, 1 when one did.

    Raises:
        UserInputError: An option is not a valid name.
        RunError: No Kubernetes API is configured or answers.
    """
    out = out or sys.stdout
    check_names(namespace, service_account, kfp_namespace)
    try:
        api_client, config_namespace = connect()
    except ClusterUnreachableError as err:
        raise RunError(f"no Kubernetes API configured: {' '.join(str(err).split())}") from None
    with api_client:
        target = target_from_parameters(
            values,
            namespace or current_namespace() or config_namespace or "default",
            service_account,
            kfp_namespace,
            nodes,
        )
        version = _probe(api_client)
        print(
            f"Kubernetes {version} at {api_client.configuration.host}, namespace "
            f"{target.namespace}, service account {target.service_account}:",
            file=out,
        )
        checks = run_checks(api_client, target)
    for check in checks:
        print(format_check(check), file=out)
    failed = sum(c.status is Status.FAILED for c in checks)
    unknown = sum(c.status is Status.UNKNOWN for c in checks)
    unchecked = f"; {unknown} could not be checked (?)" if unknown else ""
    if failed:
        print(f"{failed} of {len(checks)} checks failed{unchecked}.", file=out)
        return 1
    print(f"No check failed{unchecked}: a run in {target.namespace} should work.", file=out)
    return 0
